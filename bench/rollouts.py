"""Zero downtime and time to automatic rollback, measured on localcloud through the portal's
deployment engine (real RQ worker, real HAProxy, real Cloud Run and Monitoring clients).

1. Steady load of 200 requests/s on the service URL during a canary 10 -> 50 -> 100 and a
   rollback: failed requests (no answer, 502 or 503).
2. The same load during a naive replace (stop the old process, start the new one on its
   port), as the contrast.
3. Time to automatic rollback: a bad release (50% errors) in a canary with a 2 s analysis
   interval and failure limit 0: from the first 5xx a client saw to the last one.
"""

import os
import socket
import subprocess
import sys
import time

from portal_common import (
    DEMO_COMMAND,
    REPO,
    PacedLoad,
    localcloud_environment,
    setup_django,
    start_localcloud,
    start_worker,
    unique,
    wait_all,
)

RATE = float(os.environ.get("BENCH_RATE", "200"))


def main() -> None:
    setup_django()
    from core.actors import Actor
    from releases import services
    from releases.models import Deployment

    S = Deployment.Status
    actor = Actor.system("bench")
    cloud = start_localcloud()
    worker = start_worker()
    try:
        env = localcloud_environment(actor, cloud, "bench")
        services.save_analysis_template(
            actor,
            "bench-2s",
            [
                {
                    "name": "error-rate",
                    "kind": "error_rate",
                    "max": 0.02,
                    "interval_s": 2,
                    "count": 3,
                    "failure_limit": 0,
                    "inconclusive_limit": 5,
                    "min_requests": 5,
                }
            ],
        )
        svc = services.register_service(actor, unique("bench"))
        cmd = DEMO_COMMAND
        rel = {
            v: services.register_release(actor, svc, v, cmd, ci_status="passed", env=e)
            for v, e in (("1", {}), ("2", {}), ("3-bad", {"ERROR_RATE": "0.5"}))
        }

        first = services.request_deployment(
            actor,
            svc,
            env,
            rel["1"],
            "all_at_once",
            override_reason="benchmark: promotion order does not apply",
        )
        wait_all([first], {S.SUCCEEDED})
        uri = services.platform_state(svc, env).uri

        with PacedLoad(uri, RATE) as load:
            time.sleep(1)
            canary = services.request_deployment(
                actor,
                svc,
                env,
                rel["2"],
                "canary",
                {
                    "steps": [
                        {"set_weight": 10},
                        {"pause": {"duration_s": 2}},
                        {"set_weight": 50},
                        {"pause": {"duration_s": 2}},
                        {"set_weight": 100},
                    ]
                },
                override_reason="benchmark: promotion order does not apply",
            )
            wait_all([canary], {S.SUCCEEDED, S.FAILED})
            back = services.rollback(actor, svc, env, "bench")
            wait_all([back], {S.SUCCEEDED, S.FAILED})
            time.sleep(1)
        failures = [
            (round(a.at - load.answers[0].at, 2), a.status)
            for a in load.answers
            if a.status in (0, 502, 503)
        ]
        events = [
            (round(e.created_at.timestamp() - load.answers[0].at, 2), e.message[:50])
            for d in (canary, back)
            for e in d.events.all()
        ]
        if failures:
            print(f"  failed requests (s into the run, status): {failures}")
            print(f"  engine events (s into the run): {events}")
        print(
            f"zero downtime: canary 10->50->100 + rollback at {RATE:g} req/s: "
            f"{load.failed()} failed of {load.count()} requests "
            f"(canary {canary.status}, rollback {back.status})"
        )

        naive = naive_replace()
        print(
            f"naive replace (stop old, start new) at {RATE:g} req/s: "
            f"{naive[0]} failed of {naive[1]} requests"
        )

        with PacedLoad(uri, 50) as load:
            time.sleep(1)
            bad = services.request_deployment(
                actor,
                svc,
                env,
                rel["3-bad"],
                "canary",
                {
                    "steps": [
                        {"set_weight": 50},
                        {"analysis": {"template": "bench-2s"}},
                        {"set_weight": 100},
                    ]
                },
                override_reason="benchmark: promotion order does not apply",
            )
            wait_all([bad], {S.SUCCEEDED, S.FAILED})
            time.sleep(2)
        errors = [a.at for a in load.answers if a.status >= 500]
        if errors:
            print(
                f"time to automatic rollback (2 s interval, failure limit 0): "
                f"{max(errors) - min(errors):.2f} s from the first 5xx to the last "
                f"(target <= 2 x 1 + 3 = 5 s); deployment {bad.status}: {bad.reason}"
            )
        else:
            print("time to automatic rollback: no 5xx seen (unexpected)")
    finally:
        worker.terminate()
        worker.wait(10)
        cloud.stop()


def naive_replace() -> tuple[int, int]:
    """Load on a bare process's port while it is stopped and a new one started there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PORT": str(port)}
    cmd = [sys.executable, str(REPO / "examples" / "demo_service.py")]

    def start():
        p = subprocess.Popen(cmd, env=env)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return p
            except OSError:
                time.sleep(0.05)
        return p

    old = start()
    with PacedLoad(f"http://127.0.0.1:{port}/", RATE) as load:
        time.sleep(1)
        old.terminate()
        old.wait()
        new = start()
        time.sleep(1)
    new.terminate()
    new.wait()
    return load.failed(), load.count()


if __name__ == "__main__":
    main()
