"""`python -m localcloud`: run a local Cloud Run until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from localcloud.control import Settings
from localcloud.server import LocalCloud


def _port_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    try:
        first, last = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a range like 18000-18999") from None
    if not 0 < first <= last < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a range of ports")
    return first, last


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(prog="localcloud", description=__doc__)
    parser.add_argument("--state-dir", default=env.get("LOCALCLOUD_STATE_DIR", "var/localcloud"))
    parser.add_argument("--run-port", type=int, default=int(env.get("LOCALCLOUD_RUN_PORT", "8081")))
    parser.add_argument(
        "--monitoring-port", type=int, default=int(env.get("LOCALCLOUD_MONITORING_PORT", "8082"))
    )
    parser.add_argument(
        "--proxy-port-range",
        type=_port_range,
        default=_port_range(env.get("LOCALCLOUD_PROXY_PORTS", "18000-18999")),
    )
    parser.add_argument(
        "--idle-grace",
        type=float,
        default=float(env.get("LOCALCLOUD_IDLE_GRACE_S", "60")),
        help="seconds a revision without traffic or tag keeps running (default 60)",
    )
    parser.add_argument("--log-level", default=env.get("LOCALCLOUD_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cloud = LocalCloud(
        args.state_dir,
        run_port=args.run_port,
        monitoring_port=args.monitoring_port,
        proxy_ports=args.proxy_port_range,
        settings=Settings(idle_grace_s=args.idle_grace),
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    cloud.start()
    print(
        f"localcloud: Cloud Run API {cloud.run_endpoint}, "
        f"Monitoring API {cloud.monitoring_endpoint or '(not available)'}",
        flush=True,
    )
    stop.wait()
    cloud.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
