"""A subset of the Cloud Monitoring API v3 over gRPC, for localcloud.

The real `google-cloud-monitoring` client talks to this server unchanged. It serves:

- MetricService.ListTimeSeries for `run.googleapis.com/request_count` and
  `run.googleapis.com/request_latencies`, computed from the data plane's RequestLog, so
  values are exact for the traffic sent; and for custom metrics written with
  CreateTimeSeries. Filters, alignment (down to 1 s), cross-series reduction and both views
  follow the real API where localcloud supports them; anything else is INVALID_ARGUMENT.
- MetricService.CreateTimeSeries for `custom.googleapis.com/`, `workload.googleapis.com/`
  and `external.googleapis.com/` metrics (GAUGE or CUMULATIVE; INT64, DOUBLE or BOOL),
  kept in memory and in a JSON-lines file under the state directory.
- AlertPolicyService Create/List/Get/Update/Delete, kept in a JSON file.

Neither Google package ships servicer classes, so the handlers are registered generically
on the proto-plus request and response types.
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.api import distribution_pb2, metric_pb2, monitored_resource_pb2
from google.cloud.monitoring_v3 import types as mt
from google.protobuf import empty_pb2, field_mask_pb2, json_format, timestamp_pb2

from localcloud.requestlog import RequestLog

logger = logging.getLogger(__name__)

REQUEST_COUNT = "run.googleapis.com/request_count"
REQUEST_LATENCIES = "run.googleapis.com/request_latencies"
RUN_RESOURCE_TYPE = "cloud_run_revision"
CUSTOM_PREFIXES = ("custom.googleapis.com/", "workload.googleapis.com/", "external.googleapis.com/")

# Cloud Run samples every 60 s; localcloud keeps 1 s so that local demos answer quickly.
RAW_SAMPLE_PERIOD_S = 1
MIN_ALIGNMENT_PERIOD_S = 1.0
MAX_SERIES_PER_CREATE = 200

# Latency histogram layout, close to the one Cloud Run reports (exponential, in ms).
LATENCY_BUCKETS = distribution_pb2.Distribution.BucketOptions.Exponential(
    num_finite_buckets=64, growth_factor=1.4, scale=1.0
)

TIME_SERIES_FILE = "monitoring-timeseries.jsonl"
ALERT_POLICIES_FILE = "monitoring-alert-policies.json"

Kind = metric_pb2.MetricDescriptor.MetricKind
ValueType = metric_pb2.MetricDescriptor.ValueType
Aligner = mt.Aggregation.Aligner
Reducer = mt.Aggregation.Reducer

_PERCENTILE_ALIGNERS = {
    Aligner.ALIGN_PERCENTILE_05: 5.0,
    Aligner.ALIGN_PERCENTILE_50: 50.0,
    Aligner.ALIGN_PERCENTILE_95: 95.0,
    Aligner.ALIGN_PERCENTILE_99: 99.0,
}
_PERCENTILE_REDUCERS = {
    Reducer.REDUCE_PERCENTILE_05: 5.0,
    Reducer.REDUCE_PERCENTILE_50: 50.0,
    Reducer.REDUCE_PERCENTILE_95: 95.0,
    Reducer.REDUCE_PERCENTILE_99: 99.0,
}


class ApiError(Exception):
    """An error answered to the client with a gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


# --- filters -----------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op>!=|=)
      | (?P<punct>[(),])
      | (?P<word>[A-Za-z0-9_.\-/:*]+)
    )""",
    re.VERBOSE,
)
_FUNCTIONS = ("starts_with", "ends_with", "has_substring", "one_of")
_SUPPORTED_FILTER = (
    'supported: metric.type = "...", resource.type = "...", metric.labels.KEY and '
    'resource.labels.KEY compared with = or != to a string, starts_with("..."), '
    'ends_with("..."), has_substring("...") or one_of("...", ...), joined by AND'
)


@dataclass(frozen=True)
class Clause:
    """One `field op value` term of a Monitoring filter."""

    scope: str  # "metric" or "resource"
    key: str  # "type" for metric.type / resource.type, else a label key
    negated: bool
    function: str  # "" for a plain comparison
    values: tuple[str, ...]

    def matches(self, actual: str | None) -> bool:
        if actual is None:
            return self.negated
        if self.function in ("", "one_of"):
            hit = actual in self.values
        elif self.function == "starts_with":
            hit = actual.startswith(self.values[0])
        elif self.function == "ends_with":
            hit = actual.endswith(self.values[0])
        else:
            hit = self.values[0] in actual
        return hit != self.negated


@dataclass(frozen=True)
class _FieldRef:
    scope: str
    label: str | None  # None for `<scope>.type`


def _parse_field(name: str, what: str) -> _FieldRef:
    parts = name.split(".")
    if len(parts) == 2 and parts[0] in ("metric", "resource") and parts[1] == "type":
        return _FieldRef(parts[0], None)
    if (
        len(parts) == 3
        and parts[0] in ("metric", "resource")
        and parts[1] in ("labels", "label")
        and parts[2]
    ):
        return _FieldRef(parts[0], parts[2])
    raise _invalid(f"unsupported {what} {name!r}")


def _unquote(token: str) -> str:
    return re.sub(r"\\(.)", r"\1", token[1:-1])


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            raise _invalid(f"cannot parse filter at {text[pos:]!r}; {_SUPPORTED_FILTER}")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


@dataclass(frozen=True)
class Filter:
    metric_type: str
    clauses: tuple[tuple[_FieldRef, Clause], ...]

    def equality(self, scope: str, label: str) -> str | None:
        """The value a label must equal, when the filter pins it to exactly one."""
        for ref, clause in self.clauses:
            if (
                ref.scope == scope
                and ref.label == label
                and not clause.negated
                and clause.function in ("", "one_of")
                and len(clause.values) == 1
            ):
                return clause.values[0]
        return None

    def matches(self, series: Series) -> bool:
        for ref, clause in self.clauses:
            if ref.label is None:
                actual = series.metric_type if ref.scope == "metric" else series.resource_type
            else:
                labels = series.metric_labels if ref.scope == "metric" else series.resource_labels
                actual = labels.get(ref.label)
            if not clause.matches(actual):
                return False
        return True


def parse_filter(text: str) -> Filter:
    """Parse the subset of the Monitoring filter language that localcloud supports."""
    tokens = _tokenize(text)
    if not tokens:
        raise _invalid(f"filter is required and must name one metric.type; {_SUPPORTED_FILTER}")
    clauses: list[tuple[_FieldRef, Clause]] = []
    i = 0

    def expect(kind: str, value: str | None = None) -> str:
        nonlocal i
        if i >= len(tokens) or tokens[i][0] != kind or (value and tokens[i][1] != value):
            got = tokens[i][1] if i < len(tokens) else "end of filter"
            raise _invalid(f"unsupported filter {text!r}: unexpected {got!r}; {_SUPPORTED_FILTER}")
        i += 1
        return tokens[i - 1][1]

    while True:
        name = expect("word")
        if name.upper() in ("OR", "NOT", "AND"):
            raise _invalid(f"unsupported filter {text!r}: {name!r}; {_SUPPORTED_FILTER}")
        ref = _parse_field(name, "filter field")
        negated = expect("op") == "!="
        if i < len(tokens) and tokens[i][0] == "str":
            clause = Clause(ref.scope, ref.label or "type", negated, "", (_unquote(tokens[i][1]),))
            i += 1
        elif i < len(tokens) and tokens[i][0] == "word":
            func = tokens[i][1]
            i += 1
            if i < len(tokens) and tokens[i][1] == "(":
                if func not in _FUNCTIONS:
                    raise _invalid(f"unsupported filter function {func!r}; {_SUPPORTED_FILTER}")
                expect("punct", "(")
                args = [_unquote(expect("str"))]
                while i < len(tokens) and tokens[i][1] == ",":
                    i += 1
                    args.append(_unquote(expect("str")))
                expect("punct", ")")
                if func != "one_of" and len(args) != 1:
                    raise _invalid(f"{func}() takes exactly one string in filter {text!r}")
                clause = Clause(ref.scope, ref.label or "type", negated, func, tuple(args))
            else:
                # A bare word compares as a string, as the real API allows.
                clause = Clause(ref.scope, ref.label or "type", negated, "", (func,))
        else:
            expect("str")  # raises with a message naming what was found
            raise AssertionError("unreachable")
        clauses.append((ref, clause))
        if i == len(tokens):
            break
        joiner = expect("word")
        if joiner.upper() != "AND":
            raise _invalid(f"unsupported filter {text!r}: {joiner!r}; {_SUPPORTED_FILTER}")

    metric_types = [
        c.values[0]
        for ref, c in clauses
        if ref.scope == "metric" and ref.label is None and not c.negated and c.function == ""
    ]
    if len(metric_types) != 1:
        raise _invalid(
            f"filter {text!r} must name exactly one metric type with "
            f'metric.type = "..."; {_SUPPORTED_FILTER}'
        )
    return Filter(metric_types[0], tuple(clauses))


# --- series and values -------------------------------------------------------------------


@dataclass
class Sample:
    """One raw observation: a request (Cloud Run metrics) or a written point (custom)."""

    start: float
    end: float
    value: float | int | bool


@dataclass
class Series:
    metric_type: str
    metric_labels: dict[str, str]
    resource_type: str
    resource_labels: dict[str, str]
    metric_kind: int
    value_type: int
    unit: str = ""
    samples: list[Sample] = field(default_factory=list)

    @property
    def key(self) -> tuple:
        return (
            self.metric_type,
            tuple(sorted(self.metric_labels.items())),
            self.resource_type,
            tuple(sorted(self.resource_labels.items())),
        )


@dataclass
class Dist:
    """A distribution that keeps its raw values, so percentiles are exact."""

    values: list[float]

    def merged(self, other: Dist) -> Dist:
        return Dist(self.values + other.values)


Value = int | float | bool | Dist


@dataclass
class AlignedSeries:
    series: Series
    metric_kind: int
    value_type: int
    points: dict[float, tuple[float, Value]]  # bucket end -> (bucket start, value)
    unit: str = ""


def percentile(values: Iterable[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = (len(ordered) - 1) * pct / 100.0
    lo = math.floor(rank)
    hi = math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def _bucket_index(value: float) -> int:
    opts = LATENCY_BUCKETS
    if value < opts.scale:
        return 0
    i = int(math.floor(math.log(value / opts.scale) / math.log(opts.growth_factor))) + 1
    return min(i, opts.num_finite_buckets + 1)


def distribution_pb(dist: Dist) -> distribution_pb2.Distribution:
    n = len(dist.values)
    out = distribution_pb2.Distribution(count=n)
    out.bucket_options.exponential_buckets.CopyFrom(LATENCY_BUCKETS)
    if not n:
        return out
    mean = sum(dist.values) / n
    out.mean = mean
    out.sum_of_squared_deviation = sum((v - mean) ** 2 for v in dist.values)
    out.range.min = min(dist.values)
    out.range.max = max(dist.values)
    counts = [0] * (LATENCY_BUCKETS.num_finite_buckets + 2)
    for v in dist.values:
        counts[_bucket_index(v)] += 1
    while counts and counts[-1] == 0:  # the API allows trailing zero buckets to be omitted
        counts.pop()
    out.bucket_counts.extend(counts)
    return out


def _typed_value(value_type: int, value: Value) -> mt.TypedValue:
    pb = mt.TypedValue.pb()()
    if value_type == ValueType.DISTRIBUTION:
        assert isinstance(value, Dist)
        pb.distribution_value.CopyFrom(distribution_pb(value))
    elif value_type == ValueType.INT64:
        pb.int64_value = int(value)  # type: ignore[arg-type]
    elif value_type == ValueType.BOOL:
        pb.bool_value = bool(value)
    else:
        pb.double_value = float(value)  # type: ignore[arg-type]
    return pb


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    whole = math.floor(seconds)
    ts.seconds = whole
    ts.nanos = int(round((seconds - whole) * 1e9)) % 1_000_000_000
    return ts


def _seconds(ts: timestamp_pb2.Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def _kind_name(kind: int) -> str:
    return Kind.Name(kind)


def _type_name(value_type: int) -> str:
    return ValueType.Name(value_type)


# --- alignment and reduction ---------------------------------------------------------------


def _numeric_sum(values: list[Value], value_type: int) -> Value:
    if value_type == ValueType.DISTRIBUTION:
        out: list[float] = []
        for v in values:
            assert isinstance(v, Dist)
            out.extend(v.values)
        return Dist(out)
    total = sum(float(v) for v in values)  # type: ignore[arg-type]
    return int(total) if value_type == ValueType.INT64 else total


def _mean(values: list[Value], value_type: int) -> float:
    if value_type == ValueType.DISTRIBUTION:
        merged = _numeric_sum(values, value_type)
        assert isinstance(merged, Dist)
        return sum(merged.values) / len(merged.values) if merged.values else 0.0
    return sum(float(v) for v in values) / len(values)  # type: ignore[arg-type]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise _invalid(message)


def align(series: Series, aggregation: Any, start: float, end: float) -> AlignedSeries:
    """Apply a per-series aligner; buckets end at `end`, `end - period`, ... (newest first)."""
    aligner = aggregation.per_series_aligner
    period = aggregation.alignment_period.seconds + aggregation.alignment_period.nanos / 1e9
    _require(
        period >= MIN_ALIGNMENT_PERIOD_S,
        f"aggregation.alignment_period must be at least {MIN_ALIGNMENT_PERIOD_S:g}s "
        f"when per_series_aligner is set (got {period:g}s)",
    )
    buckets: dict[int, list[Sample]] = defaultdict(list)
    for s in series.samples:
        if start < s.end <= end:
            buckets[int(math.floor((end - s.end) / period))].append(s)

    kind, vtype = series.metric_kind, series.value_type
    name = Aligner(aligner).name
    is_dist = vtype == ValueType.DISTRIBUTION
    is_numeric = vtype in (ValueType.INT64, ValueType.DOUBLE)
    what = f"{name} on {series.metric_type} ({_kind_name(kind)} {_type_name(vtype)})"

    supported = {
        Aligner.ALIGN_DELTA,
        Aligner.ALIGN_RATE,
        Aligner.ALIGN_SUM,
        Aligner.ALIGN_MEAN,
        Aligner.ALIGN_MIN,
        Aligner.ALIGN_MAX,
        Aligner.ALIGN_COUNT,
        Aligner.ALIGN_NEXT_OLDER,
        *_PERCENTILE_ALIGNERS,
    }
    _require(aligner in supported, f"per_series_aligner {name} is not supported by localcloud")
    if aligner in (Aligner.ALIGN_DELTA, Aligner.ALIGN_RATE):
        _require(
            kind in (Kind.DELTA, Kind.CUMULATIVE), f"{what}: the metric must be DELTA or CUMULATIVE"
        )
    if aligner == Aligner.ALIGN_RATE:
        _require(is_numeric, f"{what}: ALIGN_RATE needs a numeric metric")
    if aligner in (Aligner.ALIGN_MIN, Aligner.ALIGN_MAX):
        _require(is_numeric, f"{what}: needs a numeric metric")
    if aligner in _PERCENTILE_ALIGNERS or aligner == Aligner.ALIGN_MEAN:
        _require(is_numeric or is_dist, f"{what}: needs a numeric or distribution metric")
    if aligner == Aligner.ALIGN_SUM:
        _require(is_numeric or is_dist, f"{what}: needs a numeric or distribution metric")

    # Output kind and type, as the real API reports them.
    if aligner in (Aligner.ALIGN_DELTA, Aligner.ALIGN_SUM):
        out_kind = Kind.DELTA if kind != Kind.GAUGE else Kind.GAUGE
        out_type = vtype
    elif aligner == Aligner.ALIGN_COUNT:
        out_kind, out_type = Kind.GAUGE, ValueType.INT64
    elif aligner in (Aligner.ALIGN_MIN, Aligner.ALIGN_MAX, Aligner.ALIGN_NEXT_OLDER):
        out_kind, out_type = Kind.GAUGE, vtype
    else:
        out_kind, out_type = Kind.GAUGE, ValueType.DOUBLE

    ordered = sorted(series.samples, key=lambda s: s.end)
    points: dict[float, tuple[float, Value]] = {}
    for k, samples in buckets.items():
        bucket_end = end - k * period
        bucket_start = bucket_end - period
        samples.sort(key=lambda s: s.end)
        values: list[Value] = [
            Dist([float(s.value)]) if is_dist else s.value
            for s in samples  # type: ignore
        ]
        if kind == Kind.CUMULATIVE and aligner in (Aligner.ALIGN_DELTA, Aligner.ALIGN_RATE):
            # A counter's change over the bucket: last value minus the last one before it.
            before = [s for s in ordered if s.end < samples[0].end]
            base = float(before[-1].value) if before else 0.0
            delta: Value = float(samples[-1].value) - base
            if vtype == ValueType.INT64:
                delta = int(delta)
            value: Value = delta if aligner == Aligner.ALIGN_DELTA else float(delta) / period
        elif aligner in (Aligner.ALIGN_DELTA, Aligner.ALIGN_SUM):
            value = _numeric_sum(values, vtype)
        elif aligner == Aligner.ALIGN_RATE:
            value = float(_numeric_sum(values, vtype)) / period  # type: ignore[arg-type]
        elif aligner == Aligner.ALIGN_MEAN:
            value = _mean(values, vtype)
        elif aligner == Aligner.ALIGN_MIN:
            value = min(values)  # type: ignore[type-var]
        elif aligner == Aligner.ALIGN_MAX:
            value = max(values)  # type: ignore[type-var]
        elif aligner == Aligner.ALIGN_COUNT:
            value = len(values)
        elif aligner == Aligner.ALIGN_NEXT_OLDER:
            value = values[-1]
        else:
            raw = [float(s.value) for s in samples]
            value = percentile(raw, _PERCENTILE_ALIGNERS[aligner])
        points[bucket_end] = (bucket_start, value)
    if aligner == Aligner.ALIGN_RATE:
        unit = f"{series.unit or '1'}/s"
    elif aligner == Aligner.ALIGN_COUNT:
        unit = "1"
    else:
        unit = series.unit
    return AlignedSeries(series, out_kind, out_type, points, unit)


def _raw(series: Series, start: float, end: float) -> AlignedSeries:
    """Points at the native sampling period: per second for Cloud Run, as written for custom."""
    points: dict[float, tuple[float, Value]] = {}
    inside = [s for s in series.samples if start < s.end <= end or (start == end == s.end)]
    if series.metric_type in (REQUEST_COUNT, REQUEST_LATENCIES):
        by_second: dict[int, list[Sample]] = defaultdict(list)
        for s in inside:
            by_second[int(math.floor(s.end / RAW_SAMPLE_PERIOD_S))].append(s)
        for sec, samples in by_second.items():
            values: list[Value]
            if series.value_type == ValueType.DISTRIBUTION:
                values = [Dist([float(s.value) for s in samples])]
            else:
                values = [s.value for s in samples]
            bucket_start = float(sec * RAW_SAMPLE_PERIOD_S)
            points[bucket_start + RAW_SAMPLE_PERIOD_S] = (
                bucket_start,
                _numeric_sum(values, series.value_type),
            )
    else:
        for s in inside:
            points[s.end] = (s.start, s.value)
    return AlignedSeries(series, series.metric_kind, series.value_type, points, series.unit)


def _group_value(series: Series, field_name: str) -> str:
    ref = _parse_field(field_name, "group_by_fields entry")
    if ref.label is None:
        return series.metric_type if ref.scope == "metric" else series.resource_type
    labels = series.metric_labels if ref.scope == "metric" else series.resource_labels
    return labels.get(ref.label, "")


def reduce_series(aligned: list[AlignedSeries], aggregation: Any) -> list[AlignedSeries]:
    """Combine aligned series that share the values of group_by_fields."""
    reducer = aggregation.cross_series_reducer
    name = Reducer(reducer).name
    supported = {
        Reducer.REDUCE_SUM,
        Reducer.REDUCE_MEAN,
        Reducer.REDUCE_MIN,
        Reducer.REDUCE_MAX,
        Reducer.REDUCE_COUNT,
        *_PERCENTILE_REDUCERS,
    }
    _require(reducer in supported, f"cross_series_reducer {name} is not supported by localcloud")
    _require(
        aggregation.per_series_aligner != Aligner.ALIGN_NONE,
        "cross_series_reducer needs a per_series_aligner other than ALIGN_NONE",
    )
    fields = list(aggregation.group_by_fields)
    for f in fields:
        _parse_field(f, "group_by_fields entry")

    groups: dict[tuple[str, ...], list[AlignedSeries]] = defaultdict(list)
    for a in aligned:
        groups[tuple(_group_value(a.series, f) for f in fields)].append(a)

    out: list[AlignedSeries] = []
    for key, members in sorted(groups.items()):
        first = members[0]
        vtype = first.value_type
        is_dist = vtype == ValueType.DISTRIBUTION
        if reducer in (Reducer.REDUCE_MIN, Reducer.REDUCE_MAX):
            _require(not is_dist, f"{name} needs numeric values, not distributions")
        metric_labels: dict[str, str] = {}
        resource_labels: dict[str, str] = {}
        for f, v in zip(fields, key, strict=True):
            ref = _parse_field(f, "group_by_fields entry")
            if ref.label is not None:
                (metric_labels if ref.scope == "metric" else resource_labels)[ref.label] = v
        if reducer == Reducer.REDUCE_SUM:
            out_kind, out_type = first.metric_kind, vtype
        elif reducer == Reducer.REDUCE_COUNT:
            out_kind, out_type = Kind.GAUGE, ValueType.INT64
        elif reducer in (Reducer.REDUCE_MIN, Reducer.REDUCE_MAX):
            out_kind, out_type = Kind.GAUGE, vtype
        else:
            out_kind, out_type = Kind.GAUGE, ValueType.DOUBLE

        per_end: dict[float, list[tuple[float, Value]]] = defaultdict(list)
        for m in members:
            for bucket_end, (bucket_start, value) in m.points.items():
                per_end[bucket_end].append((bucket_start, value))
        points: dict[float, tuple[float, Value]] = {}
        for bucket_end, entries in per_end.items():
            values = [v for _, v in entries]
            bucket_start = entries[0][0]
            if reducer == Reducer.REDUCE_SUM:
                value: Value = _numeric_sum(values, vtype)
            elif reducer == Reducer.REDUCE_MEAN:
                value = _mean(values, vtype)
            elif reducer == Reducer.REDUCE_MIN:
                value = min(values)  # type: ignore[type-var]
            elif reducer == Reducer.REDUCE_MAX:
                value = max(values)  # type: ignore[type-var]
            elif reducer == Reducer.REDUCE_COUNT:
                value = len(values)
            else:
                merged = _numeric_sum(values, vtype) if is_dist else None
                raw = merged.values if isinstance(merged, Dist) else [float(v) for v in values]
                value = percentile(raw, _PERCENTILE_REDUCERS[reducer])  # type: ignore[arg-type]
            points[bucket_end] = (bucket_start, value)
        reduced = Series(
            metric_type=first.series.metric_type,
            metric_labels=metric_labels,
            resource_type=first.series.resource_type,
            resource_labels=resource_labels,
            metric_kind=first.series.metric_kind,
            value_type=first.series.value_type,
            unit=first.series.unit,
        )
        unit = "1" if reducer == Reducer.REDUCE_COUNT else first.unit
        out.append(AlignedSeries(reduced, out_kind, out_type, points, unit))
    return out


def to_time_series_pb(aligned: AlignedSeries, full: bool) -> Any:
    s = aligned.series
    pb = mt.TimeSeries.pb()()
    pb.metric.CopyFrom(metric_pb2.Metric(type=s.metric_type, labels=s.metric_labels))
    pb.resource.CopyFrom(
        monitored_resource_pb2.MonitoredResource(type=s.resource_type, labels=s.resource_labels)
    )
    pb.metric_kind = aligned.metric_kind
    pb.value_type = aligned.value_type
    pb.unit = aligned.unit
    if full:
        # Newest first, as the real API returns points.
        for bucket_end in sorted(aligned.points, reverse=True):
            bucket_start, value = aligned.points[bucket_end]
            point = pb.points.add()
            point.interval.end_time.CopyFrom(_ts(bucket_end))
            gauge = aligned.metric_kind == Kind.GAUGE
            point.interval.start_time.CopyFrom(_ts(bucket_end if gauge else bucket_start))
            point.value.CopyFrom(_typed_value(aligned.value_type, value))
    return pb


# --- stores ------------------------------------------------------------------------------


class CustomMetricStore:
    """Custom time series written through CreateTimeSeries, persisted as JSON lines."""

    def __init__(self, path: Path):
        self._path = path
        self._lock = threading.Lock()
        self._series: dict[tuple, Series] = {}
        self._projects: dict[tuple, str] = {}
        if path.exists():
            self._load()

    def _load(self) -> None:
        with self._path.open() as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                    self._add(row, persist=False)
                except (ValueError, KeyError, TypeError):
                    logger.warning("custom metric store %s: skipping a bad line", self._path)

    def _add(self, row: dict, persist: bool) -> None:
        series = Series(
            metric_type=row["metric_type"],
            metric_labels=dict(row["metric_labels"]),
            resource_type=row["resource_type"],
            resource_labels=dict(row["resource_labels"]),
            metric_kind=Kind.Value(row["metric_kind"]),
            value_type=ValueType.Value(row["value_type"]),
            unit=row.get("unit", ""),
        )
        key = (row["project"], *series.key)
        existing = self._series.setdefault(key, series)
        existing.samples.append(Sample(row["start"], row["end"], row["value"]))
        if persist:
            with self._path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")

    def write(self, project: str, ts: Any) -> None:
        """Validate and store one TimeSeries pb with exactly one point."""
        mtype = ts.metric.type
        _require(
            mtype.startswith(CUSTOM_PREFIXES),
            f"metric {mtype!r} cannot be written: only metrics under "
            f"{', '.join(CUSTOM_PREFIXES)} can be written with CreateTimeSeries",
        )
        _require(ts.resource.type != "", f"metric {mtype!r}: resource.type is required")
        _require(len(ts.points) == 1, f"metric {mtype!r}: each TimeSeries needs exactly one point")
        point = ts.points[0]
        kind = ts.metric_kind or Kind.GAUGE
        _require(
            kind in (Kind.GAUGE, Kind.CUMULATIVE),
            f"metric {mtype!r}: metric_kind must be GAUGE or CUMULATIVE for custom metrics",
        )
        which = point.value.WhichOneof("value")
        value_types = {
            "int64_value": ValueType.INT64,
            "double_value": ValueType.DOUBLE,
            "bool_value": ValueType.BOOL,
        }
        _require(
            which in value_types,
            f"metric {mtype!r}: localcloud stores INT64, DOUBLE or BOOL points, not {which}",
        )
        vtype = value_types[which]  # type: ignore[index]
        _require(
            ts.value_type in (ValueType.VALUE_TYPE_UNSPECIFIED, vtype),
            f"metric {mtype!r}: value_type {_type_name(ts.value_type)} does not match the "
            f"point's {which}",
        )
        _require(point.interval.HasField("end_time"), f"metric {mtype!r}: end_time is required")
        end = _seconds(point.interval.end_time)
        start = (
            _seconds(point.interval.start_time) if point.interval.HasField("start_time") else end
        )
        if kind == Kind.GAUGE:
            _require(start == end, f"metric {mtype!r}: a GAUGE point needs start_time == end_time")
        else:
            _require(start < end, f"metric {mtype!r}: a CUMULATIVE point needs start < end")
        row = {
            "project": project,
            "metric_type": mtype,
            "metric_labels": dict(ts.metric.labels),
            "resource_type": ts.resource.type,
            "resource_labels": dict(ts.resource.labels),
            "metric_kind": _kind_name(kind),
            "value_type": _type_name(vtype),
            "unit": ts.unit,
            "start": start,
            "end": end,
            "value": getattr(point.value, which),  # type: ignore[arg-type]
        }
        key = (
            project,
            mtype,
            tuple(sorted(row["metric_labels"].items())),
            ts.resource.type,
            tuple(sorted(row["resource_labels"].items())),
        )
        with self._lock:
            existing = self._series.get(key)
            if existing is not None:
                _require(
                    existing.metric_kind == kind and existing.value_type == vtype,
                    f"metric {mtype!r}: the series is {_kind_name(existing.metric_kind)} "
                    f"{_type_name(existing.value_type)}, the point is {_kind_name(kind)} "
                    f"{_type_name(vtype)}",
                )
                last = max(s.end for s in existing.samples)
                # The real API refuses points older than the newest one of the series.
                _require(
                    end > last,
                    f"metric {mtype!r}: points must be written in order; the series "
                    f"already has a point at {last:.3f}, newer than {end:.3f}",
                )
            self._add(row, persist=True)

    def series(self, project: str, flt: Filter) -> list[Series]:
        with self._lock:
            out = []
            for key, s in self._series.items():
                if key[0] == project and s.metric_type == flt.metric_type and flt.matches(s):
                    out.append(
                        Series(
                            s.metric_type,
                            dict(s.metric_labels),
                            s.resource_type,
                            dict(s.resource_labels),
                            s.metric_kind,
                            s.value_type,
                            s.unit,
                            list(s.samples),
                        )
                    )
            return out


class AlertPolicyStore:
    """Alert policies keyed by name, persisted as one JSON file."""

    def __init__(self, path: Path):
        self._path = path
        self._lock = threading.Lock()
        self._policies: dict[str, Any] = {}
        if path.exists():
            for name, body in json.loads(path.read_text()).items():
                pb = mt.AlertPolicy.pb()()
                json_format.ParseDict(body, pb, ignore_unknown_fields=True)
                self._policies[name] = pb

    def _save(self) -> None:
        data = {name: json_format.MessageToDict(pb) for name, pb in self._policies.items()}
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(self._path)  # atomic, so a crash never leaves half a file

    def create(self, project: str, policy: Any) -> Any:
        pb = mt.AlertPolicy.pb()()
        pb.CopyFrom(policy)
        with self._lock:
            policy_id = str(secrets.randbelow(9 * 10**18) + 10**18)
            pb.name = f"projects/{project}/alertPolicies/{policy_id}"
            for i, condition in enumerate(pb.conditions):
                condition.name = f"{pb.name}/conditions/{policy_id}{i}"
            if not pb.HasField("enabled"):
                pb.enabled.value = True  # the real API enables a policy unless told
            now = _ts(time.time())
            pb.creation_record.mutate_time.CopyFrom(now)
            pb.creation_record.mutated_by = "localcloud"
            pb.mutation_record.CopyFrom(pb.creation_record)
            self._policies[pb.name] = pb
            self._save()
        logger.info("alert policy %s created (%s)", pb.name, pb.display_name)
        return pb

    def get(self, name: str) -> Any:
        with self._lock:
            pb = self._policies.get(name)
        if pb is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"alert policy {name!r} does not exist")
        return pb

    def list(self, project: str) -> list[Any]:
        prefix = f"projects/{project}/alertPolicies/"
        with self._lock:
            return [pb for name, pb in sorted(self._policies.items()) if name.startswith(prefix)]

    def update(self, policy: Any, mask_paths: list[str]) -> Any:
        with self._lock:
            current = self._policies.get(policy.name)
            if current is None:
                raise ApiError(
                    grpc.StatusCode.NOT_FOUND, f"alert policy {policy.name!r} does not exist"
                )
            updated = mt.AlertPolicy.pb()()
            if mask_paths:
                mask = field_mask_pb2.FieldMask(paths=mask_paths)
                _require(
                    mask.IsValidForDescriptor(updated.DESCRIPTOR),
                    f"update_mask {mask_paths} names fields that AlertPolicy does not have",
                )
                updated.CopyFrom(current)
                mask.MergeMessage(
                    policy, updated, replace_message_field=True, replace_repeated_field=True
                )
            else:
                updated.CopyFrom(policy)
                updated.creation_record.CopyFrom(current.creation_record)
            updated.name = current.name
            updated.mutation_record.mutate_time.CopyFrom(_ts(time.time()))
            updated.mutation_record.mutated_by = "localcloud"
            self._policies[updated.name] = updated
            self._save()
        logger.info("alert policy %s updated (fields %s)", updated.name, mask_paths or "all")
        return updated

    def delete(self, name: str) -> None:
        with self._lock:
            if self._policies.pop(name, None) is None:
                raise ApiError(grpc.StatusCode.NOT_FOUND, f"alert policy {name!r} does not exist")
            self._save()
        logger.info("alert policy %s deleted", name)


# --- the service ----------------------------------------------------------------------------

_PROJECT_RE = re.compile(r"^projects/([^/]+)$")
_POLICY_RE = re.compile(r"^projects/([^/]+)/alertPolicies/([^/]+)$")


def _project(name: str) -> str:
    m = _PROJECT_RE.match(name)
    if m is None:
        raise _invalid(f"name {name!r} must be projects/PROJECT_ID")
    return m.group(1)


class MonitoringService:
    """The request handlers; each takes and returns protobuf messages."""

    def __init__(self, request_log: RequestLog, state_dir: Path, location: str = "local"):
        self.request_log = request_log
        self.location = location
        state_dir.mkdir(parents=True, exist_ok=True)
        self.custom = CustomMetricStore(state_dir / TIME_SERIES_FILE)
        self.alerts = AlertPolicyStore(state_dir / ALERT_POLICIES_FILE)

    def run_series(self, project: str, flt: Filter, start: float, end: float) -> list[Series]:
        """Cloud Run series built from the request log: one per revision and status code."""
        is_count = flt.metric_type == REQUEST_COUNT
        records = self.request_log.query(
            start,
            end,
            service=flt.equality("resource", "service_name"),
            revision=flt.equality("resource", "revision_name"),
            project=project,
        )
        by_key: dict[tuple[str, str, int], Series] = {}
        for r in records:
            key = (r.service, r.revision, r.status)
            series = by_key.get(key)
            if series is None:
                series = Series(
                    metric_type=flt.metric_type,
                    metric_labels={
                        "response_code": str(r.status),
                        "response_code_class": f"{r.status // 100}xx",
                    },
                    resource_type=RUN_RESOURCE_TYPE,
                    resource_labels={
                        "project_id": project,
                        "location": self.location,
                        "service_name": r.service,
                        "revision_name": r.revision,
                        "configuration_name": r.service,
                    },
                    metric_kind=Kind.DELTA,
                    value_type=ValueType.INT64 if is_count else ValueType.DISTRIBUTION,
                    unit="1" if is_count else "ms",
                )
                by_key[key] = series
            series.samples.append(
                Sample(r.timestamp, r.timestamp, 1 if is_count else float(r.latency_ms))
            )
        return [s for s in by_key.values() if flt.matches(s)]

    def list_time_series(self, req: Any) -> Any:
        project = _project(req.name)
        flt = parse_filter(req.filter)
        _require(req.order_by == "", "order_by is unsupported and must be left blank")
        _require(req.interval.HasField("end_time"), "interval.end_time is required")
        end = _seconds(req.interval.end_time)
        start = _seconds(req.interval.start_time) if req.interval.HasField("start_time") else end
        _require(start <= end, "interval.start_time must not be after interval.end_time")
        _require(
            not req.HasField("secondary_aggregation"),
            "secondary_aggregation is not supported by localcloud",
        )

        if flt.metric_type in (REQUEST_COUNT, REQUEST_LATENCIES):
            series = self.run_series(project, flt, start, end)
        elif flt.metric_type.startswith(CUSTOM_PREFIXES):
            series = self.custom.series(project, flt)
        else:
            raise _invalid(
                f"metric type {flt.metric_type!r} is not served by localcloud: it has "
                f"{REQUEST_COUNT}, {REQUEST_LATENCIES} and custom metrics"
            )

        agg = req.aggregation
        aligner = agg.per_series_aligner
        reducer = agg.cross_series_reducer
        if aligner == Aligner.ALIGN_NONE:
            _require(
                reducer == Reducer.REDUCE_NONE,
                "cross_series_reducer needs a per_series_aligner other than ALIGN_NONE",
            )
            aligned = [_raw(s, start, end) for s in series]
        else:
            aligned = [align(s, agg, start, end) for s in series]
        if reducer != Reducer.REDUCE_NONE:
            aligned = reduce_series(aligned, agg)
        aligned = [a for a in aligned if a.points]
        aligned.sort(key=lambda a: a.series.key)

        full = req.view == mt.ListTimeSeriesRequest.TimeSeriesView.FULL
        offset = _page_offset(req.page_token)
        size = req.page_size if req.page_size > 0 else len(aligned) or 1
        page = aligned[offset : offset + size]
        resp = mt.ListTimeSeriesResponse.pb()()
        for a in page:
            resp.time_series.append(to_time_series_pb(a, full))
        if offset + size < len(aligned):
            resp.next_page_token = str(offset + size)
        units = {a.unit for a in page}
        resp.unit = units.pop() if len(units) == 1 else ""
        logger.debug("ListTimeSeries %s %r: %d series", req.name, req.filter, len(resp.time_series))
        return resp

    def create_time_series(self, req: Any) -> Any:
        project = _project(req.name)
        _require(len(req.time_series) > 0, "time_series must not be empty")
        _require(
            len(req.time_series) <= MAX_SERIES_PER_CREATE,
            f"at most {MAX_SERIES_PER_CREATE} time series per CreateTimeSeries request",
        )
        for ts in req.time_series:
            self.custom.write(project, ts)
        logger.debug("CreateTimeSeries %s: %d series", req.name, len(req.time_series))
        return empty_pb2.Empty()

    def create_alert_policy(self, req: Any) -> Any:
        return self.alerts.create(_project(req.name), req.alert_policy)

    def get_alert_policy(self, req: Any) -> Any:
        _require(_POLICY_RE.match(req.name) is not None, f"bad alert policy name {req.name!r}")
        return self.alerts.get(req.name)

    def list_alert_policies(self, req: Any) -> Any:
        policies = self.alerts.list(_project(req.name))
        if req.filter:
            m = re.fullmatch(r'\s*display_name\s*=\s*"((?:[^"\\]|\\.)*)"\s*', req.filter)
            _require(
                m is not None,
                f"unsupported alert policy filter {req.filter!r}; localcloud supports "
                f'display_name = "..."',
            )
            wanted = _unquote(f'"{m.group(1)}"')  # type: ignore[union-attr]
            policies = [p for p in policies if p.display_name == wanted]
        offset = _page_offset(req.page_token)
        size = req.page_size if req.page_size > 0 else len(policies) or 1
        resp = mt.ListAlertPoliciesResponse.pb()()
        resp.alert_policies.extend(policies[offset : offset + size])
        resp.total_size = len(policies)
        if offset + size < len(policies):
            resp.next_page_token = str(offset + size)
        return resp

    def update_alert_policy(self, req: Any) -> Any:
        name = req.alert_policy.name
        _require(_POLICY_RE.match(name) is not None, f"bad alert policy name {name!r}")
        return self.alerts.update(req.alert_policy, list(req.update_mask.paths))

    def delete_alert_policy(self, req: Any) -> Any:
        _require(_POLICY_RE.match(req.name) is not None, f"bad alert policy name {req.name!r}")
        self.alerts.delete(req.name)
        return empty_pb2.Empty()


def _page_offset(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit():
        raise _invalid(f"page_token {token!r} was not returned by this server")
    return int(token)


def _handler(fn: Callable[[Any], Any], req_type: Any, resp_type: Any) -> grpc.RpcMethodHandler:
    """Wrap a handler: proto-plus (de)serialisation, ApiError -> status code."""

    def call(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            result = fn(req_type.pb(request))
        except ApiError as exc:
            logger.info("%s: %s %s", fn.__name__, exc.code.name, exc.message)
            context.abort(exc.code, exc.message)
        except Exception:
            logger.exception("%s failed", fn.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"localcloud {fn.__name__} failed")
        if resp_type is None:
            return result
        return resp_type.wrap(result)

    serializer = resp_type.serialize if resp_type is not None else empty_pb2.Empty.SerializeToString
    return grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=req_type.deserialize, response_serializer=serializer
    )


def serve(
    port: int, request_log: RequestLog, state_dir: Path, location: str = "local"
) -> tuple[grpc.Server, int]:
    """Start the Monitoring server on 127.0.0.1:port (0 picks a free port).

    `location` is the value of the `location` resource label of Cloud Run series (the
    request log does not record one). Returns the started server and its bound port.
    """
    service = MonitoringService(request_log, Path(state_dir), location)
    metric_handlers = {
        "ListTimeSeries": _handler(
            service.list_time_series, mt.ListTimeSeriesRequest, mt.ListTimeSeriesResponse
        ),
        "CreateTimeSeries": _handler(service.create_time_series, mt.CreateTimeSeriesRequest, None),
    }
    alert_handlers = {
        "CreateAlertPolicy": _handler(
            service.create_alert_policy, mt.CreateAlertPolicyRequest, mt.AlertPolicy
        ),
        "GetAlertPolicy": _handler(
            service.get_alert_policy, mt.GetAlertPolicyRequest, mt.AlertPolicy
        ),
        "ListAlertPolicies": _handler(
            service.list_alert_policies,
            mt.ListAlertPoliciesRequest,
            mt.ListAlertPoliciesResponse,
        ),
        "UpdateAlertPolicy": _handler(
            service.update_alert_policy, mt.UpdateAlertPolicyRequest, mt.AlertPolicy
        ),
        "DeleteAlertPolicy": _handler(
            service.delete_alert_policy, mt.DeleteAlertPolicyRequest, None
        ),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="monitoring"))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "google.monitoring.v3.MetricService", metric_handlers
            ),
            grpc.method_handlers_generic_handler(
                "google.monitoring.v3.AlertPolicyService", alert_handlers
            ),
        )
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound == 0:
        raise OSError(f"monitoring server: cannot bind 127.0.0.1:{port}")
    server.start()
    logger.info("monitoring server listening on 127.0.0.1:%s (state %s)", bound, state_dir)
    return server, bound
