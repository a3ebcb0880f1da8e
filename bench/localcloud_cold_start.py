"""Deploy and cold-start times of the demo service through the real Cloud Run client.

- deploy: update_service with a new template until the operation is done (the revision is
  started, passes its startup probe, and takes 100% of the traffic),
- cold start: traffic moved to a revision that was stopped for idleness, until done.
"""

from __future__ import annotations

import argparse
import statistics
import time

from localcloud_common import deploy, set_traffic, short, start_cloud


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    cloud, client = start_cloud(idle_grace_s=0.5)
    try:
        first = deploy(client, "cold", "v0")
        deploys = []
        for i in range(args.rounds):
            started = time.perf_counter()
            deploy(client, "cold", f"v{i + 1}")
            deploys.append(time.perf_counter() - started)

        colds = []
        old = short(first.latest_ready_revision)
        for _ in range(args.rounds):
            time.sleep(1.5)  # past the grace period: the revision without traffic is stopped
            current = client.get_service(name=first.name).traffic_statuses[0].revision
            started = time.perf_counter()
            set_traffic(client, first.name, {old: 100})
            colds.append(time.perf_counter() - started)
            old = current
        for label, times in [("deploy to Ready", deploys), ("cold start", colds)]:
            print(
                f"{label:16s} n={len(times)} median {statistics.median(times) * 1000:.0f} ms, "
                f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms"
            )
    finally:
        cloud.stop()


if __name__ == "__main__":
    main()
