"""The deployment engine: a durable state machine in PostgreSQL advanced by RQ jobs.

`tick(deployment_id)` runs on the `deploy` queue. It runs the current step through the Cloud
Run adapter, records what happened, and schedules the next tick. `reconcile()` (run
periodically by `manage.py clock`) re-enqueues every running deployment whose tick is overdue,
so a lost job, a killed worker or a Redis restart delays a rollout but never loses it. Steps
are recorded in the same transaction that moves `current_step`, so a tick that dies half-way
leaves the step to be done again, never twice.

Operator actions (abort, pause, promote) lock the deployment row for their own short write;
the engine never holds that lock while it waits for the platform. One tick at a time per
deployment is kept by an advisory lock instead, and the row's `version` tells a tick whether
an operator acted while its step was on the platform.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from django.db import connection, transaction
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


def _load(pk: int, lock: bool = False) -> Deployment | None:
    qs = Deployment.objects.select_related("service", "environment", "release", "job")
    if lock:
        # NO KEY UPDATE, as operator actions take it: neither waits for a key-share lock.
        qs = qs.select_for_update(of=("self",), no_key=True)
    return qs.filter(pk=pk).first()


def _log(d: Deployment, level: int, message: str, *args) -> None:
    text = message % args if args else message
    logger.log(level, "deployment %s: %s", d.pk, text)
    if d.job_id:
        JobLogEntry.objects.create(job_id=d.job_id, level=logging.getLevelName(level), message=text)


# The first key of the engine's advisory locks (the second is the deployment id, a 32-bit
# key), so that they never meet another advisory lock in the same database.
TICK_LOCK = 0x7D1C


def _try_lock(deployment_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [TICK_LOCK, deployment_id])
        return cursor.fetchone()[0]


def _unlock(deployment_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [TICK_LOCK, deployment_id])


def tick(deployment_id: int) -> str:
    """Advances a deployment by one step or several quick ones; returns its status afterwards.

    1. Take the deployment's advisory lock, so that one tick at a time advances it. It belongs
       to the database session: a killed worker's lock goes with its connection. A tick that
       finds it taken returns; the tick holding it sees anything this one would.
    2. Run steps (`_run`): each does its platform work without the row lock, which operator
       actions take, and locks the row only to write its outcome (`_commit`).
    3. Release the advisory lock. If an operator acted after the last write, the tick their
       action enqueued may have found the lock taken in 1: go round again for it.
    """
    while True:
        if not _try_lock(deployment_id):
            status = Deployment.objects.filter(pk=deployment_id).values_list("status", flat=True)
            return status.first() or "missing"
        try:
            status, version = _run(deployment_id)
        finally:
            _unlock(deployment_id)
        moved = Deployment.objects.filter(pk=deployment_id, status=Status.RUNNING).exclude(
            version=version
        )
        if not moved.exists():
            return status


def _run(deployment_id: int) -> tuple[str, int]:
    """Runs steps until one has to wait, pause or end the rollout; returns the status and the
    version of the row as this tick last wrote or read it."""
    d = _load(deployment_id)
    if d is None or d.status != Status.RUNNING:
        return (d.status, d.version) if d else ("missing", 0)

    # Creating a revision takes seconds to minutes: it is done before the step's transaction,
    # which would otherwise stay open as long. Revisions are named by the deployment, so a
    # tick that repeats this after a crash finds the revision made before.
    created = None
    step = d.current_step_def or {}
    ending = d.step_state.get("abort") or d.step_state.get("give_up")
    if step.get("type") == "deploy" and not ending:
        adapter, _ = platform_for(d)
        try:
            created = steps.create_revision(d, adapter)
        except (RevisionNotReady, CloudRunError) as exc:
            created = exc

    for _ in range(MAX_STEPS_PER_TICK):
        d = _load(deployment_id)
        if d is None or d.status != Status.RUNNING:
            return (d.status, d.version) if d else ("missing", 0)
        try:
            with transaction.atomic():
                go_on = _advance(d, created)
        except Exception as exc:
            return _on_error(deployment_id, exc)
        created = None
        if not go_on:
            return d.status, d.version
    with transaction.atomic():
        d = _load(deployment_id, lock=True)
        if d.status == Status.RUNNING:
            release_services.schedule_tick(d, 0)  # quick steps left: let other work in first
    return d.status, d.version


def _on_error(deployment_id: int, exc: Exception) -> tuple[str, int]:
    logger.exception("deployment %s: tick failed", deployment_id)
    with transaction.atomic():
        d = _load(deployment_id, lock=True)
        if d is None or d.status != Status.RUNNING:
            return (d.status, d.version) if d else ("missing", 0)
        errors = int(d.step_state.get("errors", 0)) + 1
        d.step_state = {**d.step_state, "errors": errors}
        message = f"{type(exc).__name__}: {exc}"
        release_services.record_event(
            d, "error", f"step {d.current_step + 1} failed ({errors}/{MAX_ERRORS}): {message}"
        )
        if errors >= MAX_ERRORS:
            # Traffic goes back to stable in the next tick, on the platform like any step.
            d.step_state["give_up"] = f"gave up after {errors} errors: {message}"
        d.save(update_fields=["step_state"])
        release_services.schedule_tick(d, 0 if errors == MAX_ERRORS else min(2**errors, 30))
        return d.status, d.version


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


def _advance(d: Deployment, created) -> bool:
    """Runs the current step and writes its outcome; True when the next step can run now.

    Called in a transaction that holds no lock an operator action waits for: the step's
    records (traffic changes, timeline, analysis) join it, and only `_commit` locks the row.
    """
    seen = dict(d.step_state)
    ctx = _context(d)
    return _commit(d, seen, _step(d, ctx, created), ctx)


def _step(d: Deployment, ctx: steps.StepContext, created) -> steps.Outcome:
    """Does the current step on the platform and records it; changes `d` in memory only."""
    if d.step_state.get("abort"):
        return _restore_stable(d, ctx, Status.ABORTED, d.step_state["abort"])
    if d.step_state.get("give_up"):
        return _restore_stable(d, ctx, Status.FAILED, d.step_state["give_up"])
    if d.step_state.get("promote_full") and d.new_revision:
        # A rollback's plan has no finalize step: then the plan simply ends.
        finalize_at = next(
            (i for i, s in enumerate(d.steps) if s["type"] == "finalize"), len(d.steps)
        )
        ctx.set_traffic(100)
        d.current_step = finalize_at
        ctx.record("promoted", "promoted to 100%: remaining steps skipped")
        d.step_state = {"weight": 100}
        return steps.Outcome("moved")

    step = d.current_step_def
    if step is None:
        return steps.Outcome(Status.SUCCEEDED)
    kind = step["type"]
    if kind == "deploy":
        outcome = _deploy(d, ctx, created)
    elif kind == "rollback":
        outcome = _rollback(d, ctx)
    elif kind == "finalize":
        outcome = _finalize(d, ctx, step)
    else:
        outcome = steps.EXECUTORS[kind](ctx, d, step)
    if outcome.kind == "fail":
        return _restore_stable(d, ctx, Status.FAILED, outcome.reason)
    return outcome


# step_state keys that operator actions write (services.abort, promote, resume).
REQUESTS = ("abort", "promote_full", "promoted", "resumed")


def _commit(d: Deployment, seen: dict, outcome: steps.Outcome, ctx: steps.StepContext) -> bool:
    """Writes a step's outcome with the row locked; True when the next step can run now.

    When an operator acted while the step was on the platform (the row's version moved), what
    the step did is recorded all the same, and their request decides what comes next: a pause
    stops the rollout after this step, an abort or promote is taken up by the next one.
    """
    fresh = _load(d.pk, lock=True)
    changed = fresh.version != d.version
    if changed and fresh.status in Deployment.FINISHED:
        # Ended by services.abort before it had a revision: it stays as the operator left it.
        d.status, d.version = fresh.status, fresh.version
        return False
    advanced = outcome.kind in ("next", "moved")
    if outcome.kind == "next":
        step = d.current_step_def
        ctx.record(
            "step_done",
            f"step {d.current_step + 1}/{len(d.steps)} done: "
            f"{release_services.plans.describe_step(step)}",
            step=d.current_step,
        )
        keep = {k: d.step_state[k] for k in ("weight", "tag_uri") if k in d.step_state}
        d.current_step += 1
        d.step_state = keep
    if changed:
        # The race that remains: an abort that arrives during a traffic update takes effect
        # after it, so the new revision may serve the new weight for a moment.
        d.version, d.status = fresh.version, fresh.status
        d.reason, d.next_tick_at = fresh.reason, fresh.next_tick_at
        requests = {k: fresh.step_state[k] for k in REQUESTS if k in fresh.step_state}
        if requests != {k: seen[k] for k in REQUESTS if k in seen}:
            # As if the operator had waited for this step: the request applies to the step
            # the rollout is at now.
            d.step_state.update(requests)

    if outcome.kind in (Status.FAILED, Status.ABORTED):
        _end(d, ctx, outcome.kind, outcome.reason)  # traffic is back on stable already
        return False
    if outcome.kind == Status.SUCCEEDED and not d.step_state.get("abort"):
        _succeed(d, ctx)
        return False
    if changed or advanced:
        _save(d)
        return d.status == Status.RUNNING  # an abort or promote: the next step takes it up
    if outcome.kind == "wait":
        _save(d)
        release_services.schedule_tick(d, outcome.delay_s)
        return False
    if outcome.kind == "pause":
        d.status = Status.PAUSED
        d.reason = outcome.reason
        d.next_tick_at = None
        _save(d)
        ctx.record("paused", outcome.reason)
        return False
    raise ValueError(f"deployment {d.pk}: unknown outcome {outcome.kind!r}")


def _save(d: Deployment) -> None:
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


def _deploy(d: Deployment, ctx: steps.StepContext, created) -> steps.Outcome:
    """Records the revision made before the step (or makes it now, on a retried tick)."""
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


def _finalize(d: Deployment, ctx: steps.StepContext, step: dict) -> steps.Outcome:
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
    return steps.Outcome(Status.SUCCEEDED)


def _succeed(d: Deployment, ctx: steps.StepContext) -> None:
    _save(d)
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


def _restore_stable(
    d: Deployment, ctx: steps.StepContext, status: str, reason: str
) -> steps.Outcome:
    """All traffic back to the stable revision; the outcome ends the rollout with `status`."""
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
    return steps.Outcome(status, reason=reason)


def _end(d: Deployment, ctx: steps.StepContext, status: str, reason: str) -> None:
    """The deployment ends with `status`, its traffic back on stable (`_restore_stable`)."""
    _save(d)
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
            # then would start a second chain of ticks. (A tick enqueued while another runs
            # finds the advisory lock taken and returns.)
            d = (
                Deployment.objects.select_for_update(skip_locked=True)
                .filter(pk=pk, status=Status.RUNNING, next_tick_at__lt=cutoff)
                .first()
            )
            if d is None:
                continue  # a tick is writing it (it is not lost), or one ran meanwhile
            logger.warning(
                "deployment %s: tick overdue since %s, enqueued again", pk, d.next_tick_at
            )
            release_services.schedule_tick(d, 0)
            enqueued.append(pk)
    return enqueued
