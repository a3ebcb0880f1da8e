"""Proxy overhead: the demo service through its service URL (HAProxy) vs its revision port.

Both at the same concurrency, the same number of requests, from Python threads on the same
machine (so the client's own cost is in both numbers).
"""

from __future__ import annotations

import argparse

import requests
from localcloud_common import closed_loop, deploy, start_cloud


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4000)
    args = parser.parse_args()

    cloud, client = start_cloud()
    try:
        service = deploy(client, "proxy", "v1")
        logs = requests.get(
            f"{cloud.run_endpoint}/v2/{service.latest_ready_revision}:logs",
            params={"q": "healthy on port"},
            timeout=5,
        ).json()["entries"]
        direct = f"http://127.0.0.1:{logs[-1]['text'].rsplit(' ', 1)[1]}/"
        closed_loop(service.uri, args.concurrency, 200, keep_alive=True)  # warm up

        print(f"concurrency {args.concurrency}, {args.requests} requests each")
        runs = [
            ("revision directly (new connection per request)", direct, False),
            ("service URL, new connection per request", service.uri, False),
            ("service URL, client keep-alive", service.uri, True),
        ]
        for label, url, keep_alive in runs:
            result = closed_loop(url, args.concurrency, args.requests, keep_alive)
            print(f"{label:50s} {result.summary()}")
    finally:
        cloud.stop()


if __name__ == "__main__":
    main()
