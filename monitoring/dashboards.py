"""What the dashboards show, assembled in a fixed number of queries however many services
there are. Platform metrics come from the agent layer's cached, short-timeout reads, through the
reader it registers with releases.platform (monitoring never imports agents)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, Q
from django.utils import timezone

from environments.models import Environment
from monitoring import metrics
from monitoring.models import HealthCheck, HealthCheckResult, Incident
from releases import platform
from releases.models import Deployment, Service

logger = logging.getLogger(__name__)

ERROR_RATE_RED = 0.05
ERROR_RATE_AMBER = 0.01
P95_RED_MS = 1000
P95_AMBER_MS = 300
RANGES = {"1h": (3600, 60), "6h": (21600, 300), "24h": (86400, 900), "7d": (604800, 3600)}


def _health():
    return platform.reader()


def platform_overview(environment: Environment) -> dict:
    try:
        return _health().environment_overview(environment)
    except Exception:  # a page shows "no data" rather than a 500
        logger.warning("environment %s: overview metrics failed", environment.name, exc_info=True)
        return {"ok": False, "error": "unavailable", "services": {}}


@dataclass
class Cell:
    service: Service
    environment: Environment
    health: str = "unknown"  # healthy, degraded, down, unknown
    health_detail: str = ""
    release: str = ""
    deployment_id: int | None = None
    traffic: str = ""
    active: Deployment | None = None
    incident: Incident | None = None
    request_rate: float | None = None
    error_rate: float | None = None
    p95_ms: float | None = None
    spark_points: str = ""
    has_metrics: bool = False
    level: str = "ok"  # ok, warn, bad: how the cell is coloured

    @property
    def error_level(self) -> str:
        if self.error_rate is None:
            return ""
        if self.error_rate >= ERROR_RATE_RED:
            return "bad"
        return "warn" if self.error_rate >= ERROR_RATE_AMBER else "ok"

    @property
    def latency_level(self) -> str:
        if self.p95_ms is None:
            return ""
        if self.p95_ms >= P95_RED_MS:
            return "bad"
        return "warn" if self.p95_ms >= P95_AMBER_MS else "ok"


@dataclass
class Overview:
    environments: list[Environment]
    rows: list[tuple[Service, list[Cell]]]
    platform_errors: dict[str, str] = field(default_factory=dict)
    open_incidents: int = 0


def spark_points(values: list[float], width: int = 100, height: int = 20) -> str:
    """An SVG polyline's points for a sparkline (drawn without script or inline style)."""
    if not values:
        return ""
    top = max(values) or 1.0
    step = width / max(len(values) - 1, 1)
    return " ".join(
        f"{i * step:.1f},{height - (v / top) * (height - 2) - 1:.1f}" for i, v in enumerate(values)
    )


def overview(services=None) -> Overview:
    """Services x environments: health, current release, traffic, error rate, p95 latency and a
    request-rate sparkline. Queries: services, environments, current and active deployments,
    checks, open incidents; plus cached platform reads (one set per environment)."""
    services = list(services if services is not None else Service.objects.all())
    environments = list(Environment.objects.all())

    current: dict[tuple[int, int], Deployment] = {}
    latest_ok = (
        Deployment.objects.filter(status=Deployment.Status.SUCCEEDED)
        .order_by("service_id", "environment_id", "-finished_at", "-id")
        .distinct("service_id", "environment_id")
        .select_related("release")
    )
    for d in latest_ok:
        current[(d.service_id, d.environment_id)] = d
    active = {
        (d.service_id, d.environment_id): d
        for d in Deployment.objects.filter(status__in=Deployment.ACTIVE).select_related("release")
    }
    checks: dict[tuple[int, int], list[HealthCheck]] = {}
    for c in HealthCheck.objects.filter(enabled=True).only(
        "service_id", "environment_id", "status", "path", "consecutive_failures"
    ):
        checks.setdefault((c.service_id, c.environment_id), []).append(c)
    incidents: dict[tuple[int, int], Incident] = {}
    through_s = Incident.services.through
    through_e = Incident.environments.through
    open_ids = list(Incident.objects.filter(state__in=Incident.OPEN).values_list("pk", flat=True))
    if open_ids:
        by_incident = {i.pk: i for i in Incident.objects.filter(pk__in=open_ids)}
        svc_links = list(
            through_s.objects.filter(incident_id__in=open_ids).values_list(
                "incident_id", "service_id"
            )
        )
        env_links = list(
            through_e.objects.filter(incident_id__in=open_ids).values_list(
                "incident_id", "environment_id"
            )
        )
        envs_of: dict[int, list[int]] = {}
        for incident_id, env_id in env_links:
            envs_of.setdefault(incident_id, []).append(env_id)
        for incident_id, service_id in svc_links:
            for env_id in envs_of.get(incident_id, []):
                known = incidents.get((service_id, env_id))
                mine = by_incident[incident_id]
                if known is None or mine.severity < known.severity:
                    incidents[(service_id, env_id)] = mine

    platform = {env.pk: platform_overview(env) for env in environments}
    result = Overview(environments=environments, rows=[], open_incidents=len(open_ids))
    for env in environments:
        if not platform[env.pk]["ok"]:
            result.platform_errors[env.name] = platform[env.pk].get("error", "unavailable")

    for service in services:
        cells = []
        for env in environments:
            key = (service.pk, env.pk)
            cell = Cell(service=service, environment=env)
            d = current.get(key)
            if d is not None:
                cell.release = d.release.version
                cell.deployment_id = d.pk
                cell.traffic = f"100% {d.release.version}"
            a = active.get(key)
            if a is not None:
                cell.active = a
                if a.new_weight and d is not None:
                    cell.traffic = (
                        f"{a.new_weight}% {a.release.version} / {100 - a.new_weight}% "
                        f"{d.release.version}"
                    )
                elif a.new_weight:
                    cell.traffic = f"{a.new_weight}% {a.release.version}"
            _health_of(cell, checks.get(key, []))
            cell.incident = incidents.get(key)
            numbers = platform[env.pk]["services"].get(service.name)
            if numbers:
                cell.has_metrics = True
                cell.request_rate = numbers.get("request_rate")
                cell.error_rate = numbers.get("error_rate")
                cell.p95_ms = numbers.get("p95_ms")
                cell.spark_points = spark_points(numbers.get("spark", []))
            levels = {cell.error_level, cell.latency_level}
            if (
                cell.health == "down"
                or "bad" in levels
                or (cell.incident and cell.incident.blocks_deployments)
            ):
                cell.level = "bad"
            elif cell.health == "degraded" or "warn" in levels or cell.incident:
                cell.level = "warn"
            cells.append(cell)
        result.rows.append((service, cells))
    return result


def _health_of(cell: Cell, checks: list[HealthCheck]) -> None:
    if not checks:
        return
    down = [c for c in checks if c.status == HealthCheck.Status.DOWN]
    failing = [c for c in checks if c.status == HealthCheck.Status.FAILING]
    unknown = [c for c in checks if c.status == HealthCheck.Status.UNKNOWN]
    if down and len(down) == len(checks):
        cell.health = "down"
    elif down or failing:
        cell.health = "degraded"
    elif len(unknown) == len(checks):
        cell.health = "unknown"
    else:
        cell.health = "healthy"
    cell.health_detail = ", ".join(
        f"{c.path}: {c.status}" + (f" ×{c.consecutive_failures}" if c.consecutive_failures else "")
        for c in checks
    )


# The service health page


def service_page(service: Service, environment: Environment, range_key: str) -> dict:
    """Charts data (platform series per revision, agent metrics from rollups), deployment
    markers, and the health-check history bucketed over the range."""
    window_s, step = RANGES[range_key]
    now = timezone.now()
    since = now - timedelta(seconds=window_s)
    try:
        series = _health().service_series(environment, service.name, range_key)
    except Exception:
        logger.warning("service %s: series failed", service.name, exc_info=True)
        series = {"ok": False, "error": "unavailable"}
    markers = [
        {
            "at": d.created_at.timestamp() * 1000,
            "label": f"#{d.pk} {'rollback ' if d.is_rollback else ''}{d.release.version}",
            "status": d.status,
        }
        for d in Deployment.objects.filter(
            service=service, environment=environment, created_at__gte=since
        ).select_related("release")[:200]
    ]
    agent = _agent_series(service, environment, since, step)
    checks = list(HealthCheck.objects.filter(service=service, environment=environment))
    history = _check_history(checks, since, step)
    recent = list(
        HealthCheckResult.objects.filter(health_check__in=checks).select_related("health_check")[
            :20
        ]
    )
    return {
        "series": series,
        "markers": markers,
        "agent": agent,
        "checks": checks,
        "history": history,
        "recent_results": recent,
        "since": since,
        "step": step,
    }


def _agent_series(service: Service, environment: Environment, since: datetime, step: int):
    """Every agent metric labelled with this service and environment, bucketed (two queries
    per metric name, at most 6 names)."""
    labels = {"service": service.name, "environment": environment.name}
    names = list(
        # Names seen in the last hour: cheap to find, and what an agent posts now.
        metrics.MetricRollup.objects.filter(
            minute__gte=timezone.now() - timedelta(hours=1), labels__contains=labels
        )
        .values_list("name", flat=True)
        .distinct()[:6]
    )
    return {
        name: [
            [at.timestamp() * 1000, value]
            for at, value in metrics.bucketed(name, labels, since, step)
        ]
        for name in sorted(names)
    }


def _check_history(checks: list[HealthCheck], since: datetime, step: int) -> dict:
    """Per check: [bucket_ms, ok count, failed count] over the range (one query)."""
    if not checks:
        return {}
    from django.db.models import DateTimeField, Func

    bucket = Func(
        Func("checked_at", function="extract", template="extract(epoch FROM %(expressions)s)"),
        function="",
        template=f"to_timestamp(floor(%(expressions)s / {int(step)}) * {int(step)})",
        output_field=DateTimeField(),
    )
    rows = (
        HealthCheckResult.objects.filter(health_check__in=checks, checked_at__gte=since)
        .annotate(bucket=bucket)
        .values("health_check_id", "bucket")
        .annotate(n_ok=Count("pk", filter=Q(ok=True)), n_failed=Count("pk", filter=Q(ok=False)))
        .order_by("health_check_id", "bucket")
    )
    history: dict[int, list] = {}
    for row in rows:
        history.setdefault(row["health_check_id"], []).append(
            [row["bucket"].timestamp() * 1000, row["n_ok"], row["n_failed"]]
        )
    return {str(c.pk): {"label": c.path, "points": history.get(c.pk, [])} for c in checks}


def cloud_dashboard(service: Service) -> dict:
    """A Cloud Monitoring dashboard (mosaic layout) with request, error and latency charts of
    the service, ready for `gcloud monitoring dashboards create --config-from-file`."""
    base = (
        f'resource.type = "cloud_run_revision" AND resource.labels.service_name = "{service.name}"'
    )

    def chart(title: str, metric: str, extra: str, aligner: str, reducer: str, group: list):
        return {
            "title": title,
            "xyChart": {
                "chartOptions": {"mode": "COLOR"},
                "dataSets": [
                    {
                        "plotType": "LINE",
                        "targetAxis": "Y1",
                        "timeSeriesQuery": {
                            "timeSeriesFilter": {
                                "filter": f'metric.type = "{metric}" AND {base}{extra}',
                                "aggregation": {
                                    "alignmentPeriod": "60s",
                                    "perSeriesAligner": aligner,
                                    "crossSeriesReducer": reducer,
                                    "groupByFields": group,
                                },
                            }
                        },
                    }
                ],
            },
        }

    rev = ["resource.label.revision_name"]
    count = "run.googleapis.com/request_count"
    latency = "run.googleapis.com/request_latencies"
    tiles = [
        chart("Request rate (req/s)", count, "", "ALIGN_RATE", "REDUCE_SUM", rev),
        chart(
            "5xx rate (req/s)",
            count,
            ' AND metric.labels.response_code_class = "5xx"',
            "ALIGN_RATE",
            "REDUCE_SUM",
            rev,
        ),
        chart("Latency p50 (ms)", latency, "", "ALIGN_DELTA", "REDUCE_PERCENTILE_50", rev),
        chart("Latency p95 (ms)", latency, "", "ALIGN_DELTA", "REDUCE_PERCENTILE_95", rev),
        chart("Latency p99 (ms)", latency, "", "ALIGN_DELTA", "REDUCE_PERCENTILE_99", rev),
    ]
    return {
        "displayName": f"{service.name} (Ops Portal)",
        "mosaicLayout": {
            "columns": 12,
            "tiles": [
                {"xPos": (i % 2) * 6, "yPos": (i // 2) * 4, "width": 6, "height": 4, "widget": t}
                for i, t in enumerate(tiles)
            ],
        },
        "labels": {"ops-portal": ""},
    }


def service_logs(environment: Environment, service: str, **kwargs) -> dict:
    try:
        return _health().revision_logs(environment, service, **kwargs)
    except Exception as exc:
        logger.warning("service %s: logs failed", service, exc_info=True)
        return {"ok": False, "error": type(exc).__name__, "entries": []}


# The deployment page's chart: the new against the stable revision during a rollout

REVISION_ROLES = ("new", "stable")


def revisions_chart(
    service: Service,
    environment: Environment,
    revisions: list[str],
    since: datetime,
    until: datetime,
) -> dict:
    """Error rate and p95 latency per revision, keyed "new <revision>" and "stable <revision>"
    (in the order given) for the chart's legend; has_data is False when the platform answered
    nothing or had no request of these revisions in the window."""
    try:
        series = _health().revision_series(environment, service.name, revisions, since, until)
    except Exception:  # the chart shows "no data" rather than a 500
        logger.warning("service %s: revision series failed", service.name, exc_info=True)
        series = {"ok": False, "error": "unavailable"}
    labels = {
        rev: f"{REVISION_ROLES[i]} {rev}" if i < len(REVISION_ROLES) else rev
        for i, rev in enumerate(revisions)
    }

    def by_label(points: dict) -> dict:
        return {labels[rev]: points[rev] for rev in revisions if points.get(rev)}

    error_rate = by_label(series.get("error_rate", {})) if series["ok"] else {}
    latency = by_label(series.get("latency_p95", {})) if series["ok"] else {}
    return {
        "ok": series["ok"],
        "error": series.get("error", ""),
        "has_data": bool(error_rate or latency),
        "requests": {labels[r]: n for r, n in series.get("requests", {}).items() if r in labels},
        "chart_data": {
            "series": {"error_rate": error_rate, "latency": {"p95": latency}},
            "markers": [],
            "since": since.timestamp() * 1000,
            "until": until.timestamp() * 1000,
        },
    }
