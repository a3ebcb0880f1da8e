"""Agent metrics: batch validation, storage with per-minute rollups, and queries.

A batch is validated whole before anything is stored: one bad sample rejects the batch,
naming its index and field ("samples.3.value"). Samples go in with one bulk insert; the
rollup table is updated in the same transaction with one INSERT ... ON CONFLICT.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from core.actors import Actor
from core.errors import PermissionRefused, ValidationFailed
from core.roles import METRICS_WRITE
from monitoring.models import MetricRollup, MetricSample

logger = logging.getLogger(__name__)

MAX_BATCH = 5000
MAX_NAME = 200
MAX_LABELS = 20
MAX_LABEL_LENGTH = 200
# Errors reported per batch: enough to fix a generator, short enough to read.
MAX_ERRORS = 20
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:/-")


@dataclass(frozen=True)
class Ingested:
    stored: int
    rollups: int


def _timestamp(value, now: datetime) -> datetime | str:
    """A datetime, or the error message."""
    if isinstance(value, bool):
        return "Expected an ISO 8601 time or epoch seconds."
    if isinstance(value, int | float):
        if not math.isfinite(value):
            return "Expected a finite number of epoch seconds."
        try:
            when = datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return "Epoch seconds out of range."
    elif isinstance(value, str):
        try:
            when = parse_datetime(value)
        except ValueError:
            when = None
        if when is None:
            return "Expected an ISO 8601 time (2026-01-31T12:00:00Z) or epoch seconds."
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    else:
        return "Expected an ISO 8601 time or epoch seconds."
    max_future = timedelta(seconds=getattr(settings, "MONITORING_MAX_FUTURE_S", 300))
    if when > now + max_future:
        return "In the future by more than 5 minutes."
    retention = timedelta(days=getattr(settings, "MONITORING_SAMPLE_RETENTION_DAYS", 8))
    if when < now - retention:
        return f"Older than the retention of {retention.days} days."
    return when


def validate_batch(raw) -> list[tuple[str, dict, float, datetime]]:
    """(name, labels, value, timestamp) per sample, or ValidationFailed naming every bad
    field (up to MAX_ERRORS) as samples.<index>.<field>."""
    if isinstance(raw, dict):
        raw = raw.get("samples")
    if not isinstance(raw, list):
        raise ValidationFailed(
            'Expected {"samples": [...]}.', fields={"samples": ["Expected a list of samples."]}
        )
    if not raw:
        raise ValidationFailed("No samples.", fields={"samples": ["Expected at least one."]})
    if len(raw) > MAX_BATCH:
        raise ValidationFailed(
            f"Too many samples: {len(raw)}.",
            fields={"samples": [f"At most {MAX_BATCH} samples per batch; got {len(raw)}."]},
        )
    now = timezone.now()
    errors: dict[str, list[str]] = {}
    out = []
    for i, sample in enumerate(raw):
        if len(errors) >= MAX_ERRORS:
            break
        prefix = f"samples.{i}"
        if not isinstance(sample, dict):
            errors[prefix] = ["Expected an object with name, labels, value, timestamp."]
            continue
        unknown = set(sample) - {"name", "labels", "value", "timestamp"}
        for key in sorted(unknown):
            errors[f"{prefix}.{key}"] = ["Unknown field."]
        name = sample.get("name")
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            errors[f"{prefix}.name"] = [f"Expected a metric name of 1 to {MAX_NAME} characters."]
        elif not set(name) <= _NAME_CHARS:
            errors[f"{prefix}.name"] = ["Letters, digits and _ . : / - only."]
        labels = sample.get("labels", {})
        if labels is None:
            labels = {}
        if not isinstance(labels, dict):
            errors[f"{prefix}.labels"] = ["Expected an object of string values."]
        elif len(labels) > MAX_LABELS:
            errors[f"{prefix}.labels"] = [f"At most {MAX_LABELS} labels."]
        else:
            for key, value in labels.items():
                if not isinstance(value, str) or len(value) > MAX_LABEL_LENGTH or not key:
                    errors[f"{prefix}.labels.{key}"] = [
                        f"Expected a string of at most {MAX_LABEL_LENGTH} characters."
                    ]
        value = sample.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors[f"{prefix}.value"] = ["Expected a number."]
        elif not math.isfinite(value):
            errors[f"{prefix}.value"] = ["Expected a finite number."]
        if "timestamp" not in sample:
            errors[f"{prefix}.timestamp"] = ["This field is required."]
            continue
        when = _timestamp(sample["timestamp"], now)
        if isinstance(when, str):
            errors[f"{prefix}.timestamp"] = [when]
            continue
        if not any(k.startswith(prefix + ".") or k == prefix for k in errors):
            out.append((name, labels, float(value), when))
    if errors:
        first = next(iter(errors))
        raise ValidationFailed(
            f"Invalid sample(s), none stored; first: {first}: {errors[first][0]}", fields=errors
        )
    return out


def _labels_key(labels: dict) -> str:
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


def ingest(actor: Actor, raw) -> Ingested:
    """Validates and stores a batch: one bulk insert of samples, one upsert of rollups.
    Batches are data, not changes: they are logged, not audited (they would drown the log)."""
    if not actor.allows(METRICS_WRITE):
        raise PermissionRefused(actor.missing_scope_message(METRICS_WRITE))
    samples = validate_batch(raw)

    rollups: dict[tuple[str, str, datetime], list] = {}
    for name, labels, value, when in samples:
        key = (name, _labels_key(labels), when.replace(second=0, microsecond=0))
        agg = rollups.get(key)
        if agg is None:
            rollups[key] = [labels, 1, value, value, value]
        else:
            agg[1] += 1
            agg[2] += value
            agg[3] = min(agg[3], value)
            agg[4] = max(agg[4], value)

    with transaction.atomic():
        MetricSample.objects.bulk_create(
            [MetricSample(name=n, labels=lab, value=v, timestamp=t) for n, lab, v, t in samples],
            batch_size=MAX_BATCH,
        )
        _upsert_rollups(rollups)
    logger.info(
        "metrics: %s sample(s) in %s rollup(s) stored from %s",
        len(samples),
        len(rollups),
        actor.label,
    )
    return Ingested(stored=len(samples), rollups=len(rollups))


def _upsert_rollups(rollups: dict) -> None:
    """One statement; rows are distinct by key (grouped above), as ON CONFLICT requires."""
    if not rollups:
        return
    table = MetricRollup._meta.db_table
    rows = []
    params: list = []
    for (name, labels_key, minute), (_labels, count, total, low, high) in rollups.items():
        rows.append("(%s, %s, %s::jsonb, %s, %s, %s, %s, %s)")
        params += [name, labels_key, labels_key, minute, count, total, low, high]
    sql = (
        f"INSERT INTO {table} (name, labels_key, labels, minute, count, sum, min, max) "
        f"VALUES {', '.join(rows)} "
        "ON CONFLICT (name, labels_key, minute) DO UPDATE SET "
        f"count = {table}.count + EXCLUDED.count, sum = {table}.sum + EXCLUDED.sum, "
        f"min = LEAST({table}.min, EXCLUDED.min), max = GREATEST({table}.max, EXCLUDED.max)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def query_samples(
    name: str,
    labels: dict | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
):
    qs = MetricSample.objects.filter(name=name)
    if labels:
        qs = qs.filter(labels__contains=labels)
    if since:
        qs = qs.filter(timestamp__gte=since)
    if until:
        qs = qs.filter(timestamp__lt=until)
    return qs.order_by("-timestamp", "-id")


def query_rollups(
    name: str,
    labels: dict | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
):
    qs = MetricRollup.objects.filter(name=name)
    if labels:
        qs = qs.filter(labels__contains=labels)
    if since:
        qs = qs.filter(minute__gte=since)
    if until:
        qs = qs.filter(minute__lt=until)
    return qs.order_by("minute", "labels_key")


def bucketed(
    name: str, labels: dict, since: datetime, bucket_s: int, until: datetime | None = None
) -> list[tuple[datetime, float]]:
    """Mean per bucket of `bucket_s` seconds from the rollups (one query), for charts."""
    table = MetricRollup._meta.db_table
    until = until or timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT to_timestamp(floor(extract(epoch FROM minute) / %s) * %s) AS bucket, "
            f"sum(sum) / nullif(sum(count), 0) FROM {table} "
            "WHERE name = %s AND labels @> %s::jsonb AND minute >= %s AND minute < %s "
            "GROUP BY bucket ORDER BY bucket",
            [bucket_s, bucket_s, name, json.dumps(labels), since, until],
        )
        return [(row[0], row[1]) for row in cursor.fetchall() if row[1] is not None]


def stored_value(name: str, labels: dict, window_s: int) -> float | None:
    """The mean of a stored metric over the last window_s, for alert policies."""
    since = timezone.now() - timedelta(seconds=window_s)
    table = MetricRollup._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT sum(sum) / nullif(sum(count), 0) FROM {table} "
            "WHERE name = %s AND labels @> %s::jsonb AND minute >= %s",
            [name, json.dumps(labels), since.replace(second=0, microsecond=0)],
        )
        row = cursor.fetchone()
    return row[0] if row else None
