"""Reading Cloud Run metrics and writing custom metrics through Cloud Monitoring.

The same code reads Google's Cloud Monitoring and localcloud's stand-in; see platform.py.
"No data" (no request in the window) is `MetricResult(value=None, sample_count=0)`, never
0.0, so that an analysis can tell too little traffic from a healthy zero.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core import retry as retries
from google.cloud import monitoring_v3
from google.protobuf import timestamp_pb2

from agents.devops.platform import GOOGLE, PlatformConfig, metric_client

logger = logging.getLogger(__name__)

REQUEST_COUNT = "run.googleapis.com/request_count"
REQUEST_LATENCIES = "run.googleapis.com/request_latencies"
# Google refuses alignment periods under 60 s; localcloud aligns down to 1 s.
GOOGLE_MIN_ALIGNMENT_S = 60
LOCAL_MIN_ALIGNMENT_S = 1

Aligner = monitoring_v3.Aggregation.Aligner
Reducer = monitoring_v3.Aggregation.Reducer

_PERCENTILE_REDUCERS = {
    5: Reducer.REDUCE_PERCENTILE_05,
    50: Reducer.REDUCE_PERCENTILE_50,
    95: Reducer.REDUCE_PERCENTILE_95,
    99: Reducer.REDUCE_PERCENTILE_99,
}

TRANSIENT = retries.if_exception_type(gexc.ServiceUnavailable, gexc.DeadlineExceeded)


class MonitoringError(Exception):
    """A Cloud Monitoring call failed for a reason other than a passing outage."""


@dataclass(frozen=True)
class MetricResult:
    """One number over a window; `value` is None when there was no data at all."""

    value: float | None
    sample_count: int

    @property
    def has_data(self) -> bool:
        return self.value is not None


@dataclass(frozen=True)
class MetricPoint:
    start: datetime
    end: datetime
    value: float | int | bool  # a distribution is reported by its mean
    count: int | None = None  # a distribution's number of values


@dataclass(frozen=True)
class MetricSeries:
    metric_type: str
    metric_labels: Mapping[str, str]
    resource_labels: Mapping[str, str]
    points: tuple[MetricPoint, ...] = field(default_factory=tuple)  # newest first


def _enum(enum_type: Any, value: Any, what: str) -> Any:
    if isinstance(value, str):
        try:
            return enum_type[value.upper()]
        except KeyError:
            names = ", ".join(m.name for m in enum_type)
            raise ValueError(f"unknown {what} {value!r}; expected one of {names}") from None
    return enum_type(value)


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    whole = math.floor(seconds)
    ts.seconds = whole
    ts.nanos = int((seconds - whole) * 1e9)
    return ts


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_filter(service: str, revision: str | None = None) -> str:
    """Filter clauses (without metric.type) for one Cloud Run service or one revision."""
    parts = [
        'resource.type = "cloud_run_revision"',
        f"resource.labels.service_name = {_quote(service)}",
    ]
    if revision:
        parts.append(f"resource.labels.revision_name = {_quote(revision)}")
    return " AND ".join(parts)


def _point_value(value: Any) -> tuple[float | int | bool, int | None]:
    which = monitoring_v3.TypedValue.pb(value).WhichOneof("value")
    if which == "distribution_value":
        dist = value.distribution_value
        return float(dist.mean), int(dist.count)
    if which is None:
        return 0.0, None
    return getattr(value, which), None


class MetricsReader:
    """Cloud Run request metrics and any Cloud Monitoring metric, for one platform."""

    def __init__(
        self,
        config: PlatformConfig,
        client: monitoring_v3.MetricServiceClient | None = None,
        clock: Callable[[], float] = time.time,
        retry_timeout_s: float = 30.0,
    ):
        self.config = config
        self.client = client or metric_client(config)
        self._clock = clock
        self._retry = retries.Retry(
            predicate=TRANSIENT, initial=0.2, maximum=5.0, multiplier=2.0, timeout=retry_timeout_s
        )

    # --- Cloud Run request metrics ------------------------------------------------------------

    def request_counts(self, service: str, revision: str | None, window_s: float) -> dict[str, int]:
        """Requests per response code class ("2xx", "5xx", ...) over the last window_s."""
        series = self.query_series(
            REQUEST_COUNT,
            run_filter(service, revision),
            window_s=window_s,
            aligner=Aligner.ALIGN_DELTA,
            reducer=Reducer.REDUCE_SUM,
            group_by=("metric.labels.response_code_class",),
            alignment_s=window_s,
        )
        counts: dict[str, int] = {}
        for s in series:
            code_class = s.metric_labels.get("response_code_class", "")
            counts[code_class] = counts.get(code_class, 0) + sum(int(p.value) for p in s.points)
        return counts

    def request_rate(self, service: str, revision: str | None, window_s: float) -> MetricResult:
        """Requests per second over the last window_s; None when no request came."""
        total = sum(self.request_counts(service, revision, window_s).values())
        if total == 0:
            return MetricResult(None, 0)
        return MetricResult(total / window_s, total)

    def error_rate(self, service: str, revision: str | None, window_s: float) -> MetricResult:
        """Fraction of requests answered 5xx over the last window_s; None when none came."""
        counts = self.request_counts(service, revision, window_s)
        total = sum(counts.values())
        if total == 0:
            return MetricResult(None, 0)
        return MetricResult(counts.get("5xx", 0) / total, total)

    def latency_percentile(
        self, service: str, revision: str | None, pct: int, window_s: float
    ) -> MetricResult:
        """Latency percentile in ms (pct 5, 50, 95 or 99) over the last window_s."""
        reducer = _PERCENTILE_REDUCERS.get(int(pct))
        if reducer is None or pct != int(pct):
            allowed = ", ".join(str(p) for p in _PERCENTILE_REDUCERS)
            raise ValueError(f"latency percentile must be one of {allowed}, not {pct}")
        extra = run_filter(service, revision)

        # 1. How many requests: the merged distribution's count.
        merged = self.query_series(
            REQUEST_LATENCIES,
            extra,
            window_s=window_s,
            aligner=Aligner.ALIGN_DELTA,
            reducer=Reducer.REDUCE_SUM,
            alignment_s=window_s,
        )
        count = sum(p.count or 0 for s in merged for p in s.points)
        if count == 0:
            return MetricResult(None, 0)

        # 2. The percentile across every series (status codes) of the service or revision.
        series = self.query_series(
            REQUEST_LATENCIES,
            extra,
            window_s=window_s,
            aligner=Aligner.ALIGN_DELTA,
            reducer=reducer,
            alignment_s=window_s,
        )
        values = [p.value for s in series for p in s.points]
        if not values:
            return MetricResult(None, count)
        return MetricResult(float(values[0]), count)

    # --- any metric ------------------------------------------------------------------------

    def query_series(
        self,
        metric_type: str,
        filter: str = "",
        window_s: float = 300,
        aligner: str | int = "ALIGN_MEAN",
        reducer: str | int = "REDUCE_NONE",
        group_by: Iterable[str] = (),
        alignment_s: float | None = None,
    ) -> list[MetricSeries]:
        """Time series of one metric over the last window_s, aligned and reduced.

        `filter` adds clauses to `metric.type = ...`, e.g. `resource.labels.service_name =
        "web"`. `alignment_s` defaults to the whole window, giving one point per series.
        """
        aligner_value = _enum(Aligner, aligner, "aligner")
        reducer_value = _enum(Reducer, reducer, "reducer")
        minimum = GOOGLE_MIN_ALIGNMENT_S if self.config.kind == GOOGLE else LOCAL_MIN_ALIGNMENT_S
        period = max(float(alignment_s or window_s), minimum)
        now = self._clock()
        full_filter = f"metric.type = {_quote(metric_type)}"
        if filter.strip():
            full_filter += f" AND {filter.strip()}"
        request = monitoring_v3.ListTimeSeriesRequest(
            name=self.config.project_name,
            filter=full_filter,
            interval=monitoring_v3.TimeInterval(
                start_time=_timestamp(now - window_s), end_time=_timestamp(now)
            ),
            view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
        )
        if aligner_value != Aligner.ALIGN_NONE:
            request.aggregation = monitoring_v3.Aggregation(
                alignment_period={"seconds": int(period), "nanos": int(period % 1 * 1e9)},
                per_series_aligner=aligner_value,
                cross_series_reducer=reducer_value,
                group_by_fields=list(group_by),
            )
        try:
            pages = self.client.list_time_series(request=request, retry=self._retry)
            result = [
                MetricSeries(
                    metric_type=ts.metric.type,
                    metric_labels=dict(ts.metric.labels),
                    resource_labels=dict(ts.resource.labels),
                    points=tuple(
                        MetricPoint(
                            p.interval.start_time or p.interval.end_time,
                            p.interval.end_time,
                            *_point_value(p.value),
                        )
                        for p in ts.points
                    ),
                )
                for ts in pages
            ]
        except gexc.GoogleAPICallError as exc:
            raise MonitoringError(
                f"project {self.config.project}: reading {full_filter!r} failed: {exc}"
            ) from exc
        logger.debug("metric query %r over %ss: %d series", full_filter, window_s, len(result))
        return result

    def query_metric(
        self,
        metric_type: str,
        filter: str = "",
        window_s: float = 300,
        aligner: str | int = "ALIGN_MEAN",
        reducer: str | int = "REDUCE_MEAN",
    ) -> MetricResult:
        """One number for any metric over the last window_s; None when there is no data.

        The window is one alignment period, so each series has at most one point; the
        reducer must combine the series into one (REDUCE_NONE is accepted only when a
        single series matches). sample_count is a distribution's count, else the number of
        points the value came from.
        """
        series = self.query_series(metric_type, filter, window_s, aligner, reducer)
        points = [p for s in series for p in s.points]
        if not points:
            return MetricResult(None, 0)
        if len(series) > 1:
            raise MonitoringError(
                f"metric {metric_type} with filter {filter!r} matched {len(series)} series; "
                "use a reducer or a narrower filter to get one value"
            )
        newest = points[0]
        return MetricResult(float(newest.value), newest.count or len(points))

    def write_custom_metric(
        self,
        metric_type: str,
        value: float | int | bool,
        labels: Mapping[str, str] | None = None,
        resource_type: str = "global",
        resource_labels: Mapping[str, str] | None = None,
        at: float | None = None,
    ) -> None:
        """Write one GAUGE point of a custom metric (custom.googleapis.com/...)."""
        if not metric_type.startswith(("custom.googleapis.com/", "workload.googleapis.com/")):
            metric_type = f"custom.googleapis.com/{metric_type.lstrip('/')}"
        series = monitoring_v3.TimeSeries()
        series.metric.type = metric_type
        series.metric.labels.update(dict(labels or {}))
        series.resource.type = resource_type
        series.resource.labels.update(dict(resource_labels or {"project_id": self.config.project}))
        if isinstance(value, bool):
            typed = {"bool_value": value}
        elif isinstance(value, int):
            typed = {"int64_value": value}
        else:
            typed = {"double_value": float(value)}
        when = _timestamp(at if at is not None else self._clock())
        series.points = [monitoring_v3.Point(interval={"end_time": when}, value=typed)]
        try:
            self.client.create_time_series(
                name=self.config.project_name, time_series=[series], retry=self._retry
            )
        except gexc.GoogleAPICallError as exc:
            raise MonitoringError(
                f"project {self.config.project}: writing {metric_type} failed: {exc}"
            ) from exc
        logger.debug("custom metric %s = %s written (%s)", metric_type, value, labels)
