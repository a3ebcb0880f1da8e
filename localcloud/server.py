"""LocalCloud: the Cloud Run API, the Monitoring API and the data plane, started together."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from localcloud.api import ApiServer
from localcloud.control import ControlPlane, Settings
from localcloud.haproxy import HAPROXY_BINARY, HAProxy
from localcloud.processes import ChildRegistry
from localcloud.requestlog import RequestLog

logger = logging.getLogger(__name__)

DEFAULT_PROXY_PORTS = (18000, 18999)


class LocalCloud:
    """A local Cloud Run on 127.0.0.1; port 0 means any free port."""

    def __init__(
        self,
        state_dir: Path | str,
        run_port: int = 0,
        monitoring_port: int = 0,
        proxy_ports: tuple[int, int] = DEFAULT_PROXY_PORTS,
        settings: Settings | None = None,
        haproxy_binary: str = HAPROXY_BINARY,
    ):
        self.state_dir = Path(state_dir)
        self._run_port = run_port
        self._monitoring_port = monitoring_port
        self._proxy_ports = proxy_ports
        self.settings = settings or Settings()
        self._haproxy_binary = haproxy_binary
        self.request_log: RequestLog | None = None
        self.control: ControlPlane | None = None
        self._haproxy: HAProxy | None = None
        self._api: ApiServer | None = None
        self._api_thread: threading.Thread | None = None
        self._monitoring = None
        self.monitoring_port: int | None = None

    def start(self) -> LocalCloud:
        """Start HAProxy and the serving revisions of the saved state, then both APIs.

        1. kill children a crashed previous run left behind,
        2. load the state and start what should run (revisions, HAProxy),
        3. start the Cloud Run REST API and the Monitoring gRPC API.
        """
        if not os.access(self._haproxy_binary, os.X_OK):
            raise RuntimeError(
                f"localcloud needs HAProxy at {self._haproxy_binary} "
                "(Debian: apt-get install haproxy)"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        registry = ChildRegistry(self.state_dir / "children.json")
        registry.kill_leftovers()

        self.request_log = RequestLog(self.state_dir / "requests.jsonl")
        self._haproxy = HAProxy(self.state_dir, self.request_log, registry, self._haproxy_binary)
        self.control = ControlPlane(
            self.state_dir, self._haproxy, self._proxy_ports, self.settings, registry
        )
        self.control.start()

        self._api = ApiServer(("127.0.0.1", self._run_port), self.control)
        self._api_thread = threading.Thread(
            target=self._api.serve_forever, name="localcloud-api", daemon=True
        )
        self._api_thread.start()
        self._start_monitoring()
        logger.info(
            "localcloud: Cloud Run API on %s, Monitoring API on %s, state in %s",
            self.run_endpoint,
            self.monitoring_endpoint,
            self.state_dir,
        )
        return self

    def _start_monitoring(self) -> None:
        from localcloud.monitoring_server import serve

        self._monitoring, self.monitoring_port = serve(
            self._monitoring_port, self.request_log, self.state_dir
        )

    @property
    def run_endpoint(self) -> str:
        if self._api is None:
            raise RuntimeError("LocalCloud is not started")
        return f"http://127.0.0.1:{self._api.server_port}"

    @property
    def monitoring_endpoint(self) -> str | None:
        return f"127.0.0.1:{self.monitoring_port}" if self.monitoring_port else None

    def stop(self) -> None:
        """Stop the APIs, the revisions and HAProxy; the state stays for the next start."""
        if self._api is not None:
            self._api.shutdown()
            self._api.server_close()
            self._api = None
        if self._monitoring is not None:
            self._monitoring.stop(grace=1).wait()
            self._monitoring = None
        if self.control is not None:
            self.control.stop()
        if self._haproxy is not None:
            self._haproxy.stop()
        logger.info("localcloud: stopped")

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
