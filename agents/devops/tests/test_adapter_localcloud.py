"""CloudRunAdapter and MetricsReader against the real localcloud: processes, HAProxy, metrics."""

from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.devops.cloud_run import CloudRunAdapter, RevisionNotReady
from agents.devops.monitoring import MetricsReader
from agents.devops.platform import PlatformConfig

DEMO = Path(__file__).resolve().parents[3] / "examples" / "demo_service.py"
COMMAND = [sys.executable, str(DEMO)]

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformConfig]:
    from localcloud.control import Settings
    from localcloud.processes import free_port
    from localcloud.server import LocalCloud

    lo = free_port()  # a range starting at a port the kernel just handed out, not a fixed one
    settings = Settings(idle_grace_s=300, startup_timeout_s=20, drain_timeout_s=5)
    local = LocalCloud(
        tmp_path_factory.mktemp("localcloud"), proxy_ports=(lo, lo + 200), settings=settings
    )
    local.start()
    yield PlatformConfig(
        kind="localcloud",
        project="demo",
        region="local",
        run_endpoint=local.run_endpoint,
        monitoring_endpoint=local.monitoring_endpoint or "",
    )
    local.stop()


def fetch(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_it_deploys_splits_traffic_and_reads_metrics_and_logs(cloud):
    adapter = CloudRunAdapter(cloud)
    metrics = MetricsReader(cloud)

    first = adapter.create_revision("shop", "shop-v1", COMMAND, env={"VERSION": "1"}, timeout_s=60)
    second = adapter.create_revision(
        "shop", "shop-v2", COMMAND, env={"VERSION": "2"}, tag="preview", timeout_s=60
    )
    before = adapter.get_service_state("shop")
    preview_version = fetch(second.tag_uri)["version"]
    state = adapter.set_traffic("shop", {"shop-v1": 50, "shop-v2": 50})
    seen = Counter(fetch(state.uri)["revision"] for _ in range(60))
    logs = adapter.get_revision_logs("shop", "shop-v2", limit=50)

    assert first.created_service and not second.created_service
    assert before.percent("shop-v1") == 100 and before.percent("shop-v2") == 0
    assert preview_version == "2"
    assert state.percent("shop-v1") == 50 and state.tags("shop-v2") == ["preview"]
    assert set(seen) == {"shop-v1", "shop-v2"}
    assert logs and all(e.stream for e in logs)

    # The data plane logs each request a moment after answering it.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        per_revision = {
            rev: metrics.request_rate("shop", rev, window_s=120).sample_count
            for rev in ("shop-v1", "shop-v2")
        }
        if per_revision == {"shop-v1": seen["shop-v1"], "shop-v2": seen["shop-v2"] + 1}:
            break
        time.sleep(0.5)
    # shop-v2 also answered the one request through its preview tag.
    assert per_revision == {"shop-v1": seen["shop-v1"], "shop-v2": seen["shop-v2"] + 1}
    assert metrics.error_rate("shop", None, window_s=120).value == 0.0


def test_it_reports_a_crashing_revision_and_keeps_traffic(cloud):
    adapter = CloudRunAdapter(cloud)
    adapter.create_revision("cart", "cart-v1", COMMAND, env={"VERSION": "1"}, timeout_s=60)

    with pytest.raises(RevisionNotReady) as info:
        adapter.create_revision(
            "cart", "cart-v2", COMMAND, env={"EXIT_ON_START": "3"}, tag="canary", timeout_s=30
        )

    state = adapter.get_service_state("cart")
    assert info.value.revision == "cart-v2"
    assert "3" in info.value.detail
    assert state.percent("cart-v1") == 100
    assert state.revision("cart-v2").failed
    assert fetch(state.uri)["version"] == "1"
    # The failed revision's tag is gone, so traffic can still be changed.
    assert adapter.set_traffic("cart", {"cart-v1": 100}).tag_uris == {}
