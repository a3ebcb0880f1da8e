"""Overview and service health page times with 50 services x 3 environments and 7 days of
one-minute samples (agent metrics and health-check results), p50/p95 in ms.

Data is generated with SQL (generate_series) into the bench database the first time. The
environments' platform is unreachable (a closed port), so platform reads answer "no data"
from the cache after the first failure: the numbers measure the portal's own queries and
rendering, not Cloud Monitoring.

    .venv/bin/python bench/dashboard_pages.py [--requests 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

from metrics_ingest import setup_django

SERVICES = 50
ENVIRONMENTS = ("bench-dev", "bench-staging", "bench-prod")
DAYS = 7


def seed() -> None:
    from django.db import connection
    from django.utils import timezone

    from core.actors import Actor
    from environments import services as env_services
    from environments.models import Environment
    from monitoring import services as mon
    from monitoring.models import HealthCheck, MetricRollup
    from releases import services as rel
    from releases.models import Deployment, Release, Service

    actor = Actor.system("bench")
    if Service.objects.filter(name="bench-svc-49").exists():
        return
    print("seeding 50 services x 3 environments, 7 days of one-minute data ...", flush=True)
    envs = []
    for i, name in enumerate(ENVIRONMENTS):
        env = Environment.objects.filter(name=name).first() or env_services.create_environment(
            actor,
            name,
            order=900 + i,
            platform="localcloud",
            gcp_project=name,
            region="local",
            run_endpoint="http://127.0.0.1:9",
            monitoring_endpoint="127.0.0.1:9",
        )
        envs.append(env)
    now = timezone.now()
    for s in range(SERVICES):
        service = rel.register_service(actor, f"bench-svc-{s:02d}")
        release = Release.objects.create(
            service=service, version="1.0.0", artifact="x", created_by="bench"
        )
        for env in envs:
            Deployment.objects.create(
                service=service,
                environment=env,
                release=release,
                strategy="canary",
                status="succeeded",
                requested_by="bench",
                new_revision=f"{service.name}-1",
                finished_at=now,
            )
            mon.create_health_check(actor, service, env, path="/healthz")
    with connection.cursor() as cursor:
        # One-minute rollups (what the charts read) for every service and environment.
        cursor.execute(
            f"""
            INSERT INTO {MetricRollup._meta.db_table}
                (name, labels_key, labels, minute, count, sum, min, max)
            SELECT 'queue_depth', k.key, k.key::jsonb, m, 1, v, v, v
            FROM (
                SELECT json_build_object('environment', e, 'service', s)::text AS key
                FROM unnest(%s::text[]) AS e,
                     (SELECT 'bench-svc-' || lpad(i::text, 2, '0') AS s
                      FROM generate_series(0, {SERVICES - 1}) AS i) AS svc
            ) AS k,
            generate_series(date_trunc('minute', now()) - interval '{DAYS} days',
                            date_trunc('minute', now()), interval '1 minute') AS m,
            LATERAL (SELECT random() * 100 AS v) AS r
            ON CONFLICT DO NOTHING
            """,
            [list(ENVIRONMENTS)],
        )
        cursor.execute(
            f"""
            INSERT INTO monitoring_healthcheckresult (health_check_id, checked_at, ok, status_code,
                latency_ms, error)
            SELECT c.id, t, random() > 0.01, 200, random() * 50, ''
            FROM {HealthCheck._meta.db_table} c,
                 generate_series(now() - interval '{DAYS} days', now(), interval '1 minute') t
            """
        )
    cursor = connection.cursor()
    cursor.execute("ANALYZE")
    print("seeded", flush=True)


def timed(client, url: str, n: int) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    times.sort()
    return statistics.median(times), times[max(int(len(times) * 0.95) - 1, 0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    setup_django()
    seed()

    from django.contrib.auth.models import User
    from django.test import Client

    user, _ = User.objects.get_or_create(username="bench-admin", defaults={"is_superuser": True})
    client = Client()
    client.force_login(user)
    client.get("/dashboard/")  # warm: platform failures cached
    pages = {
        "overview /dashboard/": "/dashboard/",
        "service health 1h": "/services/bench-svc-07/health/?environment=bench-prod&range=1h",
        "service health 24h": "/services/bench-svc-07/health/?environment=bench-prod&range=24h",
        "service health 7d": "/services/bench-svc-07/health/?environment=bench-prod&range=7d",
    }
    for label, url in pages.items():
        client.get(url)
        p50, p95 = timed(client, url, args.requests)
        print(f"{label}: p50 {p50:.1f} ms, p95 {p95:.1f} ms ({args.requests} requests)")


if __name__ == "__main__":
    main()
