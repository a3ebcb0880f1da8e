"""Samples per second through POST /api/v1/metrics/ in batches of 500 (target: 5000/s).

Runs the Django test client in this process against a database of its own
(ops_portal_bench_mon, migrated on first use), so the numbers include request parsing,
authentication, validation, the bulk insert and the rollup upsert, but no network hop.

    .venv/bin/python bench/metrics_ingest.py [--batches 40] [--batch-size 500]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_django(dbname: str = "ops_portal_bench_mon") -> None:
    """Django on a bench database (created and migrated when missing)."""
    sys.path.insert(0, str(ROOT))
    from ops_portal import launcher

    os.environ["DATABASE_URL"] = launcher.pick_database(dbname)
    os.environ.setdefault("REDIS_URL", launcher.pick_redis())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ops_portal.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    import logging

    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    logging.disable(logging.INFO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--series", type=int, default=50, help="distinct label sets")
    args = parser.parse_args()
    setup_django()

    from rest_framework.test import APIClient

    from core import tokens
    from core.actors import Actor
    from monitoring.models import MetricRollup, MetricSample

    created = tokens.create_token(
        Actor.system("bench"), f"bench-{time.time():.0f}", ["metrics:write"]
    )
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {created.raw}")

    start_ts = time.time() - 3600
    batches = []
    for b in range(args.batches):
        batch = []
        for i in range(args.batch_size):
            n = b * args.batch_size + i
            batch.append(
                {
                    "name": "bench_requests",
                    "labels": {"service": f"svc-{n % args.series:02d}", "environment": "dev"},
                    "value": float(n % 97),
                    "timestamp": start_ts + n * 0.05,
                }
            )
        batches.append({"samples": batch})

    before = MetricSample.objects.count()
    latencies = []
    started = time.perf_counter()
    for body in batches:
        t0 = time.perf_counter()
        response = api.post("/api/v1/metrics/", body, format="json")
        latencies.append((time.perf_counter() - t0) * 1000)
        if response.status_code != 201:
            raise SystemExit(f"batch refused: {response.status_code} {response.content[:300]!r}")
    elapsed = time.perf_counter() - started
    total = args.batches * args.batch_size
    stored = MetricSample.objects.count() - before
    latencies.sort()
    p50, p95 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.95)]
    print(
        f"metrics ingest: {total} samples in {args.batches} batches of {args.batch_size}: "
        f"{elapsed:.2f} s, {total / elapsed:,.0f} samples/s; per batch p50 "
        f"{p50:.1f} ms, p95 {p95:.1f} ms; "
        f"stored {stored}, rollup rows now {MetricRollup.objects.count()}"
    )


if __name__ == "__main__":
    main()
