"""What each step of a deployment plan does on the platform, and the analysis of metrics.

Executors run inside the engine's tick (agents/devops/cd_pipeline.py), in a transaction that
records what they do, without the deployment row lock (an operator's Abort must not wait for
the platform); they change the deployment in memory and return an Outcome telling the engine
what comes next. They are safe to run again after a crash: traffic updates set absolute
percentages, and revisions are named by the deployment, so a repeated step changes nothing
the first run did not.
"""

from __future__ import annotations

import logging
import re
import shlex
import time
from dataclasses import dataclass, field

import requests
from django.utils import timezone

from agents.devops.cloud_run import CloudRunAdapter, RevisionResult
from agents.devops.monitoring import MetricResult, MetricsReader
from environments import services as env_services
from releases.models import AnalysisRun, AnalysisTemplate, Deployment, Measurement
from releases.plans import DEFAULT_TEMPLATE, DEFAULT_TEMPLATE_METRICS

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    kind: str  # "next", "wait", "pause", "fail"; the engine's own: "moved" and final statuses
    delay_s: float = 0.0
    reason: str = ""
    data: dict = field(default_factory=dict)

    @classmethod
    def next(cls) -> Outcome:
        return cls("next")

    @classmethod
    def wait(cls, delay_s: float) -> Outcome:
        return cls("wait", delay_s=delay_s)

    @classmethod
    def pause(cls, reason: str) -> Outcome:
        return cls("pause", reason=reason)

    @classmethod
    def fail(cls, reason: str, **data) -> Outcome:
        return cls("fail", reason=reason, data=data)


@dataclass
class StepContext:
    adapter: CloudRunAdapter
    metrics: MetricsReader
    record: callable  # record(kind, message, **data): the deployment's timeline
    set_traffic: callable  # set_traffic(split): applies and records a traffic change


def revision_name(deployment: Deployment) -> str:
    """Named by the deployment, so a retried deploy step finds the revision it made."""
    version = re.sub(r"[^a-z0-9]+", "-", deployment.release.version.lower()).strip("-")
    name = f"{deployment.service.name}-{version}-d{deployment.pk}"
    if len(name) > 63:
        name = f"{deployment.service.name}-d{deployment.pk}"
    return name


def revision_env(deployment: Deployment) -> dict[str, str]:
    env = env_services.resolve_config(deployment.environment, deployment.service.name)
    env.update(env_services.resolve_secrets(deployment.environment, deployment.service.name))
    env.update(deployment.release.env or {})
    env.setdefault("VERSION", deployment.release.version)
    return env


def artifact_for(deployment: Deployment, adapter: CloudRunAdapter) -> str | list[str]:
    artifact = deployment.release.artifact
    if adapter.config.is_local:
        return shlex.split(artifact)
    return artifact


def create_revision(deployment: Deployment, adapter: CloudRunAdapter) -> RevisionResult:
    """The slow part of the deploy step; the engine calls it before the step's transaction."""
    step = deployment.steps[deployment.current_step]
    return adapter.create_revision(
        deployment.service.name,
        revision_name(deployment),
        artifact_for(deployment, adapter),
        env=revision_env(deployment),
        tag=step.get("tag"),
        timeout_s=180,
        health_path=deployment.service.health_path or None,
    )


# Analysis


@dataclass
class Check:
    """One measurement's verdict."""

    result: str  # Measurement.Result
    value: float | None
    stable_value: float | None
    sample_count: int
    threshold: str
    detail: str


def template_metrics(name: str) -> list[dict]:
    template = AnalysisTemplate.objects.filter(name=name).first()
    if template is not None:
        return template.metrics
    if name == DEFAULT_TEMPLATE:
        return DEFAULT_TEMPLATE_METRICS
    raise ValueError(f"analysis template {name!r} does not exist")


def measure(
    metric: dict,
    reader: MetricsReader,
    service: str,
    revision: str,
    stable_revision: str,
    window_s: float,
) -> Check:
    kind = metric["kind"]
    min_requests = int(metric.get("min_requests", 1))
    stable: MetricResult | None = None
    if kind == "error_rate":
        new = reader.error_rate(service, revision, window_s)
    elif kind == "latency":
        pct = int(metric.get("percentile", 95))
        new = reader.latency_percentile(service, revision, pct, window_s)
        if "max_ratio_to_stable" in metric and stable_revision:
            stable = reader.latency_percentile(service, stable_revision, pct, window_s)
    elif kind == "request_rate":
        new = reader.request_rate(service, revision, window_s)
    elif kind == "metric":
        new = reader.query_metric(metric["metric_type"], metric.get("filter", ""), window_s)
    else:
        raise ValueError(f"unknown metric kind {kind!r}")

    threshold = _threshold(metric)
    if kind != "request_rate" and (new.value is None or new.sample_count < min_requests):
        return Check(
            "inconclusive",
            new.value,
            None,
            new.sample_count,
            threshold,
            f"too little traffic: {new.sample_count} requests, need {min_requests}",
        )
    value = float(new.value) if new.value is not None else 0.0
    if "max" in metric and value > float(metric["max"]):
        return Check(
            "fail",
            value,
            None,
            new.sample_count,
            threshold,
            f"{metric['name']} {value:.4g} above {metric['max']}",
        )
    if "min" in metric and value < float(metric["min"]):
        return Check(
            "fail",
            value,
            None,
            new.sample_count,
            threshold,
            f"{metric['name']} {value:.4g} below {metric['min']}",
        )
    if "max_ratio_to_stable" in metric:
        if stable is None or stable.value is None:
            if stable_revision:
                return Check(
                    "inconclusive",
                    value,
                    None,
                    new.sample_count,
                    threshold,
                    "no stable data to compare with",
                )
            return Check(
                "pass",
                value,
                None,
                new.sample_count,
                threshold,
                "no stable revision: nothing to compare with",
            )
        # A slack in ms keeps a fast baseline (1-2 ms) from failing a release on noise.
        slack = float(metric.get("slack_ms", 25))
        limit = max(float(metric["max_ratio_to_stable"]) * stable.value, stable.value + slack)
        if value > limit:
            return Check(
                "fail",
                value,
                stable.value,
                new.sample_count,
                threshold,
                f"{metric['name']} {value:.4g} above {limit:.4g} "
                f"({metric['max_ratio_to_stable']} x stable {stable.value:.4g}, "
                f"at least +{slack:g} ms)",
            )
        return Check("pass", value, stable.value, new.sample_count, threshold, "")
    return Check("pass", value, None, new.sample_count, threshold, "")


def _threshold(metric: dict) -> str:
    if "max" in metric:
        return f"<= {metric['max']}"
    if "min" in metric:
        return f">= {metric['min']}"
    if "max_ratio_to_stable" in metric:
        return f"<= {metric['max_ratio_to_stable']} x stable"
    return ""


def send_preview_load(uri: str, count: int) -> int:
    """Requests to the preview URL, so that analysis of an untrafficked revision has data."""
    ok = 0
    with requests.Session() as session:
        for _ in range(count):
            try:
                session.get(uri, timeout=5)
                ok += 1
            except requests.RequestException:
                pass
    return ok


def run_analysis(ctx: StepContext, d: Deployment, step: dict) -> Outcome:
    """One tick of an analysis step.

    1. Start a run (its checks copied from the template) and wait one interval for data.
    2. When a measurement is due, measure every check still counting and keep each result.
    3. A check with more failures than its failure limit fails the run (and the rollout);
       more inconclusive results than its limit pauses the rollout for an operator;
       every check reaching its count passes the run.
    """
    state = d.step_state
    now = time.time()
    run = AnalysisRun.objects.filter(pk=state.get("run")).first() if state.get("run") else None
    if state.get("promoted") and not state.get("resumed"):
        # An operator's promote decides what the analysis could not (or need not): skip it.
        # A resume also sets "promoted" (to end pauses) but asks to measure again instead.
        if run is not None and run.result == AnalysisRun.Result.RUNNING:
            _end_run(run, "inconclusive", "skipped: promoted by an operator")
        ctx.record("analysis_skipped", f"analysis '{step['template']}' skipped: promoted")
        return Outcome.next()
    if run is None or state.get("resumed"):
        metrics = template_metrics(step["template"])
        run = AnalysisRun.objects.create(
            deployment=d, step_index=d.current_step, template=step["template"], metrics=metrics
        )
        interval = min(float(m.get("interval_s", 10)) for m in metrics)
        # A fresh run counts from zero: a resumed run that kept the last run's counts paused
        # again at its first measurement, whatever that measured.
        state.update(
            {
                "run": run.pk,
                "next_at": now + interval,
                "resumed": False,
                "promoted": False,
                "counts": {},
            }
        )
        ctx.record(
            "analysis_started",
            f"analysis '{step['template']}' started ({len(metrics)} checks, every {interval:g} s)",
            run=run.pk,
        )
        return Outcome.wait(interval)
    if now < state["next_at"] - 0.05:
        return Outcome.wait(state["next_at"] - now)
    if step.get("preview_load"):
        # Sent right before measuring: load sent a tick earlier falls outside the window a
        # measurement reads (one interval back), and the preview was judged on no traffic.
        send_preview_load(state.get("tag_uri", ""), int(step["preview_load"]))

    counts = state.setdefault("counts", {})
    due = []
    for metric in run.metrics:
        c = counts.setdefault(metric["name"], {"n": 0, "fail": 0, "inconclusive": 0})
        if c["n"] < int(metric.get("count", 3)):
            due.append(metric)
    for metric in due:
        c = counts[metric["name"]]
        window = float(metric.get("interval_s", 10))
        check = measure(
            metric, ctx.metrics, d.service.name, d.new_revision, d.stable_revision, window
        )
        Measurement.objects.create(
            run=run,
            metric=metric["name"],
            value=check.value,
            stable_value=check.stable_value,
            sample_count=check.sample_count,
            threshold=check.threshold,
            result=check.result,
            detail=check.detail,
        )
        c["n"] += 1
        if check.result == "fail":
            c["fail"] += 1
        elif check.result == "inconclusive":
            c["inconclusive"] += 1
            c["n"] -= 1  # an inconclusive measurement does not count towards the total
        if c["fail"] > int(metric.get("failure_limit", 0)):
            _end_run(run, "failed", check.detail)
            return Outcome.fail(f"analysis failed: {check.detail}", measurement=check.detail)
        if c["inconclusive"] > int(metric.get("inconclusive_limit", 2)):
            _end_run(run, "inconclusive", check.detail)
            state.update({"resumed": True})  # a resume starts a fresh run
            return Outcome.pause(
                f"analysis inconclusive: {check.detail}; resume to measure "
                "again, promote to skip, or abort"
            )

    if all(counts[m["name"]]["n"] >= int(m.get("count", 3)) for m in run.metrics):
        _end_run(run, "passed", "every check passed")
        ctx.record("analysis_passed", f"analysis '{step['template']}' passed", run=run.pk)
        return Outcome.next()
    interval = min(float(m.get("interval_s", 10)) for m in run.metrics)
    state["next_at"] = now + interval
    return Outcome.wait(interval)


def _end_run(run: AnalysisRun, result: str, summary: str) -> None:
    run.result = result
    run.summary = summary
    run.finished_at = timezone.now()
    run.save(update_fields=["result", "summary", "finished_at"])


# The other steps


def run_set_weight(ctx: StepContext, d: Deployment, step: dict) -> Outcome:
    weight = int(step["weight"])
    ctx.set_traffic(weight)
    return Outcome.next()


def run_pause(ctx: StepContext, d: Deployment, step: dict) -> Outcome:
    state = d.step_state
    if state.get("promoted"):
        return Outcome.next()
    if "duration_s" not in step:
        return Outcome.pause("waiting for an operator to promote")
    until = state.setdefault("pause_until", time.time() + float(step["duration_s"]))
    remaining = until - time.time()
    if remaining > 0.05:
        return Outcome.wait(remaining)
    return Outcome.next()


def run_smoke(ctx: StepContext, d: Deployment, step: dict) -> Outcome:
    uri = d.step_state.get("tag_uri", "")
    if not uri:
        return Outcome.fail("smoke check: the preview has no URL")
    url = uri.rstrip("/") + step["path"]
    statuses = []
    for _ in range(5):
        try:
            statuses.append(requests.get(url, timeout=5).status_code)
        except requests.RequestException as exc:
            statuses.append(f"{type(exc).__name__}")
    bad = [s for s in statuses if not (isinstance(s, int) and 200 <= s < 400)]
    if bad:
        return Outcome.fail(f"smoke check of {url} failed: got {statuses}")
    ctx.record("smoke_passed", f"smoke check of {url}: {statuses}")
    return Outcome.next()


EXECUTORS = {
    "set_weight": run_set_weight,
    "pause": run_pause,
    "analysis": run_analysis,
    "smoke": run_smoke,
}
