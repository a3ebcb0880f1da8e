"""The deployment engine: a durable state machine in PostgreSQL advanced by RQ jobs.

`tick(deployment_id)` runs on the `deploy` queue. It locks the deployment row, runs the
current step through the Cloud Run adapter, records what happened, and schedules the next
tick. `reconcile()` (run periodically by `manage.py clock`) re-enqueues every running
deployment whose tick is overdue, so a lost job, a killed worker or a Redis restart delays a
rollout but never loses it. Steps are recorded in the same transaction that moves
`current_step`, so a tick that dies half-way leaves the step to be done again, never twice.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from agents.devops import deployment_strategies as steps
from agents.devops.cloud_run import CloudRunAdapter, CloudRunError, RevisionNotReady
from agents.devops.monitoring import MetricsReader
from agents.devops.platform import PlatformConfig
from core.models import JobLogEntry
from releases import services as release_services
from releases.models import Deployment, TrafficChange

logger = logging.getLogger(__name__)

Status = Deployment.Status
MAX_STEPS_PER_TICK = 20
# A failure of our own code (not of the platform) is retried this many times, then it fails
# the deployment with the error, traffic back on stable.
MAX_ERRORS = 5

_adapters: dict[tuple[PlatformConfig, bool], tuple[CloudRunAdapter, MetricsReader]] = {}
# Pages read the platform with a short retry budget: a dead platform must make a page say
# "no answer" in a few seconds, not wait out the engine's minute of retries.
QUICK_RETRY_S = 3.0


def platform_for(deployment: Deployment) -> tuple[CloudRunAdapter, MetricsReader]:
    return platform_for_environment(deployment.environment)


def platform_for_environment(
    environment, quick: bool = False
) -> tuple[CloudRunAdapter, MetricsReader]:
    """The adapters of an environment's platform, built once per platform settings. `quick`
    adapters give up on an unreachable platform after a few seconds (for pages)."""
    config = PlatformConfig(**environment.platform_settings())
    key = (config, quick)
    if key not in _adapters:
        if quick:
            _adapters[key] = (
                CloudRunAdapter(config, retry_timeout_s=QUICK_RETRY_S),
                MetricsReader(config, retry_timeout_s=QUICK_RETRY_S),
            )
        else:
            _adapters[key] = (CloudRunAdapter(config), MetricsReader(config))
    return _adapters[key]


def _load(pk: int, lock: bool) -> Deployment | None:
    qs = Deployment.objects.select_related("service", "environment", "release", "job")
    if lock:
        qs = qs.select_for_update(of=("self",))
    return qs.filter(pk=pk).first()


def _log(d: Deployment, level: int, message: str, *args) -> None:
    text = message % args if args else message
    logger.log(level, "deployment %s: %s", d.pk, text)
    if d.job_id:
        JobLogEntry.objects.create(job_id=d.job_id, level=logging.getLevelName(level), message=text)


def tick(deployment_id: int) -> str:
    """One step (or several quick ones) of a deployment; returns its status afterwards."""
    pre = _load(deployment_id, lock=False)
    if pre is None or pre.status != Status.RUNNING:
        return pre.status if pre else "missing"

    # Creating a revision takes seconds to minutes: do it without holding the row lock, so
    # that an operator's Abort is not kept waiting. Revisions are named by the deployment,
    # so two ticks racing here make one revision.
    created = None
    step = pre.current_step_def or {}
    if step.get("type") == "deploy" and not pre.step_state.get("abort"):
        adapter, _ = platform_for(pre)
        try:
            created = steps.create_revision(pre, adapter)
        except (RevisionNotReady, CloudRunError) as exc:
            created = exc

    try:
        with transaction.atomic():
            d = _load(deployment_id, lock=True)
            if d is None or d.status != Status.RUNNING:
                return d.status if d else "missing"
            if d.current_step_def != step and created is not None:
                created = None  # another tick moved on meanwhile: redo nothing
            _advance(d, created)
            return d.status
    except Exception as exc:
        return _on_error(deployment_id, exc)


def _on_error(deployment_id: int, exc: Exception) -> str:
    logger.exception("deployment %s: tick failed", deployment_id)
    with transaction.atomic():
        d = _load(deployment_id, lock=True)
        if d is None or d.status != Status.RUNNING:
            return d.status if d else "missing"
        errors = int(d.step_state.get("errors", 0)) + 1
        d.step_state = {**d.step_state, "errors": errors}
        message = f"{type(exc).__name__}: {exc}"
        release_services.record_event(
            d, "error", f"step {d.current_step + 1} failed ({errors}/{MAX_ERRORS}): {message}"
        )
        if errors >= MAX_ERRORS:
            _roll_back_traffic(d, f"gave up after {errors} errors: {message}", Status.FAILED)
        else:
            d.save(update_fields=["step_state"])
            release_services.schedule_tick(d, min(2**errors, 30))
        return d.status


def _context(d: Deployment) -> steps.StepContext:
    adapter, metrics = platform_for(d)

    def record(kind: str, message: str, **data) -> None:
        release_services.record_event(d, kind, message, **data)
        _log(d, logging.INFO, message)

    def set_traffic(weight: int) -> None:
        split = _split(d, weight)
        adapter.set_traffic(d.service.name, split)
        TrafficChange.objects.create(deployment=d, split=split, new_percent=weight)
        d.step_state = {**d.step_state, "weight": weight}
        record("traffic", f"traffic: {_describe(split)}", split=split)

    return steps.StepContext(
        adapter=adapter, metrics=metrics, record=record, set_traffic=set_traffic
    )


def _split(d: Deployment, weight: int) -> dict[str, int]:
    if not d.stable_revision or d.stable_revision == d.new_revision or weight >= 100:
        return {d.new_revision: 100}
    if weight <= 0:
        return {d.stable_revision: 100}
    return {d.new_revision: weight, d.stable_revision: 100 - weight}


def _describe(split: dict[str, int]) -> str:
    return ", ".join(f"{rev} {pct}%" for rev, pct in split.items())


def _advance(d: Deployment, created) -> None:
    """Runs steps until one has to wait, pause, fail or the plan is done."""
    ctx = _context(d)
    if d.step_state.get("abort"):
        _roll_back_traffic(d, d.step_state["abort"], Status.ABORTED, ctx)
        return
    if d.step_state.get("promote_full") and d.new_revision:
        # A rollback's plan has no finalize step: then the plan simply ends.
        finalize_at = next(
            (i for i, s in enumerate(d.steps) if s["type"] == "finalize"), len(d.steps)
        )
        ctx.set_traffic(100)
        d.current_step = finalize_at
        ctx.record("promoted", "promoted to 100%: remaining steps skipped")
        d.step_state = {"weight": 100}

    for _ in range(MAX_STEPS_PER_TICK):
        step = d.current_step_def
        if step is None:
            _succeed(d, ctx)
            return
        kind = step["type"]
        if kind == "deploy":
            outcome = _deploy(d, ctx, created)
            created = None
        elif kind == "rollback":
            outcome = _rollback(d, ctx)
        elif kind == "finalize":
            _finalize(d, ctx, step)
            return
        else:
            outcome = steps.EXECUTORS[kind](ctx, d, step)

        if outcome.kind == "next":
            ctx.record(
                "step_done",
                f"step {d.current_step + 1}/{len(d.steps)} done: "
                f"{release_services.plans.describe_step(step)}",
                step=d.current_step,
            )
            keep = {k: d.step_state[k] for k in ("weight", "tag_uri") if k in d.step_state}
            d.current_step += 1
            d.step_state = keep
            continue
        if outcome.kind == "wait":
            d.save(update_fields=["current_step", "step_state", "stable_revision", "new_revision"])
            release_services.schedule_tick(d, outcome.delay_s)
            return
        if outcome.kind == "pause":
            d.status = Status.PAUSED
            d.reason = outcome.reason
            d.next_tick_at = None
            d.save(
                update_fields=[
                    "current_step",
                    "step_state",
                    "status",
                    "reason",
                    "next_tick_at",
                    "stable_revision",
                    "new_revision",
                ]
            )
            ctx.record("paused", outcome.reason)
            return
        if outcome.kind == "fail":
            _roll_back_traffic(d, outcome.reason, Status.FAILED, ctx)
            return
    d.save()
    release_services.schedule_tick(d, 0)


def _deploy(d: Deployment, ctx: steps.StepContext, created) -> steps.Outcome:
    """Records the revision made outside the lock (or makes it now, on a retried tick)."""
    if created is None:
        try:
            created = steps.create_revision(d, ctx.adapter)
        except (RevisionNotReady, CloudRunError) as exc:
            created = exc
    if isinstance(created, Exception):
        return steps.Outcome.fail(f"new revision not ready: {created}")
    d.new_revision = created.revision
    d.step_state = {**d.step_state, "tag_uri": created.tag_uri}
    if created.created_service:
        d.stable_revision = ""
        ctx.record(
            "revision_ready",
            f"revision {created.revision} ready; first deployment of "
            f"{d.service.name} in {d.environment.name}: it serves all traffic",
            revision=created.revision,
        )
        d.step_state["weight"] = 100
        TrafficChange.objects.create(deployment=d, split={created.revision: 100}, new_percent=100)
    else:
        state = ctx.adapter.get_service_state(d.service.name)
        serving = [t for t in state.traffic if t.percent > 0 and t.revision != created.revision]
        d.stable_revision = max(serving, key=lambda t: t.percent).revision if serving else ""
        ctx.record(
            "revision_ready",
            f"revision {created.revision} ready at 0% "
            f"(stable: {d.stable_revision or 'none'}); tag URL {created.tag_uri}",
            revision=created.revision,
            tag_uri=created.tag_uri,
        )
    d.save(update_fields=["new_revision", "stable_revision", "step_state"])
    return steps.Outcome.next()


def _rollback(d: Deployment, ctx: steps.StepContext) -> steps.Outcome:
    step = d.current_step_def
    target = step["revision"]
    d.stable_revision = step.get("from_revision", "")
    d.new_revision = target
    started = time.monotonic()
    ctx.adapter.set_traffic(d.service.name, {target: 100})
    TrafficChange.objects.create(deployment=d, split={target: 100}, new_percent=100)
    d.step_state = {**d.step_state, "weight": 100}
    ctx.record(
        "traffic",
        f"rolled back: {target} 100% (took {time.monotonic() - started:.1f} s)",
        split={target: 100},
    )
    return steps.Outcome.next()


def _finalize(d: Deployment, ctx: steps.StepContext, step: dict) -> None:
    tag = next((s.get("tag") for s in d.steps if s["type"] == "deploy"), None)
    if tag and not d.is_rollback:
        try:
            ctx.adapter.remove_tag(d.service.name, tag)
        except CloudRunError as exc:
            ctx.record("warning", f"could not remove tag {tag}: {exc}")
    if step.get("keep_previous_s") and d.stable_revision:
        ctx.record(
            "kept",
            f"previous revision {d.stable_revision} kept for rollback for "
            f"{step['keep_previous_s']:g} s",
        )
    d.current_step = len(d.steps)
    _succeed(d, ctx)


def _succeed(d: Deployment, ctx: steps.StepContext) -> None:
    d.save(update_fields=["current_step", "step_state", "stable_revision", "new_revision"])
    release_services._finish(d, Status.SUCCEEDED, "")
    if d.is_rollback and d.rollback_of_id:
        previous = Deployment.objects.get(pk=d.rollback_of_id)
        previous.status = Status.ROLLED_BACK
        previous.reason = f"rolled back by deployment #{d.pk}"
        previous.save(update_fields=["status", "reason"])
    ctx.record(
        "succeeded", f"{d.release.version} serves 100% of {d.service.name} in {d.environment.name}"
    )
    logger.info("deployment %s: succeeded", d.pk)


def _roll_back_traffic(
    d: Deployment, reason: str, status: str, ctx: steps.StepContext | None = None
) -> None:
    """All traffic back to the stable revision, then the deployment ends with `status`."""
    ctx = ctx or _context(d)
    if d.new_revision and not d.stable_revision:
        # The first revision of the service serves everything; say so rather than let the
        # reason suggest traffic went back somewhere.
        reason = f"{reason}; no earlier revision to go back to: {d.new_revision} keeps serving"
    if d.stable_revision and d.new_revision and d.stable_revision != d.new_revision:
        try:
            ctx.adapter.set_traffic(d.service.name, {d.stable_revision: 100})
            TrafficChange.objects.create(
                deployment=d, split={d.stable_revision: 100}, new_percent=0
            )
            d.step_state = {**d.step_state, "weight": 0}
            ctx.record(
                "traffic",
                f"traffic back to stable: {d.stable_revision} 100%",
                split={d.stable_revision: 100},
            )
        except CloudRunError as exc:
            reason = f"{reason}; AND traffic could not be restored to {d.stable_revision}: {exc}"
            _log(d, logging.ERROR, "could not restore traffic: %s", exc)
        tag = next((s.get("tag") for s in d.steps if s["type"] == "deploy"), None)
        if tag:
            try:
                ctx.adapter.remove_tag(d.service.name, tag)
            except CloudRunError:
                pass
    d.save(update_fields=["current_step", "step_state", "stable_revision", "new_revision"])
    release_services._finish(d, status, reason)
    ctx.record(status, reason)
    logger.warning("deployment %s: %s: %s", d.pk, status, reason)
    for hook in release_services.on_failure_hooks():
        hook(d)


def reconcile(now=None, grace_s: float = 15) -> list[int]:
    """Re-enqueues running deployments whose tick is overdue by more than grace_s; returns
    the ids of those it enqueued."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=grace_s)
    overdue = Deployment.objects.filter(status=Status.RUNNING, next_tick_at__lt=cutoff)
    ids = list(overdue.values_list("pk", flat=True))
    enqueued = []
    for pk in ids:
        with transaction.atomic():
            # Checked again under the lock: a tick that ran since the query above may have
            # finished the deployment or scheduled its next tick, and enqueuing one more
            # then would start a second chain of ticks.
            d = (
                Deployment.objects.select_for_update(skip_locked=True)
                .filter(pk=pk, status=Status.RUNNING, next_tick_at__lt=cutoff)
                .first()
            )
            if d is None:
                continue  # a tick holds it (it is not lost), or one ran meanwhile
            logger.warning(
                "deployment %s: tick overdue since %s, enqueued again", pk, d.next_tick_at
            )
            release_services.schedule_tick(d, 0)
            enqueued.append(pk)
    return enqueued
