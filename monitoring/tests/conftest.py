"""Fixtures of the monitoring tests: environments whose platform is nowhere (a closed port:
platform reads fail fast, as "no data"), services with deployments made in the database, and
small local HTTP and Monitoring servers on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from core.actors import Actor
from environments import services as env_services
from releases import services as release_services
from releases.models import Deployment, Release


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def admin_actor():
    return Actor.system("tests")


@pytest.fixture
def envs(db, admin_actor):
    port = closed_port()
    made = {}
    for name, order, protected in (("dev", 10, False), ("prod", 20, True)):
        made[name] = env_services.create_environment(
            admin_actor,
            name,
            order=order,
            protected=protected,
            platform="localcloud",
            gcp_project=f"test-{name}",
            region="local",
            run_endpoint=f"http://127.0.0.1:{port}",
            monitoring_endpoint=f"127.0.0.1:{port}",
        )
    return made


@pytest.fixture
def web(envs, admin_actor):
    return release_services.register_service(admin_actor, "web")


def make_deployment(service, environment, version, status="succeeded", **fields) -> Deployment:
    """A deployment written straight to the database, as the engine would leave it."""
    release = Release.objects.filter(service=service, version=version).first()
    if release is None:
        release = release_services.register_release(
            Actor.system("tests"), service, version, "python app.py", ci_status="passed"
        )
    now = timezone.now()
    fields.setdefault("new_revision", f"{service.name}-{version.replace('.', '-')}")
    return Deployment.objects.create(
        service=service,
        environment=environment,
        release=release,
        strategy="canary",
        status=status,
        requested_by="tests",
        started_at=now,
        finished_at=now if status in Deployment.FINISHED else None,
        **fields,
    )


class _Recorder(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the name http.server calls
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.received.append(json.loads(body))
        self.send_response(self.server.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook_server():
    """An HTTP server on 127.0.0.1 that records the JSON bodies posted to it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.received = []
    server.status = 200
    server.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(self.server.status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    """A service stand-in answering GET with server.status (200 unless a test changes it)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    server.status = 200
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def monitoring_server(tmp_path):
    """localcloud's Monitoring gRPC stand-in alone, fed by a RequestLog the test fills."""
    from localcloud.monitoring_server import serve
    from localcloud.requestlog import RequestLog

    log = RequestLog(tmp_path / "requests.jsonl")
    server, port = serve(0, log, tmp_path / "state")
    server.log = log
    server.endpoint = f"127.0.0.1:{port}"
    yield server
    server.stop(grace=None)


@pytest.fixture
def fast_webhooks(settings):
    settings.MONITORING_WEBHOOK_ATTEMPTS = 3
    settings.MONITORING_WEBHOOK_BACKOFF_S = 0.01
    settings.MONITORING_WEBHOOK_TIMEOUT_S = 2
