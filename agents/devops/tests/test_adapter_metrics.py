"""MetricsReader against localcloud's Monitoring server, fed with known requests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.devops.monitoring import MetricResult, MetricsReader, MonitoringError
from agents.devops.platform import PlatformConfig
from localcloud.monitoring_server import percentile, serve
from localcloud.requestlog import RequestLog, RequestRecord

NOW = 1_900_000_000.0  # a fixed clock, so windows hold exactly the records fed


@pytest.fixture()
def request_log(tmp_path: Path) -> RequestLog:
    return RequestLog(tmp_path / "requests.jsonl")


@pytest.fixture()
def reader(tmp_path: Path, request_log: RequestLog) -> Iterator[MetricsReader]:
    server, port = serve(0, request_log, tmp_path)
    config = PlatformConfig(
        kind="localcloud",
        project="demo",
        region="local",
        monitoring_endpoint=f"127.0.0.1:{port}",
    )
    yield MetricsReader(config, clock=lambda: NOW)
    server.stop(grace=None)


def add(log: RequestLog, revision: str, status: int, latencies: list[float], age_s: float = 5):
    for i, latency in enumerate(latencies):
        log.append(
            RequestRecord(
                timestamp=NOW - age_s + i * 0.001,
                service="checkout",
                revision=revision,
                tag=None,
                status=status,
                latency_ms=latency,
            )
        )


def test_it_computes_error_rate_exactly(reader, request_log):
    add(request_log, "checkout-v1", 200, [10.0] * 90)
    add(request_log, "checkout-v1", 503, [12.0] * 7)
    add(request_log, "checkout-v1", 404, [3.0] * 3)
    add(request_log, "checkout-v2", 500, [50.0] * 4)
    add(request_log, "checkout-v2", 200, [20.0] * 16)
    add(request_log, "checkout-v1", 500, [1.0] * 50, age_s=120)  # outside the window

    v1 = reader.error_rate("checkout", "checkout-v1", window_s=60)
    v2 = reader.error_rate("checkout", "checkout-v2", window_s=60)
    service = reader.error_rate("checkout", None, window_s=60)

    assert v1 == MetricResult(0.07, 100)
    assert v2 == MetricResult(0.2, 20)
    assert service == MetricResult(11 / 120, 120)


def test_it_computes_request_rate(reader, request_log):
    add(request_log, "checkout-v1", 200, [10.0] * 30)

    assert reader.request_rate("checkout", "checkout-v1", window_s=10) == MetricResult(3.0, 30)


def test_it_reports_no_data_as_none_not_zero(reader, request_log):
    add(request_log, "checkout-v1", 200, [10.0] * 5)

    assert reader.error_rate("checkout", "checkout-v2", window_s=60) == MetricResult(None, 0)
    assert reader.request_rate("checkout", "checkout-v2", window_s=60) == MetricResult(None, 0)
    assert reader.latency_percentile("checkout", "checkout-v2", 95, 60) == MetricResult(None, 0)
    # Traffic without errors is a real zero.
    assert reader.error_rate("checkout", "checkout-v1", window_s=60) == MetricResult(0.0, 5)


def test_it_computes_latency_percentiles_across_status_codes(reader, request_log):
    ok = [float(v) for v in range(1, 91)]
    failed = [500.0 + v for v in range(10)]
    add(request_log, "checkout-v1", 200, ok)
    add(request_log, "checkout-v1", 500, failed)

    p95 = reader.latency_percentile("checkout", "checkout-v1", 95, window_s=60)
    p50 = reader.latency_percentile("checkout", "checkout-v1", 50, window_s=60)

    assert p95.sample_count == 100
    assert p95.value == pytest.approx(percentile(ok + failed, 95))
    assert p50.value == pytest.approx(percentile(ok + failed, 50))
    with pytest.raises(ValueError, match="must be one of 5, 50, 95, 99"):
        reader.latency_percentile("checkout", "checkout-v1", 90, window_s=60)


def test_it_queries_any_metric(reader, request_log):
    add(request_log, "checkout-v1", 200, [10.0] * 12)
    add(request_log, "checkout-v2", 200, [10.0] * 8)

    rate = reader.query_metric(
        "run.googleapis.com/request_count",
        'resource.labels.service_name = "checkout"',
        window_s=20,
        aligner="ALIGN_RATE",
        reducer="REDUCE_SUM",
    )
    per_revision = reader.query_series(
        "run.googleapis.com/request_count",
        'resource.labels.service_name = "checkout"',
        window_s=20,
        aligner="ALIGN_DELTA",
        reducer="REDUCE_SUM",
        group_by=["resource.labels.revision_name"],
    )

    assert rate.value == pytest.approx(1.0)
    assert {s.resource_labels["revision_name"]: s.points[0].value for s in per_revision} == {
        "checkout-v1": 12,
        "checkout-v2": 8,
    }
    with pytest.raises(MonitoringError, match="matched 2 series"):
        reader.query_metric(
            "run.googleapis.com/request_count",
            'resource.labels.service_name = "checkout"',
            window_s=20,
            aligner="ALIGN_DELTA",
            reducer="REDUCE_NONE",
        )
    with pytest.raises(MonitoringError, match="OR"):
        reader.query_metric("run.googleapis.com/request_count", 'a = "b" OR c = "d"')


def test_it_writes_and_reads_back_custom_metrics(reader):
    for i, depth in enumerate([4, 9, 6]):
        reader.write_custom_metric(
            "checkout/queue_depth", depth, labels={"queue": "orders"}, at=NOW - 30 + i * 5
        )

    peak = reader.query_metric(
        "custom.googleapis.com/checkout/queue_depth",
        'metric.labels.queue = "orders"',
        window_s=60,
        aligner="ALIGN_MAX",
        reducer="REDUCE_MAX",
    )
    none = reader.query_metric("custom.googleapis.com/checkout/other", window_s=60)

    assert peak == MetricResult(9.0, 1)
    assert none == MetricResult(None, 0)
