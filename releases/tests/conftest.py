"""Fixtures for rollouts on a real localcloud (Cloud Run REST + Monitoring gRPC + HAProxy)."""

import random
import shutil
import sys
import threading
import time
from pathlib import Path

import django_rq
import pytest
import requests
from rq import SimpleWorker

from core.actors import Actor
from environments import services as env_services
from localcloud.control import Settings
from localcloud.server import LocalCloud
from releases import services
from releases.models import Deployment

ROOT = Path(__file__).resolve().parents[2]
DEMO = f"{sys.executable} {ROOT / 'examples' / 'demo_service.py'}"

# Quick analysis for tests: two measurements a second apart.
FAST = [
    {
        "name": "error-rate",
        "kind": "error_rate",
        "max": 0.05,
        "interval_s": 1,
        "count": 2,
        "failure_limit": 0,
        "inconclusive_limit": 5,
        "min_requests": 5,
    },
]


@pytest.fixture(scope="session")
def localcloud(tmp_path_factory):
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        pytest.skip("haproxy is not installed (apt-get install haproxy; .ci/run does)")
    base = random.randrange(20000, 40000, 500)
    cloud = LocalCloud(
        tmp_path_factory.mktemp("localcloud"),
        proxy_ports=(base, base + 499),
        settings=Settings(idle_grace_s=5),
    )
    cloud.start()
    yield cloud
    cloud.stop()


@pytest.fixture
def admin_actor():
    return Actor.system("tests")


@pytest.fixture
def environments(transactional_db, localcloud, admin_actor):
    """dev, staging and production (protected) on the test's localcloud, each its own
    Google project, as separate environments would be."""
    envs = {}
    for name, order, protected in (
        ("dev", 10, False),
        ("staging", 20, False),
        ("production", 30, True),
    ):
        envs[name] = env_services.create_environment(
            admin_actor,
            name,
            order=order,
            protected=protected,
            platform="localcloud",
            gcp_project=f"test-{name}",
            region="local",
            run_endpoint=localcloud.run_endpoint,
            monitoring_endpoint=localcloud.monitoring_endpoint,
        )
    services.save_analysis_template(admin_actor, "fast", FAST)
    return envs


@pytest.fixture
def service_name():
    return f"svc-{random.randrange(10**6):06d}"


@pytest.fixture
def demo_service(environments, admin_actor, service_name):
    service = services.register_service(admin_actor, service_name, health_path="/healthz")
    good = services.register_release(admin_actor, service, "1.0.0", DEMO, ci_status="passed")
    better = services.register_release(admin_actor, service, "1.1.0", DEMO, ci_status="passed")
    bad = services.register_release(
        admin_actor, service, "1.2.0-bad", DEMO, env={"ERROR_RATE": "0.5"}, ci_status="passed"
    )
    return {"service": service, "1.0.0": good, "1.1.0": better, "bad": bad}


def run_queues(until=lambda: False, timeout: float = 60.0) -> None:
    """Runs the deploy queue in a real RQ worker (burst mode, scheduler on) until `until()`
    holds or timeout passes."""
    conn = django_rq.get_connection("deploy")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker = SimpleWorker([django_rq.get_queue("deploy")], connection=conn)
        worker.work(burst=True, with_scheduler=True)
        if until():
            return
        time.sleep(0.2)
    raise AssertionError(f"not done after {timeout:g} s")


def wait_for(deployment: Deployment, statuses, timeout: float = 90.0) -> Deployment:
    def done():
        deployment.refresh_from_db()
        return deployment.status in statuses

    try:
        run_queues(done, timeout)
    except AssertionError:
        raise AssertionError(
            f"deployment {deployment.pk} is {deployment.status} (step {deployment.current_step}"
            f", {deployment.reason!r}), not in {statuses}; events: "
            f"{list(deployment.events.values_list('message', flat=True))}"
        ) from None
    return deployment


class Load:
    """Steady requests to a URL in a thread; counts what failed."""

    def __init__(self, url: str, rps: float = 40):
        self.url, self.interval = url, 1.0 / rps
        self.sent = self.failed = 0
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        session = requests.Session()
        while not self._stop.is_set():
            try:
                status = session.get(self.url, timeout=5).status_code
            except requests.RequestException:
                status = 0
            self.sent += 1
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 0:
                self.failed += 1
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
