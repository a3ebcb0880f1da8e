"""A small HTTP service to deploy on localcloud (or Cloud Run); standard library only.

It listens on $PORT and answers `/` with JSON naming its version and revision, and
`/healthz` with 200. Its behaviour comes from the environment, so one file plays good and
bad releases:

    VERSION          reported in the answer (default "dev")
    ERROR_RATE       share of `/` requests answered 500, 0..1 (default 0)
    LATENCY_MS       delay before answering `/` (default 0)
    STARTUP_DELAY_S  sleep before listening, a slow start (default 0)
    EXIT_ON_START    exit at once with this code, a release that crashes (default unset)

On SIGTERM it stops accepting, finishes the requests in flight and exits 0, as Cloud Run
expects of a container.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logger = logging.getLogger("demo_service")


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.0 closes each connection after its answer, so a stopping server has no idle
    # keep-alive connection to wait for.
    protocol_version = "HTTP/1.0"
    server_version = "demo-service"

    def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        if self.path == "/healthz":
            self._answer(200, {"status": "ok"})
            return
        if self.path.split("?")[0] != "/":
            self._answer(404, {"error": "not found"})
            return
        config = self.server.config
        if config["latency_ms"]:
            time.sleep(config["latency_ms"] / 1000)
        body = {
            "version": config["version"],
            "service": os.environ.get("K_SERVICE", ""),
            "revision": os.environ.get("K_REVISION", ""),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
        }
        if random.random() < config["error_rate"]:
            self._answer(500, {**body, "error": "injected failure (ERROR_RATE)"})
            return
        self._answer(200, body)

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        if os.environ.get("ACCESS_LOG") == "1":
            logger.info("%s %s", self.address_string(), format % args)


class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() then waits for the requests in flight
    request_queue_size = 128


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    exit_code = os.environ.get("EXIT_ON_START")
    if exit_code:
        print(f"demo service: failing on start with exit code {exit_code}", file=sys.stderr)
        return int(exit_code)
    delay = float(os.environ.get("STARTUP_DELAY_S", "0"))
    if delay:
        logger.info("starting slowly: sleeping %.1f s", delay)
        time.sleep(delay)

    port = int(os.environ.get("PORT", "8080"))
    server = Server(("127.0.0.1", port), Handler)
    server.config = {
        "version": os.environ.get("VERSION", "dev"),
        "error_rate": float(os.environ.get("ERROR_RATE", "0")),
        "latency_ms": float(os.environ.get("LATENCY_MS", "0")),
    }

    def on_sigterm(signum, frame) -> None:
        logger.info("SIGTERM: finishing requests in flight")
        # shutdown() waits for serve_forever to return, so it cannot run in its own thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)
    logger.info(
        "version %s listening on port %s (revision %s)",
        server.config["version"],
        port,
        os.environ.get("K_REVISION", "-"),
    )
    server.serve_forever(poll_interval=0.1)
    server.server_close()  # closes the listener, then joins the request threads
    logger.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
