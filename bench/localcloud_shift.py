"""Failed requests while traffic shifts: ten shifts between two revisions at 200 req/s.

The shifts alternate 100/0, 50/50, 0/100 and 90/10 splits; one in every few moves all
traffic off a revision (which is then drained) and back (a cold start when it was stopped).
"""

from __future__ import annotations

import argparse
import time

from localcloud_common import PacedLoad, deploy, set_traffic, short, start_cloud

SPLITS = [(50, 50), (0, 100), (90, 10), (100, 0), (10, 90), (0, 100), (50, 50), (100, 0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--shifts", type=int, default=10)
    args = parser.parse_args()

    cloud, client = start_cloud(idle_grace_s=1.0)
    try:
        a = deploy(client, "shift", "a")
        b = deploy(client, "shift", "b")
        rev_a, rev_b = short(a.latest_ready_revision), short(b.latest_ready_revision)
        shift_times = []
        with PacedLoad(b.uri, args.rate) as load:
            time.sleep(1)
            for i in range(args.shifts):
                pa, pb = SPLITS[i % len(SPLITS)]
                split = {rev: pct for rev, pct in ((rev_a, pa), (rev_b, pb)) if pct}
                started = time.perf_counter()
                set_traffic(client, b.name, split)
                shift_times.append(time.perf_counter() - started)
                time.sleep(1.2)  # long enough, now and then, for an idle revision to stop
        result = load.result
        print(f"{args.shifts} shifts at {args.rate:.0f} req/s: {result.summary()}")
        print(
            "shift (update_service to done): "
            + ", ".join(f"{t * 1000:.0f}" for t in shift_times)
            + " ms"
        )
        if result.failures:
            print("failures:", sorted(set(result.failures))[:5])
    finally:
        cloud.stop()


if __name__ == "__main__":
    main()
