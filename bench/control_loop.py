"""Control-loop cost: the deployment page and its API while ten deployments run at once.

Ten services on localcloud each roll a canary (10 -> 30 -> 60 -> 100 with short pauses)
through the real engine and RQ worker, while this script fetches a deployment page (full
page, then its HTMX fragment) and the API detail, and reports p50/p95 in ms.
"""

import statistics
import time

from portal_common import (
    DEMO_COMMAND,
    localcloud_environment,
    setup_django,
    start_localcloud,
    start_worker,
    unique,
    wait_all,
)


def main() -> None:
    setup_django()
    from django.contrib.auth.models import Group, User
    from django.test import Client

    from core.actors import Actor
    from releases import services
    from releases.models import Deployment

    S = Deployment.Status
    actor = Actor.system("bench")
    cloud = start_localcloud()
    worker = start_worker()
    try:
        env = localcloud_environment(actor, cloud, "loop")
        cmd = DEMO_COMMAND
        pairs = []
        for _ in range(10):
            svc = services.register_service(actor, unique("loop"))
            one = services.register_release(actor, svc, "1", cmd, ci_status="passed")
            two = services.register_release(actor, svc, "2", cmd, ci_status="passed")
            pairs.append((svc, one, two))
        firsts = [
            services.request_deployment(
                actor,
                s,
                env,
                one,
                "all_at_once",
                override_reason="benchmark: promotion order does not apply",
            )
            for s, one, _ in pairs
        ]
        wait_all(firsts, {S.SUCCEEDED, S.FAILED})
        steps = {
            "steps": [
                {"set_weight": 10},
                {"pause": {"duration_s": 3}},
                {"set_weight": 30},
                {"pause": {"duration_s": 3}},
                {"set_weight": 60},
                {"pause": {"duration_s": 3}},
                {"set_weight": 100},
            ]
        }
        running = [
            services.request_deployment(
                actor,
                s,
                env,
                two,
                "canary",
                steps,
                override_reason="benchmark: promotion order does not apply",
            )
            for s, _, two in pairs
        ]

        viewer, _ = User.objects.get_or_create(username=unique("viewer"))
        viewer.groups.add(Group.objects.get_or_create(name="viewer")[0])
        client = Client()
        client.force_login(viewer)
        timings = {"page": [], "fragment": [], "api": []}
        target = running[0].pk
        while any(d.status in Deployment.ACTIVE for d in _refresh(running)):
            for kind, path, headers in (
                ("page", f"/deployments/{target}/", {}),
                ("fragment", f"/deployments/{target}/", {"HTTP_HX_REQUEST": "true"}),
                ("api", f"/api/v1/deployments/{target}/", {}),
            ):
                started = time.perf_counter()
                response = client.get(path, **headers)
                if response.status_code == 200:
                    timings[kind].append((time.perf_counter() - started) * 1000)
            time.sleep(0.05)
        statuses = [d.status for d in _refresh(running)]
        print(f"ten canaries ran at once: {statuses.count(S.SUCCEEDED)} succeeded")
        for kind, values in timings.items():
            if len(values) >= 2:
                q = statistics.quantiles(values, n=20)
                print(
                    f"{kind}: {len(values)} requests, p50 {statistics.median(values):.1f} ms, "
                    f"p95 {q[18]:.1f} ms (target p95 < 150 ms)"
                )
            else:
                print(f"{kind}: not served (status not 200)")
    finally:
        worker.terminate()
        worker.wait(10)
        cloud.stop()


def _refresh(deployments):
    for d in deployments:
        d.refresh_from_db()
    return deployments


if __name__ == "__main__":
    main()
