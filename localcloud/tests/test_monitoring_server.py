"""The Monitoring stand-in, queried with the real google-cloud-monitoring client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.api import metric_pb2
from google.api_core import exceptions
from google.cloud import monitoring_v3
from google.cloud.monitoring_v3.services.alert_policy_service.transports import (
    AlertPolicyServiceGrpcTransport,
)
from google.cloud.monitoring_v3.services.metric_service.transports import (
    MetricServiceGrpcTransport,
)
from google.protobuf import field_mask_pb2

from localcloud.monitoring_server import percentile, serve
from localcloud.requestlog import RequestLog, RequestRecord

PROJECT = "projects/demo"
COUNT = "run.googleapis.com/request_count"
LATENCIES = "run.googleapis.com/request_latencies"
Aligner = monitoring_v3.Aggregation.Aligner
Reducer = monitoring_v3.Aggregation.Reducer


@pytest.fixture()
def request_log(tmp_path: Path) -> RequestLog:
    return RequestLog(tmp_path / "r.jsonl")


@pytest.fixture()
def endpoint(tmp_path: Path, request_log: RequestLog) -> Iterator[str]:
    server, port = serve(0, request_log, tmp_path)
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture()
def client(endpoint: str) -> Iterator[monitoring_v3.MetricServiceClient]:
    channel = grpc.insecure_channel(endpoint)
    yield monitoring_v3.MetricServiceClient(transport=MetricServiceGrpcTransport(channel=channel))
    channel.close()


@pytest.fixture()
def alerts(endpoint: str) -> Iterator[monitoring_v3.AlertPolicyServiceClient]:
    channel = grpc.insecure_channel(endpoint)
    transport = AlertPolicyServiceGrpcTransport(channel=channel)
    yield monitoring_v3.AlertPolicyServiceClient(transport=transport)
    channel.close()


def feed(log: RequestLog, now: float) -> dict[str, list[RequestRecord]]:
    """Traffic of the last 10 s: rev-a 40x200, 2x404, 3x503; rev-b 10x200, 5x500."""
    plan = [("web-a", 200, 40), ("web-a", 404, 2), ("web-a", 503, 3)]
    plan += [("web-b", 200, 10), ("web-b", 500, 5)]
    out: dict[str, list[RequestRecord]] = {"web-a": [], "web-b": []}
    i = 0
    for revision, status, n in plan:
        for _ in range(n):
            i += 1
            rec = RequestRecord(
                timestamp=now - 9.5 + (i % 90) * 0.1,
                service="web",
                revision=revision,
                tag=None,
                status=status,
                latency_ms=float(i * 3 % 101) + 0.5,
            )
            log.append(rec)
            out[revision].append(rec)
    # Another service, and traffic outside the window: neither may be counted.
    log.append(RequestRecord(now - 1, "other", "other-a", None, 500, 5.0))
    log.append(RequestRecord(now - 100, "web", "web-a", None, 500, 5.0))
    return out


def interval(now: float, window_s: float) -> monitoring_v3.TimeInterval:
    return monitoring_v3.TimeInterval(
        start_time={"seconds": int(now - window_s), "nanos": int((now % 1) * 1e9)},
        end_time={"seconds": int(now), "nanos": int((now % 1) * 1e9)},
    )


def list_series(client, flt: str, now: float, window_s: float = 20, **aggregation):
    request = monitoring_v3.ListTimeSeriesRequest(
        name=PROJECT,
        filter=flt,
        interval=interval(now, window_s),
        aggregation=monitoring_v3.Aggregation(**aggregation) if aggregation else None,
    )
    return list(client.list_time_series(request=request))


def test_it_counts_requests_per_response_code_class(client, request_log):
    now = time.time()
    feed(request_log, now)

    series = list_series(
        client,
        f'metric.type = "{COUNT}" AND resource.labels.service_name = "web"',
        now,
        alignment_period={"seconds": 20},
        per_series_aligner=Aligner.ALIGN_DELTA,
        cross_series_reducer=Reducer.REDUCE_SUM,
        group_by_fields=["metric.labels.response_code_class"],
    )

    counts = {s.metric.labels["response_code_class"]: s.points[0].value.int64_value for s in series}
    assert counts == {"2xx": 50, "4xx": 2, "5xx": 8}
    assert all(len(s.points) == 1 for s in series)
    assert series[0].metric_kind == metric_pb2.MetricDescriptor.MetricKind.DELTA


def test_it_counts_per_revision_with_group_by(client, request_log):
    now = time.time()
    feed(request_log, now)

    series = list_series(
        client,
        f'metric.type = "{COUNT}" AND resource.label.service_name = "web"',
        now,
        alignment_period={"seconds": 20},
        per_series_aligner=Aligner.ALIGN_SUM,
        cross_series_reducer=Reducer.REDUCE_SUM,
        group_by_fields=["resource.labels.revision_name"],
    )

    counts = {s.resource.labels["revision_name"]: s.points[0].value.int64_value for s in series}
    assert counts == {"web-a": 45, "web-b": 15}
    assert dict(series[0].resource.labels) == {"revision_name": "web-a"}


def test_it_filters_on_revision_and_response_code_class(client, request_log):
    now = time.time()
    feed(request_log, now)

    series = list_series(
        client,
        f'metric.type = "{COUNT}" AND resource.labels.revision_name = "web-a" '
        'AND metric.labels.response_code_class = "5xx"',
        now,
        alignment_period={"seconds": 20},
        per_series_aligner=Aligner.ALIGN_DELTA,
    )

    assert len(series) == 1
    assert series[0].metric.labels["response_code"] == "503"
    assert series[0].resource.labels["project_id"] == "demo"
    assert series[0].resource.type == "cloud_run_revision"
    assert series[0].points[0].value.int64_value == 3


def test_it_computes_rate(client, request_log):
    now = time.time()
    feed(request_log, now)

    series = list_series(
        client,
        f'metric.type = "{COUNT}" AND resource.labels.revision_name = "web-b"',
        now,
        alignment_period={"seconds": 20},
        per_series_aligner=Aligner.ALIGN_RATE,
        cross_series_reducer=Reducer.REDUCE_SUM,
    )

    assert len(series) == 1
    assert series[0].points[0].value.double_value == pytest.approx(15 / 20)


def test_it_aligns_on_short_periods_newest_first(client, request_log):
    now = time.time()
    records = feed(request_log, now)

    series = list_series(
        client,
        f'metric.type = "{COUNT}" AND resource.labels.service_name = "web"',
        now,
        alignment_period={"seconds": 1},
        per_series_aligner=Aligner.ALIGN_DELTA,
        cross_series_reducer=Reducer.REDUCE_SUM,
    )

    points = series[0].points
    ends = [p.interval.end_time.timestamp() for p in points]
    assert ends == sorted(ends, reverse=True)
    assert all(p.interval.end_time - p.interval.start_time == _seconds(1) for p in points)
    assert sum(p.value.int64_value for p in points) == sum(len(r) for r in records.values())


def _seconds(n: float):
    from datetime import timedelta

    return timedelta(seconds=n)


def test_it_computes_latency_percentiles_exactly(client, request_log):
    now = time.time()
    records = feed(request_log, now)
    latencies_a = [r.latency_ms for r in records["web-a"]]
    latencies_all = latencies_a + [r.latency_ms for r in records["web-b"]]

    per_series = list_series(
        client,
        f'metric.type = "{LATENCIES}" AND resource.labels.revision_name = "web-a" '
        'AND metric.labels.response_code = "200"',
        now,
        alignment_period={"seconds": 20},
        per_series_aligner=Aligner.ALIGN_PERCENTILE_95,
    )
    combined = list_series(
        client,
        f'metric.type = "{LATENCIES}" AND resource.labels.service_name = "web"',
        now,
        alignment_period={"seconds": 20},
        per_series_aligner=Aligner.ALIGN_DELTA,
        cross_series_reducer=Reducer.REDUCE_PERCENTILE_99,
    )

    ok_a = [r.latency_ms for r in records["web-a"] if r.status == 200]
    assert per_series[0].value_type == metric_pb2.MetricDescriptor.ValueType.DOUBLE
    assert per_series[0].points[0].value.double_value == pytest.approx(percentile(ok_a, 95))
    assert combined[0].points[0].value.double_value == pytest.approx(percentile(latencies_all, 99))
    assert len(latencies_a) == 45


def test_it_returns_latency_distributions(client, request_log):
    now = time.time()
    records = feed(request_log, now)

    series = list_series(
        client,
        f'metric.type = "{LATENCIES}" AND resource.labels.revision_name = "web-b"',
        now,
        alignment_period={"seconds": 20},
        per_series_aligner=Aligner.ALIGN_DELTA,
        cross_series_reducer=Reducer.REDUCE_SUM,
    )

    dist = series[0].points[0].value.distribution_value
    values = [r.latency_ms for r in records["web-b"]]
    assert dist.count == 15
    assert dist.mean == pytest.approx(sum(values) / 15)
    assert sum(dist.bucket_counts) == 15
    assert series[0].unit == "ms"


def test_it_returns_raw_points_and_headers(client, request_log):
    now = time.time()
    feed(request_log, now)
    flt = f'metric.type = "{COUNT}" AND resource.labels.revision_name = "web-b"'

    raw = list_series(client, flt, now)
    headers = list(
        client.list_time_series(
            request={
                "name": PROJECT,
                "filter": flt,
                "interval": interval(now, 20),
                "view": monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.HEADERS,
            }
        )
    )

    assert sum(p.value.int64_value for s in raw for p in s.points) == 15
    assert {s.metric.labels["response_code"] for s in headers} == {"200", "500"}
    assert all(len(s.points) == 0 for s in headers)


def test_it_answers_no_series_without_traffic(client, request_log):
    now = time.time()

    series = list_series(
        client,
        f'metric.type = "{COUNT}" AND resource.labels.service_name = "web"',
        now,
        alignment_period={"seconds": 20},
        per_series_aligner=Aligner.ALIGN_DELTA,
        cross_series_reducer=Reducer.REDUCE_SUM,
    )

    assert series == []


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        (f'metric.type = "{COUNT}" OR resource.labels.service_name = "x"', "'OR'"),
        (f'metric.type = "{COUNT}" AND metadata.user_labels.team = "x"', "metadata.user_labels"),
        ('resource.labels.service_name = "web"', "exactly one metric type"),
        ('metric.type = "compute.googleapis.com/instance/cpu/usage_time"', "not served"),
        (f'metric.type = "{COUNT}" AND resource.labels.service_name = ', "unexpected"),
    ],
)
def test_it_rejects_unsupported_filters(client, flt, message):
    with pytest.raises(exceptions.InvalidArgument) as info:
        list_series(client, flt, time.time())

    assert message in info.value.message


def test_it_rejects_rate_on_a_distribution(client, request_log):
    now = time.time()
    feed(request_log, now)

    with pytest.raises(exceptions.InvalidArgument, match="ALIGN_RATE needs a numeric metric"):
        list_series(
            client,
            f'metric.type = "{LATENCIES}"',
            now,
            alignment_period={"seconds": 20},
            per_series_aligner=Aligner.ALIGN_RATE,
        )


def _gauge(metric_type: str, value: float, at: float, **labels: str) -> monitoring_v3.TimeSeries:
    series = monitoring_v3.TimeSeries()
    series.metric.type = metric_type
    series.metric.labels.update(labels)
    series.resource.type = "global"
    series.resource.labels["project_id"] = "demo"
    point = monitoring_v3.Point(
        interval={"end_time": {"seconds": int(at), "nanos": int((at % 1) * 1e9)}},
        value={"double_value": value},
    )
    series.points = [point]
    return series


def test_it_stores_custom_metrics_and_reads_them_back(client, tmp_path, request_log):
    metric = "custom.googleapis.com/checkout/queue_depth"
    now = time.time()
    for i, value in enumerate([3.0, 7.0, 5.0]):
        client.create_time_series(
            name=PROJECT,
            time_series=[
                _gauge(metric, value, now - 6 + i * 2, queue="orders"),
                _gauge(metric, value * 10, now - 6 + i * 2, queue="refunds"),
            ],
        )

    raw = list_series(client, f'metric.type = "{metric}" AND metric.labels.queue = "orders"', now)
    mean = list_series(
        client,
        f'metric.type = "{metric}"',
        now,
        alignment_period={"seconds": 20},
        per_series_aligner=Aligner.ALIGN_MAX,
        cross_series_reducer=Reducer.REDUCE_SUM,
    )
    # A restarted server reads the JSON-lines file back.
    server, port = serve(0, request_log, tmp_path)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        again = monitoring_v3.MetricServiceClient(
            transport=MetricServiceGrpcTransport(channel=channel)
        )
        reread = list_series(again, f'metric.type = "{metric}"', now)
    finally:
        server.stop(grace=None)

    assert [p.value.double_value for p in raw[0].points] == [5.0, 7.0, 3.0]
    assert mean[0].points[0].value.double_value == 77.0
    assert len(reread) == 2


def test_it_refuses_points_out_of_order_and_builtin_metrics(client):
    metric = "custom.googleapis.com/jobs/backlog"
    now = time.time()
    client.create_time_series(name=PROJECT, time_series=[_gauge(metric, 1.0, now)])

    with pytest.raises(exceptions.InvalidArgument, match="in order"):
        client.create_time_series(name=PROJECT, time_series=[_gauge(metric, 2.0, now - 5)])
    with pytest.raises(exceptions.InvalidArgument, match="cannot be written"):
        client.create_time_series(name=PROJECT, time_series=[_gauge(COUNT, 2.0, now)])


def test_it_keeps_alert_policies(alerts, tmp_path, request_log):
    policy = monitoring_v3.AlertPolicy(
        display_name="web 5xx",
        combiner=monitoring_v3.AlertPolicy.ConditionCombinerType.OR,
        conditions=[
            monitoring_v3.AlertPolicy.Condition(
                display_name="error rate",
                condition_threshold=monitoring_v3.AlertPolicy.Condition.MetricThreshold(
                    filter=f'metric.type = "{COUNT}" AND metric.labels.response_code_class = "5xx"',
                    comparison=monitoring_v3.ComparisonType.COMPARISON_GT,
                    threshold_value=5,
                    duration={"seconds": 60},
                ),
            )
        ],
    )

    created = alerts.create_alert_policy(name=PROJECT, alert_policy=policy)
    fetched = alerts.get_alert_policy(name=created.name)
    created.display_name = "web 5xx (renamed)"
    updated = alerts.update_alert_policy(
        alert_policy=created, update_mask=field_mask_pb2.FieldMask(paths=["display_name"])
    )
    listed = list(alerts.list_alert_policies(name=PROJECT))
    filtered = list(
        alerts.list_alert_policies(
            request={"name": PROJECT, "filter": 'display_name = "no such policy"'}
        )
    )
    alerts.delete_alert_policy(name=created.name)

    assert created.name.startswith("projects/demo/alertPolicies/")
    assert fetched.conditions[0].condition_threshold.threshold_value == 5
    assert fetched.enabled is True
    assert updated.display_name == "web 5xx (renamed)"
    assert updated.conditions[0].display_name == "error rate"
    assert [p.name for p in listed] == [created.name]
    assert filtered == []
    with pytest.raises(exceptions.NotFound):
        alerts.get_alert_policy(name=created.name)
    assert list(alerts.list_alert_policies(name=PROJECT)) == []


def test_request_metrics_are_kept_apart_per_project(client, request_log):
    """Environments are projects: the same service name in two projects has two sets of
    numbers."""
    now = time.time()
    for i in range(30):
        request_log.append(RequestRecord(now - 5 + i * 0.1, "web", "web-a", None, 200, 5.0, "dev"))
    for i in range(10):
        request_log.append(RequestRecord(now - 5 + i * 0.1, "web", "web-b", None, 500, 5.0, "prod"))

    def total(project):
        series = client.list_time_series(
            name=f"projects/{project}",
            filter=f'metric.type = "{COUNT}" AND resource.labels.service_name = "web"',
            interval={
                "start_time": {"seconds": int(now) - 60},
                "end_time": {"seconds": int(now) + 1},
            },
            view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
        )
        return sum(p.value.int64_value for s in series for p in s.points)

    assert (total("dev"), total("prod"), total("other")) == (30, 10, 0)
