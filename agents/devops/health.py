"""Health checks, alert evaluation and incident handling: the agent side of monitoring.

The monitoring app keeps the record (checks, results, policies, incidents); this module
reaches the outside world for it: it probes services over HTTP, reads Cloud Monitoring
through MetricsReader, syncs alert policies into Cloud Monitoring, reads revision logs, and
rolls back what an incident points at. Monitoring never imports this module; it enqueues its
jobs by dotted name, and its pages read the platform through the reader the agents app
registers with releases.platform (agents/devops/readers.py).

Platform reads for pages use short timeouts and no retries, and are cached for a few
seconds: an unreachable platform shows "no data" quickly instead of a slow page.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import requests
from django.core.cache import cache
from django.db.models import Q
from django.utils import timezone
from google.cloud import monitoring_v3
from google.protobuf import duration_pb2

from agents.devops import cd_pipeline
from agents.devops.cloud_run import CloudRunAdapter
from agents.devops.monitoring import (
    REQUEST_COUNT,
    REQUEST_LATENCIES,
    Aligner,
    MetricsReader,
    Reducer,
    _quote,
    _timestamp,
    run_filter,
)
from agents.devops.platform import GOOGLE, PlatformConfig, alert_policy_client
from core import jobs
from core.actors import Actor
from core.errors import DomainError
from core.jobs import JobContext
from environments.models import Environment
from monitoring import metrics as stored_metrics
from monitoring import services as monitoring_services
from monitoring.models import AlertPolicy, HealthCheck
from releases.models import Deployment, Service

logger = logging.getLogger(__name__)

PAGE_TIMEOUT_S = 2.0
CACHE_S = 10
# After a failed platform read, pages skip that platform for this long.
FAILURE_CACHE_S = 30
RECENT_DEPLOYMENT = timedelta(minutes=30)
RENOTIFY_AFTER = timedelta(minutes=15)
_PERCENTILES = {
    50: Reducer.REDUCE_PERCENTILE_50,
    95: Reducer.REDUCE_PERCENTILE_95,
    99: Reducer.REDUCE_PERCENTILE_99,
}


def _config(environment: Environment) -> PlatformConfig:
    return PlatformConfig(**environment.platform_settings())


def _reader(environment: Environment) -> MetricsReader:
    return cd_pipeline.platform_for_environment(environment)[1]


_quick_adapters: dict[PlatformConfig, CloudRunAdapter] = {}


def _quick_adapter(environment: Environment) -> CloudRunAdapter:
    """A Cloud Run adapter that retries for PAGE_TIMEOUT_S only (the engine's retries for a
    minute): pages and probes answer fast when the platform is down."""
    config = _config(environment)
    if config not in _quick_adapters:
        _quick_adapters[config] = CloudRunAdapter(config, retry_timeout_s=PAGE_TIMEOUT_S)
    return _quick_adapters[config]


# --- Probing health checks ------------------------------------------------------------------


@dataclass
class ProbeResult:
    check: int
    ok: bool
    status_code: int | None
    latency_ms: float | None
    error: str
    url: str


def _probe_url(check: HealthCheck) -> str:
    if check.base_url:
        return check.base_url.rstrip("/") + check.path
    state = _quick_adapter(check.environment).get_service_state(check.service.name)
    if not state.uri:
        raise RuntimeError(f"service {check.service.name} has no URL in {check.environment.name}")
    return state.uri.rstrip("/") + check.path


def probe(check: HealthCheck) -> ProbeResult:
    """One HTTP GET of the check's URL; ok when it answers the expected status in time."""
    started = time.monotonic()
    url = ""
    try:
        url = _probe_url(check)
        response = requests.get(url, timeout=check.timeout_s, allow_redirects=False)
    except Exception as exc:  # refused, timed out, or the service is not deployed there
        error = f"{type(exc).__name__}: {exc}"[:300]
        return ProbeResult(check.pk, False, None, None, error, url)
    latency = (time.monotonic() - started) * 1000
    ok = response.status_code == check.expected_status
    error = "" if ok else f"HTTP {response.status_code}, expected {check.expected_status}"
    return ProbeResult(check.pk, ok, response.status_code, latency, error, url)


def run_checks(checks) -> list[ProbeResult]:
    results = []
    for check in checks:
        result = probe(check)
        monitoring_services.record_health_result(
            check,
            result.ok,
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            error=result.error,
            url=result.url,
        )
        if not result.ok:
            logger.warning("health check %s: %s failed: %s", check.pk, result.url, result.error)
        results.append(result)
    return results


def run_checks_job(ctx: JobContext, checks: list[int]) -> dict:
    """The clock's job: runs the checks that were due."""
    found = HealthCheck.objects.filter(pk__in=checks).select_related("service", "environment")
    results = run_checks(found)
    failed = [r.check for r in results if not r.ok]
    ctx.log.info("health checks: %s run, %s failed %s", len(results), len(failed), failed)
    return {"run": len(results), "failed": failed}


# --- The agent's monitor_health and handle_incidents ----------------------------------------


def monitor_health(environment: str | None = None, error_rate_limit: float = 0.05) -> dict:
    """Runs every enabled check (of one environment, or all) now and summarises each service:
    healthy, degraded or down, with the evidence."""
    checks = HealthCheck.objects.filter(enabled=True).select_related("service", "environment")
    if environment:
        checks = checks.filter(environment__name=environment)
    checks = list(checks)
    results = {r.check: r for r in run_checks(checks)}

    summary: dict[str, dict[str, dict]] = {}
    for check in checks:
        r = results[check.pk]
        cell = summary.setdefault(check.service.name, {}).setdefault(
            check.environment.name, {"checks": 0, "failed": 0, "evidence": []}
        )
        cell["checks"] += 1
        if r.ok:
            cell["evidence"].append(f"{check.path}: HTTP {r.status_code} in {r.latency_ms:.0f} ms")
        else:
            cell["failed"] += 1
            cell["evidence"].append(f"{check.path}: {r.error} ({r.url or 'no URL'})")
    for service_name, by_env in summary.items():
        for env_name, cell in by_env.items():
            if cell["failed"] == cell["checks"]:
                cell["status"] = "down"
            elif cell["failed"]:
                cell["status"] = "degraded"
            else:
                cell["status"] = "healthy"
            env = next(c.environment for c in checks if c.environment.name == env_name)
            rate = _error_rate_quick(env, service_name)
            if rate is not None:
                cell["evidence"].append(f"error rate over 5 min: {rate:.2%}")
                if rate > error_rate_limit and cell["status"] == "healthy":
                    cell["status"] = "degraded"
    return summary


def _error_rate_quick(environment: Environment, service: str) -> float | None:
    overview = environment_overview(environment)
    return (overview.get("services", {}).get(service) or {}).get("error_rate")


def _recent_deployment(service: Service, environment: Environment, now) -> Deployment | None:
    """The newest non-rollback deployment that ran or finished within RECENT_DEPLOYMENT and
    was not rolled back."""
    since = now - RECENT_DEPLOYMENT
    candidate = (
        Deployment.objects.filter(service=service, environment=environment, is_rollback=False)
        .filter(Q(finished_at__gte=since) | Q(status__in=Deployment.ACTIVE, created_at__gte=since))
        .exclude(status=Deployment.Status.ROLLED_BACK)
        .select_related("release")
        .order_by("-created_at", "-id")
        .first()
    )
    if candidate is None or candidate.rollbacks.exists():
        return None
    if candidate.status in (Deployment.Status.FAILED, Deployment.Status.ABORTED):
        return None  # its traffic went back to stable already
    return candidate


def handle_incidents(actor: Actor, now: datetime | None = None) -> list[dict]:
    """For each open incident: roll back a deployment of an affected service that ran within
    the last 30 minutes and was not rolled back, noting it on the timeline; otherwise notify
    the incident's channels (at most every 15 minutes)."""
    now = now or timezone.now()
    done = []
    incidents = monitoring_services.open_incidents().prefetch_related("services", "environments")
    for incident in incidents.select_related("alert_policy"):
        actions = []
        for service in incident.services.all():
            for environment in incident.environments.all():
                recent = _recent_deployment(service, environment, now)
                if recent is None:
                    continue
                try:
                    rollback = monitoring_services.remediate_rollback(
                        actor, incident, service.name, environment.name
                    )
                    actions.append(f"rolled back deployment #{recent.pk}: #{rollback.pk}")
                except DomainError as exc:
                    monitoring_services.add_event(
                        actor,
                        incident,
                        "note",
                        f"agent could not roll back deployment #{recent.pk} of {service.name} "
                        f"in {environment.name}: {exc.message}",
                    )
                    actions.append(f"rollback of #{recent.pk} refused: {exc.message}")
        if not actions:
            if monitoring_services.recently_notified(incident, RENOTIFY_AFTER):
                actions.append("notified recently; waiting")
            else:
                queued = monitoring_services.notify(
                    incident,
                    None,
                    f"incident #{incident.pk} is {incident.state}: no recent deployment to roll "
                    "back; a person is needed",
                )
                actions.append(f"notified {len(queued)} channel(s)")
        logger.info("incident %s: handled: %s", incident.pk, "; ".join(actions))
        done.append({"incident": incident.pk, "actions": actions})
    return done


# --- Alert policies ------------------------------------------------------------------------


def policy_value(policy: AlertPolicy) -> tuple[float | None, str]:
    """The policy's metric over its window: platform metrics from Cloud Monitoring, others from
    the samples agents posted (labelled service and environment)."""
    service, env = policy.service.name, policy.environment
    if policy.metric in ("error_rate", "request_rate") or policy.metric.startswith("latency_p"):
        reader = _reader(env)
        if policy.metric == "error_rate":
            result = reader.error_rate(service, None, policy.window_s)
        elif policy.metric == "request_rate":
            result = reader.request_rate(service, None, policy.window_s)
        else:
            pct = int(policy.metric.removeprefix("latency_p"))
            result = reader.latency_percentile(service, None, pct, policy.window_s)
        return result.value, f"{result.sample_count} requests"
    value = stored_metrics.stored_value(
        policy.metric, {"service": service, "environment": env.name}, policy.window_s
    )
    return value, "agent samples"


def evaluate_policies(now: datetime | None = None) -> dict:
    policies = AlertPolicy.objects.filter(enabled=True).select_related("service", "environment")
    fired, errors = [], {}
    for policy in policies:
        try:
            value, detail = policy_value(policy)
        except Exception as exc:
            errors[policy.name] = f"{type(exc).__name__}: {exc}"[:300]
            logger.warning("alert policy %s: not evaluated: %s", policy.pk, exc)
            continue
        incident = monitoring_services.record_evaluation(policy, value, now=now, detail=detail)
        if incident is not None:
            fired.append({"policy": policy.name, "incident": incident.pk})
    return {"evaluated": len(policies), "fired": fired, "errors": errors}


def evaluate_policies_job(ctx: JobContext) -> dict:
    result = evaluate_policies()
    ctx.log.info(
        "alert policies: %s evaluated, %s firing", result["evaluated"], len(result["fired"])
    )
    return result


_CLOUD_METRIC = {
    "error_rate": REQUEST_COUNT,
    "request_rate": REQUEST_COUNT,
}
_COMPARISON = {
    ">": monitoring_v3.ComparisonType.COMPARISON_GT,
    ">=": monitoring_v3.ComparisonType.COMPARISON_GE,
    "<": monitoring_v3.ComparisonType.COMPARISON_LT,
    "<=": monitoring_v3.ComparisonType.COMPARISON_LE,
}


def cloud_policy(policy: AlertPolicy) -> monitoring_v3.AlertPolicy:
    """The policy as a Cloud Monitoring AlertPolicy (a threshold condition on the metric)."""
    service = policy.service.name
    flt = run_filter(service)
    aggregation = monitoring_v3.Aggregation(
        alignment_period=duration_pb2.Duration(seconds=max(policy.window_s, 60)),
        per_series_aligner=Aligner.ALIGN_RATE,
        cross_series_reducer=Reducer.REDUCE_SUM,
        group_by_fields=["resource.labels.service_name"],
    )
    if policy.metric == "error_rate":
        metric = REQUEST_COUNT
        flt += ' AND metric.labels.response_code_class = "5xx"'
    elif policy.metric == "request_rate":
        metric = REQUEST_COUNT
    elif policy.metric.startswith("latency_p"):
        metric = REQUEST_LATENCIES
        pct = int(policy.metric.removeprefix("latency_p"))
        aggregation.per_series_aligner = Aligner.ALIGN_DELTA
        aggregation.cross_series_reducer = _PERCENTILES.get(pct, Reducer.REDUCE_PERCENTILE_95)
    else:
        metric = f"custom.googleapis.com/{policy.metric.lstrip('/')}"
        flt = f'metric.labels.service = "{service}"'
        aggregation.per_series_aligner = Aligner.ALIGN_MEAN
        aggregation.cross_series_reducer = Reducer.REDUCE_MEAN
        aggregation.group_by_fields = []
    condition = monitoring_v3.AlertPolicy.Condition(
        display_name=f"{policy.metric} {policy.comparison} {policy.threshold:g}",
        condition_threshold=monitoring_v3.AlertPolicy.Condition.MetricThreshold(
            filter=f'metric.type = "{metric}" AND {flt}',
            comparison=_COMPARISON[policy.comparison],
            threshold_value=policy.threshold,
            duration=duration_pb2.Duration(seconds=policy.duration_s),
            aggregations=[aggregation],
        ),
    )
    return monitoring_v3.AlertPolicy(
        display_name=f"ops-portal: {policy.name}",
        combiner=monitoring_v3.AlertPolicy.ConditionCombinerType.OR,
        conditions=[condition],
        enabled=policy.enabled,
        user_labels={"managed_by": "ops-portal", "service": service[:63]},
        documentation=monitoring_v3.AlertPolicy.Documentation(
            content=f"Managed by Ops Portal: {policy.describe()}", mime_type="text/markdown"
        ),
    )


def sync_alert_policy(ctx: JobContext, policy: int) -> dict:
    """Creates the policy in Cloud Monitoring, or updates its copy there."""
    p = AlertPolicy.objects.select_related("service", "environment").filter(pk=policy).first()
    if p is None:
        return {"skipped": "policy deleted"}
    config = _config(p.environment)
    client = alert_policy_client(config)
    body = cloud_policy(p)
    try:
        if p.cloud_name:
            body.name = p.cloud_name
            saved = client.update_alert_policy(alert_policy=body, timeout=30)
        else:
            saved = client.create_alert_policy(
                name=config.project_name, alert_policy=body, timeout=30
            )
    except Exception as exc:
        monitoring_services.record_policy_sync(p.pk, error=f"{type(exc).__name__}: {exc}")
        raise
    monitoring_services.record_policy_sync(p.pk, cloud_name=saved.name)
    ctx.log.info("alert policy %s: synced to Cloud Monitoring as %s", p.pk, saved.name)
    return {"cloud_name": saved.name}


def delete_alert_policy(ctx: JobContext, environment: int, cloud_name: str) -> dict:
    env = Environment.objects.get(pk=environment)
    client = alert_policy_client(_config(env))
    try:
        client.delete_alert_policy(name=cloud_name, timeout=30)
    except Exception as exc:
        if "NotFound" not in type(exc).__name__:
            raise
    ctx.log.info("alert policy %s: deleted from Cloud Monitoring", cloud_name)
    return {"deleted": cloud_name}


# --- Platform reads for pages (cached, short timeouts) ---------------------------------------


def _list(reader: MetricsReader, metric: str, flt: str, window_s: float, aggregation) -> list:
    now = time.time()
    request = monitoring_v3.ListTimeSeriesRequest(
        name=reader.config.project_name,
        filter=f'metric.type = "{metric}" AND {flt}',
        interval=monitoring_v3.TimeInterval(
            start_time=_timestamp(now - window_s), end_time=_timestamp(now)
        ),
        view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
        aggregation=aggregation,
    )
    return list(reader.client.list_time_series(request=request, retry=None, timeout=PAGE_TIMEOUT_S))


def _agg(period_s: float, aligner, reducer, group_by) -> monitoring_v3.Aggregation:
    return monitoring_v3.Aggregation(
        alignment_period=duration_pb2.Duration(seconds=int(period_s)),
        per_series_aligner=aligner,
        cross_series_reducer=reducer,
        group_by_fields=list(group_by),
    )


def _value(point) -> float:
    which = monitoring_v3.TypedValue.pb(point.value).WhichOneof("value")
    if which == "distribution_value":
        return float(point.value.distribution_value.mean)
    return float(getattr(point.value, which) if which else 0.0)


def _count(point) -> int:
    which = monitoring_v3.TypedValue.pb(point.value).WhichOneof("value")
    if which == "distribution_value":
        return int(point.value.distribution_value.count)
    return int(_value(point))


def _min_period(config: PlatformConfig) -> int:
    return 60 if config.kind == GOOGLE else 1


def environment_overview(environment: Environment, window_s: int = 300) -> dict:
    """Per service of the environment: request rate, error rate, p95 latency over window_s and
    a request-rate sparkline of the last 30 minutes; three Monitoring calls for every service
    together, cached CACHE_S seconds. {"ok": False, "error": ...} when the platform did not
    answer."""
    key = f"mon:overview:{environment.pk}:{environment.updated_at.timestamp()}:{window_s}"
    cached = cache.get(key)
    if cached is not None:
        return cached
    try:
        result = {"ok": True, "services": _read_overview(environment, window_s)}
        timeout = CACHE_S
    except Exception as exc:
        logger.info("environment %s: platform metrics unavailable: %s", environment.name, exc)
        result = {"ok": False, "error": f"{type(exc).__name__}", "services": {}}
        timeout = FAILURE_CACHE_S
    cache.set(key, result, timeout)
    return result


def _read_overview(environment: Environment, window_s: int) -> dict:
    reader = _reader(environment)
    flt = 'resource.type = "cloud_run_revision"'
    by_service = "resource.labels.service_name"
    out: dict[str, dict] = {}

    counts = _list(
        reader,
        REQUEST_COUNT,
        flt,
        window_s,
        _agg(
            window_s,
            Aligner.ALIGN_DELTA,
            Reducer.REDUCE_SUM,
            [by_service, "metric.labels.response_code_class"],
        ),
    )
    for ts in counts:
        name = ts.resource.labels.get("service_name", "")
        code = ts.metric.labels.get("response_code_class", "")
        cell = out.setdefault(name, {"requests": 0, "errors": 0})
        n = sum(_count(p) for p in ts.points)
        cell["requests"] += n
        if code == "5xx":
            cell["errors"] += n
    for cell in out.values():
        cell["request_rate"] = cell["requests"] / window_s if cell["requests"] else None
        cell["error_rate"] = cell["errors"] / cell["requests"] if cell["requests"] else None

    p95 = _list(
        reader,
        REQUEST_LATENCIES,
        flt,
        window_s,
        _agg(window_s, Aligner.ALIGN_DELTA, Reducer.REDUCE_PERCENTILE_95, [by_service]),
    )
    for ts in p95:
        name = ts.resource.labels.get("service_name", "")
        if ts.points:
            out.setdefault(name, {})["p95_ms"] = _value(ts.points[0])

    step = max(60, _min_period(reader.config))
    spark = _list(
        reader,
        REQUEST_COUNT,
        flt,
        1800,
        _agg(step, Aligner.ALIGN_DELTA, Reducer.REDUCE_SUM, [by_service]),
    )
    for ts in spark:
        name = ts.resource.labels.get("service_name", "")
        # Points come newest first; a sparkline reads left to right.
        out.setdefault(name, {})["spark"] = [_count(p) / step for p in reversed(ts.points)]
    return out


RANGES = {"1h": (3600, 60), "6h": (21600, 300), "24h": (86400, 900), "7d": (604800, 3600)}


def service_series(environment: Environment, service: str, range_key: str) -> dict:
    """Request rate, error rate and p50/p95/p99 latency per revision over the range, for the
    service health page's charts; cached CACHE_S seconds."""
    window_s, step = RANGES[range_key]
    key = f"mon:series:{environment.pk}:{service}:{range_key}"
    cached = cache.get(key)
    if cached is not None:
        return cached
    try:
        result = {"ok": True, **_read_series(environment, service, window_s, step)}
        timeout = CACHE_S
    except Exception as exc:
        logger.info("service %s in %s: no platform series: %s", service, environment.name, exc)
        result = {"ok": False, "error": type(exc).__name__}
        timeout = FAILURE_CACHE_S
    cache.set(key, result, timeout)
    return result


def _points(ts, fn) -> list[list[float]]:
    return [[p.interval.end_time.timestamp() * 1000, fn(p)] for p in reversed(ts.points)]


def _read_series(environment: Environment, service: str, window_s: int, step: int) -> dict:
    reader = _reader(environment)
    flt = run_filter(service)
    by_rev = "resource.labels.revision_name"
    counts = _list(
        reader,
        REQUEST_COUNT,
        flt,
        window_s,
        _agg(
            step,
            Aligner.ALIGN_DELTA,
            Reducer.REDUCE_SUM,
            [by_rev, "metric.labels.response_code_class"],
        ),
    )
    totals: dict[str, dict[float, list[int]]] = {}
    for ts in counts:
        rev = ts.resource.labels.get("revision_name", "")
        is_error = ts.metric.labels.get("response_code_class", "") == "5xx"
        for p in ts.points:
            at = p.interval.end_time.timestamp() * 1000
            cell = totals.setdefault(rev, {}).setdefault(at, [0, 0])
            cell[0] += _count(p)
            if is_error:
                cell[1] += _count(p)
    request_rate = {
        rev: [[at, n / step] for at, (n, _) in sorted(by_at.items())]
        for rev, by_at in totals.items()
    }
    error_rate = {
        rev: [[at, e / n if n else 0] for at, (n, e) in sorted(by_at.items())]
        for rev, by_at in totals.items()
    }
    latency: dict[str, dict[str, list]] = {}
    for pct, reducer in _PERCENTILES.items():
        for ts in _list(
            reader,
            REQUEST_LATENCIES,
            flt,
            window_s,
            _agg(step, Aligner.ALIGN_DELTA, reducer, [by_rev]),
        ):
            rev = ts.resource.labels.get("revision_name", "")
            latency.setdefault(f"p{pct}", {})[rev] = _points(ts, _value)
    return {"request_rate": request_rate, "error_rate": error_rate, "latency": latency}


def revision_series(
    environment: Environment,
    service: str,
    revisions: list[str],
    since: datetime,
    until: datetime,
) -> dict:
    """Error rate and p95 latency of each named revision between since and until (about 60
    points), for the deployment page's chart of the new against the stable revision; cached
    CACHE_S seconds. {"ok": False, "error": ...} when the platform did not answer."""
    revisions = [r for r in dict.fromkeys(revisions) if r]
    # The live chart asks with until=now every time; a key per CACHE_S slice lets the cache hit.
    key = (
        f"mon:revseries:{environment.pk}:{service}:{','.join(revisions)}:"
        f"{int(since.timestamp())}:{int(until.timestamp()) // CACHE_S}"
    )
    cached = cache.get(key)
    if cached is not None:
        return cached
    try:
        data = _read_revision_series(environment, service, revisions, since, until)
        result = {"ok": True, **data}
        timeout = CACHE_S
    except Exception as exc:
        logger.info("service %s in %s: no revision series: %s", service, environment.name, exc)
        result = {"ok": False, "error": type(exc).__name__}
        timeout = FAILURE_CACHE_S
    cache.set(key, result, timeout)
    return result


def _list_between(reader: MetricsReader, metric: str, flt: str, start, end, aggregation) -> list:
    request = monitoring_v3.ListTimeSeriesRequest(
        name=reader.config.project_name,
        filter=f'metric.type = "{metric}" AND {flt}',
        interval=monitoring_v3.TimeInterval(start_time=_timestamp(start), end_time=_timestamp(end)),
        view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
        aggregation=aggregation,
    )
    return list(reader.client.list_time_series(request=request, retry=None, timeout=PAGE_TIMEOUT_S))


def _read_revision_series(
    environment: Environment, service: str, revisions: list[str], since: datetime, until: datetime
) -> dict:
    if not revisions:
        return {"step": 0, "error_rate": {}, "latency_p95": {}, "requests": {}}
    reader = _reader(environment)
    start, end = since.timestamp(), until.timestamp()
    minimum = _min_period(reader.config)
    # About 60 points whatever the window; Cloud Monitoring aligns on whole minutes.
    step = max(minimum, math.ceil((end - start) / 60))
    step = math.ceil(step / minimum) * minimum
    one_of = ", ".join(_quote(r) for r in revisions)
    flt = f"{run_filter(service)} AND resource.labels.revision_name = one_of({one_of})"
    by_rev = "resource.labels.revision_name"
    counts = _list_between(
        reader,
        REQUEST_COUNT,
        flt,
        start,
        end,
        _agg(
            step,
            Aligner.ALIGN_DELTA,
            Reducer.REDUCE_SUM,
            [by_rev, "metric.labels.response_code_class"],
        ),
    )
    totals: dict[str, dict[float, list[int]]] = {}
    for ts in counts:
        rev = ts.resource.labels.get("revision_name", "")
        is_error = ts.metric.labels.get("response_code_class", "") == "5xx"
        for p in ts.points:
            cell = totals.setdefault(rev, {}).setdefault(
                p.interval.end_time.timestamp() * 1000, [0, 0]
            )
            cell[0] += _count(p)
            if is_error:
                cell[1] += _count(p)
    latency = _list_between(
        reader,
        REQUEST_LATENCIES,
        flt,
        start,
        end,
        _agg(step, Aligner.ALIGN_DELTA, Reducer.REDUCE_PERCENTILE_95, [by_rev]),
    )
    return {
        "step": step,
        "error_rate": {
            rev: [[at, e / n] for at, (n, e) in sorted(by_at.items()) if n]
            for rev, by_at in totals.items()
        },
        "latency_p95": {
            ts.resource.labels.get("revision_name", ""): _points(ts, _value) for ts in latency
        },
        "requests": {rev: sum(n for n, _ in by_at.values()) for rev, by_at in totals.items()},
    }


def revision_logs(
    environment: Environment,
    service: str,
    revision: str | None = None,
    since: datetime | None = None,
    query: str | None = None,
    limit: int = 200,
) -> dict:
    """Log lines of a revision (or several, comma-separated; or every revision serving
    traffic), newest last."""
    adapter = _quick_adapter(environment)
    try:
        if revision:
            revisions = [r.strip() for r in revision.split(",") if r.strip()]
        else:
            state = adapter.get_service_state(service)
            revisions = [t.revision for t in state.traffic if t.revision and t.percent] or [
                state.latest_ready_revision
            ]
        entries = []
        for rev in dict.fromkeys(r for r in revisions if r):
            for e in adapter.get_revision_logs(service, rev, since=since, query=query, limit=limit):
                entries.append(
                    {"at": e.timestamp, "revision": rev, "stream": e.stream, "text": e.text}
                )
    except NotImplementedError as exc:
        return {"ok": False, "error": str(exc), "entries": []}
    except Exception as exc:
        logger.info("service %s in %s: logs unavailable: %s", service, environment.name, exc)
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300], "entries": []}
    entries.sort(key=lambda e: e["at"])
    return {"ok": True, "error": "", "entries": entries[-limit:], "revisions": revisions}


# --- The clock's duties ---------------------------------------------------------------------

EVALUATE_EVERY_S = 60
PRUNE_EVERY_S = 3600
_last_run: dict[str, float] = {}


def _due(duty: str, every_s: float, now: float) -> bool:
    """Once per `every_s` per clock process, claimed in Redis too so that two clocks do not
    both enqueue the same duty."""
    if now - _last_run.get(duty, 0.0) < every_s:
        return False
    _last_run[duty] = now
    return cache.add(f"mon:clock:{duty}", 1, timeout=int(every_s) - 1)


def run_due(now: float | None = None) -> list[str]:
    """Enqueues what is due: health checks (one job for all due ones), the alert-policy
    evaluation every minute, the prune every hour. Returns one line per job enqueued."""
    now = now or time.time()
    actor = Actor.system("clock")
    lines = []
    checks = monitoring_services.claim_due_health_checks()
    if checks:
        jobs.enqueue(
            "agents.devops.health.run_checks_job",
            name=f"run {len(checks)} health check(s)",
            actor=actor,
            params={"checks": checks},
        )
        lines.append(f"health checks {checks} enqueued")
    if (
        _due("evaluate", EVALUATE_EVERY_S, now)
        and AlertPolicy.objects.filter(enabled=True).exists()
    ):
        jobs.enqueue(
            "agents.devops.health.evaluate_policies_job",
            name="evaluate alert policies",
            actor=actor,
        )
        lines.append("alert policy evaluation enqueued")
    if _due("prune", PRUNE_EVERY_S, now):
        jobs.enqueue("monitoring.jobs.prune_job", name="prune old monitoring data", actor=actor)
        lines.append("monitoring prune enqueued")
    return lines
