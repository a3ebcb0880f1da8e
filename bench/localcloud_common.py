"""What the localcloud benchmarks share: a LocalCloud in a temporary directory, the demo
service's template, deploys through the real client, and a load generator.

Run the benchmarks from the repository root, e.g. `.venv/bin/python bench/localcloud_proxy.py`.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from google.api_core.future.polling import DEFAULT_POLLING
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from localcloud.control import Settings  # noqa: E402 (needs the path above)
from localcloud.server import LocalCloud  # noqa: E402

PARENT = "projects/bench/locations/local"
POLLING = DEFAULT_POLLING.with_delay(initial=0.02, maximum=0.1, multiplier=1.3).with_timeout(120)
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION


def start_cloud(idle_grace_s: float = 60) -> tuple[LocalCloud, run_v2.ServicesClient]:
    lo = random.randrange(20000, 30000, 100)
    cloud = LocalCloud(
        Path(tempfile.mkdtemp(prefix="localcloud-bench-")),
        proxy_ports=(lo, lo + 99),
        settings=Settings(idle_grace_s=idle_grace_s),
    ).start()
    client = run_v2.ServicesClient(
        transport="rest",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": cloud.run_endpoint},
    )
    return cloud, client


def template(version: str, **env: str) -> run_v2.RevisionTemplate:
    variables = {"VERSION": version, **env}
    return run_v2.RevisionTemplate(
        containers=[
            run_v2.Container(
                image="local/demo-service",
                command=["python", str(REPO / "examples" / "demo_service.py")],
                env=[run_v2.EnvVar(name=k, value=v) for k, v in variables.items()],
                startup_probe=run_v2.Probe(http_get=run_v2.HTTPGetAction(path="/healthz")),
            )
        ]
    )


def deploy(client: run_v2.ServicesClient, service_id: str, version: str, **env) -> run_v2.Service:
    name = f"{PARENT}/services/{service_id}"
    try:
        service = client.get_service(name=name)
    except Exception:
        op = client.create_service(
            parent=PARENT,
            service=run_v2.Service(template=template(version, **env)),
            service_id=service_id,
        )
        return op.result(polling=POLLING)
    service.template = template(version, **env)
    return client.update_service(service=service).result(polling=POLLING)


def set_traffic(client: run_v2.ServicesClient, name: str, split: dict[str, int]) -> None:
    service = client.get_service(name=name)
    service.traffic = [
        run_v2.TrafficTarget(type_=REVISION, revision=rev, percent=pct)
        for rev, pct in split.items()
    ]
    client.update_service(service=service).result(polling=POLLING)


def short(name: str) -> str:
    return name.rsplit("/", 1)[1]


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        lat = sorted(self.latencies_ms)
        if not lat:
            return f"no successful requests, {len(self.failures)} failed"
        p50 = lat[len(lat) // 2]
        p95 = lat[min(len(lat) - 1, int(len(lat) * 0.95))]
        return (
            f"{len(lat)} ok, {len(self.failures)} failed, {len(lat) / self.seconds:.0f} req/s, "
            f"p50 {p50:.2f} ms, p95 {p95:.2f} ms, mean {statistics.fmean(lat):.2f} ms"
        )


def closed_loop(url: str, concurrency: int, total: int, keep_alive: bool) -> LoadResult:
    """`concurrency` workers each sending requests back to back until `total` are sent."""
    result = LoadResult()
    lock = threading.Lock()
    remaining = [total]

    def worker() -> None:
        session = requests.Session() if keep_alive else None
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            started = time.perf_counter()
            try:
                answer = (session or requests).get(url, timeout=10)
                ok = answer.status_code == 200
                error = f"HTTP {answer.status_code}"
            except requests.RequestException as exc:
                ok, error = False, repr(exc)
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                (result.latencies_ms.append(elapsed) if ok else result.failures.append(error))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - started
    return result


class PacedLoad:
    """Requests at a fixed rate (new connection each), from a pool of workers, until stopped."""

    def __init__(self, url: str, rate: float, workers: int = 16):
        self.url = url
        self.interval = 1 / rate
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next = 0.0
        self._threads = [threading.Thread(target=self._work) for _ in range(workers)]

    def __enter__(self) -> PacedLoad:
        self._started = time.perf_counter()
        self._next = self._started
        for thread in self._threads:
            thread.start()
        return self

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                due = self._next
                self._next += self.interval
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            started = time.perf_counter()
            try:
                answer = requests.get(self.url, timeout=10)
                ok, error = answer.status_code == 200, f"HTTP {answer.status_code}"
            except requests.RequestException as exc:
                ok, error = False, repr(exc)
            elapsed = (time.perf_counter() - started) * 1000
            with self._lock:
                if ok:
                    self.result.latencies_ms.append(elapsed)
                else:
                    self.result.failures.append(error)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.result.seconds = time.perf_counter() - self._started
