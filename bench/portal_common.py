"""What the portal benchmarks share: a database of their own, a LocalCloud, a real RQ worker
process, and a paced load generator that keeps the time of every answer.

Run from the repository root, e.g. `.venv/bin/python bench/rollouts.py`. PostgreSQL and Redis
come from DATABASE_URL/REDIS_URL or the servers on 127.0.0.1 (database ops_portal_bench,
Redis database 14).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/ops_portal_bench")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/14")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ops_portal.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")


def setup_django() -> None:
    import psycopg

    dbname = os.environ["DATABASE_URL"].rsplit("/", 1)[1]
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_database WHERE datname=%s", [dbname]).fetchone():
            c.execute(f'CREATE DATABASE "{dbname}"')
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def start_localcloud():
    from localcloud.control import Settings
    from localcloud.server import LocalCloud

    lo = random.randrange(30000, 40000, 100)
    return LocalCloud(
        Path(tempfile.mkdtemp(prefix="portal-bench-")),
        proxy_ports=(lo, lo + 99),
        settings=Settings(idle_grace_s=300),
    ).start()


def start_worker() -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            str(REPO / "manage.py"),
            "rqworker",
            "deploy",
            "default",
            "--with-scheduler",
        ],
        cwd=REPO,
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{random.randrange(10**5):05d}"


@dataclass
class Answer:
    at: float  # time.time() when the answer came
    status: int  # 0: the connection failed


@dataclass
class PacedLoad:
    """Requests at a fixed rate from a pool of threads; every answer is kept with its time."""

    url: str
    rate: float
    workers: int = 24
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, daemon=True) for _ in range(self.workers)
        ]

    def __enter__(self) -> PacedLoad:
        self._next = time.perf_counter()
        for t in self._threads:
            t.start()
        return self

    def _work(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            with self._lock:
                due = self._next
                self._next += 1 / self.rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                status = session.get(self.url, timeout=10).status_code
            except requests.RequestException:
                status = 0
            with self._lock:
                self.answers.append(Answer(time.time(), status))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def failed(self, since: float = 0, until: float = float("inf")) -> int:
        """Requests that got no HTTP answer or a 503 from the proxy (none available)."""
        return sum(1 for a in self.answers if since <= a.at <= until and a.status in (0, 502, 503))

    def count(self, since: float = 0, until: float = float("inf")) -> int:
        return sum(1 for a in self.answers if since <= a.at <= until)


DEMO_COMMAND = f"{sys.executable} {REPO / 'examples' / 'demo_service.py'}"


def localcloud_environment(actor, cloud, prefix: str):
    """An environment of its own (its own project) on the benchmark's localcloud."""
    from environments import services as env_services

    return env_services.create_environment(
        actor,
        unique(prefix),
        platform="localcloud",
        gcp_project=unique(prefix),
        region="local",
        run_endpoint=cloud.run_endpoint,
        monitoring_endpoint=cloud.monitoring_endpoint,
    )


def wait_all(deployments, statuses, timeout: float = 180) -> None:
    """Polls until every deployment has one of `statuses`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in deployments:
            d.refresh_from_db()
        if all(d.status in statuses for d in deployments):
            return
        time.sleep(0.2)
    stuck = {d.pk: d.status for d in deployments if d.status not in statuses}
    raise SystemExit(f"deployments not finished after {timeout:g} s: {stuck}")
