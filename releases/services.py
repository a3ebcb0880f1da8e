"""Services, releases and deployments: every write goes through these functions.

A deployment request passes through the same checks whether it comes from the UI, the API
or an agent, and a dry run reports every reason it would be refused or held:
CI status, an active deployment, the promotion order, a freeze window, gates registered by
other apps (open incidents), and approval for protected environments.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

import django_rq
from django.db import IntegrityError, transaction
from django.utils import timezone

from core import audit, jobs
from core.actors import Actor
from core.errors import Conflict, NotFoundError, PermissionRefused, ValidationFailed, validate_model
from core.models import Job
from core.roles import APPROVE, DEPLOYMENTS_WRITE, RELEASES_WRITE
from environments.models import Environment
from releases import gates, plans, platform
from releases.models import (
    AnalysisTemplate,
    Deployment,
    DeploymentEvent,
    Release,
    Service,
)

logger = logging.getLogger(__name__)

TICK = "agents.devops.cd_pipeline.tick"
Status = Deployment.Status


# Services and releases


def get_service(name: str) -> Service:
    try:
        return Service.objects.get(name=name)
    except Service.DoesNotExist:
        raise NotFoundError(
            f"No service named {name!r}.", fields={"service": ["No such service."]}
        ) from None


def register_service(actor: Actor, name: str, **fields) -> Service:
    actor.require(RELEASES_WRITE)
    allowed = {
        "description",
        "repository_url",
        "health_path",
        "default_strategy",
        "default_steps",
        "owners",
    }
    service = Service(name=name, **{k: v for k, v in fields.items() if k in allowed})
    validate_model(service, "service", validate_constraints=False)
    if service.default_steps:
        for strategy, params in service.default_steps.items():
            plans.build_plan(strategy, params)
    with transaction.atomic():
        try:
            with transaction.atomic():
                service.save()
        except IntegrityError:
            raise Conflict(
                f"A service named {name!r} exists.", fields={"name": ["Must be unique."]}
            ) from None
        audit.record(
            actor,
            "service.create",
            service,
            summary={"name": name, "default_strategy": service.default_strategy},
        )
    logger.info("service %s: registered by %s", name, actor.label)
    return service


def register_release(
    actor: Actor,
    service: Service,
    version: str,
    artifact: str,
    *,
    env: dict | None = None,
    commit_sha: str = "",
    ci_status: str = "unknown",
    ci_url: str = "",
    notes: str = "",
) -> Release:
    actor.require(RELEASES_WRITE)
    errors: dict[str, list[str]] = {}
    if env is not None and (
        not isinstance(env, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        errors["env"] = ["Expected an object of NAME: string value."]
    if ci_status not in Release.CIStatus.values:
        errors["ci_status"] = [f"Expected one of: {', '.join(Release.CIStatus.values)}."]
    if errors:
        raise ValidationFailed("Invalid release: " + ", ".join(errors), fields=errors)
    release = Release(
        service=service,
        version=version,
        artifact=artifact,
        env=env or {},
        commit_sha=commit_sha,
        ci_status=ci_status,
        ci_url=ci_url,
        notes=notes,
        created_by=actor.label,
    )
    validate_model(release, "release", validate_constraints=False)
    with transaction.atomic():
        try:
            with transaction.atomic():
                release.save()
        except IntegrityError:
            raise Conflict(
                f"{service.name} {version} is registered already; releases are "
                "immutable, register a new version.",
                fields={"version": ["Must be unique per service."]},
            ) from None
        audit.record(
            actor,
            "release.create",
            release,
            summary={
                "service": service.name,
                "version": version,
                "artifact": artifact,
                "commit_sha": commit_sha,
                "ci_status": ci_status,
            },
        )
    logger.info(
        "release %s: %s %s registered by %s", release.pk, service.name, version, actor.label
    )
    return release


def ensure_default_template() -> AnalysisTemplate:
    template, _ = AnalysisTemplate.objects.get_or_create(
        name=plans.DEFAULT_TEMPLATE,
        defaults={
            "description": "Error rate at most 2% and p95 latency within 1.5x stable.",
            "metrics": plans.DEFAULT_TEMPLATE_METRICS,
        },
    )
    return template


# Requesting a deployment


@dataclass
class Refusal:
    code: str
    message: str
    status: int = 400
    overridable: bool = False

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "overridable": self.overridable}


@dataclass
class DeploymentCheck:
    """Everything known about a request before it is created (the dry run's answer)."""

    steps: list[dict]
    refusals: list[Refusal] = field(default_factory=list)
    needs_approval: bool = False
    stable_release: Release | None = None

    @property
    def outcome(self) -> str:
        if self.refusals:
            return "refused"
        return "awaiting_approval" if self.needs_approval else "start"

    def as_dict(self) -> dict:
        return {
            "outcome": self.outcome,
            "steps": [{**s, "description": plans.describe_step(s)} for s in self.steps],
            "refusals": [r.as_dict() for r in self.refusals],
            "needs_approval": self.needs_approval,
            "stable_release": self.stable_release.version if self.stable_release else None,
        }


def previous_environment(environment: Environment) -> Environment | None:
    return Environment.objects.filter(order__lt=environment.order).order_by("-order").first()


def current_release(service: Service, environment: Environment) -> Deployment | None:
    """The last deployment that put a release in place (succeeded, not rolled back)."""
    return (
        Deployment.objects.filter(service=service, environment=environment, status=Status.SUCCEEDED)
        .select_related("release")
        .order_by("-finished_at", "-id")
        .first()
    )


def check_deployment(
    actor: Actor,
    service: Service,
    environment: Environment,
    release: Release,
    strategy: str,
    params: dict | None,
    *,
    override_reason: str = "",
    is_rollback: bool = False,
) -> DeploymentCheck:
    """Validates the plan and collects every reason to refuse or hold the request."""
    ensure_default_template()
    if is_rollback:
        steps = [{"type": "rollback"}]
    else:
        steps = plans.build_plan(strategy, params, service.default_steps or None)
    check = DeploymentCheck(steps=steps)
    current = current_release(service, environment)
    check.stable_release = current.release if current else None
    admin_override = actor.is_admin and bool(override_reason.strip())

    if release.ci_status == Release.CIStatus.FAILED and not is_rollback:
        where = f" ({release.ci_url})" if release.ci_url else ""
        check.refusals.append(
            Refusal("ci_failed", f"{service.name} {release.version}: its CI run failed{where}.")
        )
    active = Deployment.objects.filter(
        service=service, environment=environment, status__in=Deployment.ACTIVE
    ).first()
    if active is not None:
        check.refusals.append(
            Refusal(
                "active_deployment",
                f"Deployment #{active.pk} of {service.name} to {environment.name} is "
                f"{active.status}; wait for it, or abort it.",
                status=409,
            )
        )
    if not is_rollback:
        before = previous_environment(environment)
        if (
            before is not None
            and not Deployment.objects.filter(
                release=release, environment=before, status=Status.SUCCEEDED
            ).exists()
        ):
            if not admin_override:
                check.refusals.append(
                    Refusal(
                        "promotion_order",
                        f"{service.name} {release.version} has not succeeded in {before.name}, "
                        f"which comes before {environment.name}.",
                        overridable=True,
                    )
                )
    window = environment.active_freeze()
    if window is not None and not admin_override:
        check.refusals.append(
            Refusal(
                "frozen",
                f"{environment.name} is frozen ({window.describe()}: {window.reason}).",
                status=409,
                overridable=True,
            )
        )
    for hold in gates.holds(service, environment, is_rollback):
        if not (hold.overridable and admin_override):
            check.refusals.append(
                Refusal(hold.code, hold.message, status=409, overridable=hold.overridable)
            )
    check.needs_approval = environment.protected and not is_rollback
    return check


def request_deployment(
    actor: Actor,
    service: Service,
    environment: Environment,
    release: Release,
    strategy: str | None = None,
    params: dict | None = None,
    *,
    override_reason: str = "",
    dry_run: bool = False,
) -> Deployment | DeploymentCheck:
    """Creates a deployment (or, with dry_run, only answers what would happen).

    1. Check permission, build and validate the plan, collect refusals.
    2. Refuse with the first refusal's status (409 for an active deployment or a freeze).
    3. Create the deployment: awaiting_approval in a protected environment, else running
       with its first tick enqueued after commit. The database's unique constraint decides
       between two requests racing for the same service and environment.
    """
    actor.require(DEPLOYMENTS_WRITE)
    if release.service_id != service.pk:
        raise ValidationFailed(
            f"Release {release.version} belongs to {release.service.name}.",
            fields={"version": ["Not a release of this service."]},
        )
    strategy = strategy or service.default_strategy
    check = check_deployment(
        actor, service, environment, release, strategy, params, override_reason=override_reason
    )
    if dry_run:
        return check
    if check.refusals:
        first = check.refusals[0]
        error = Conflict if first.status == 409 else ValidationFailed
        raise error(
            "; ".join(r.message for r in check.refusals),
            code=first.code,
            fields={"refusals": [r.message for r in check.refusals]},
        )
    return _create(
        actor, service, environment, release, strategy, check, override_reason=override_reason
    )


def _create(
    actor,
    service,
    environment,
    release,
    strategy,
    check,
    *,
    override_reason="",
    is_rollback=False,
    rollback_of=None,
) -> Deployment:
    status = Status.AWAITING_APPROVAL if check.needs_approval else Status.RUNNING
    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(
                service=service,
                environment=environment,
                release=release,
                strategy=strategy,
                steps=check.steps,
                status=status,
                stable_release=check.stable_release,
                requested_by=actor.label,
                requested_by_user=actor.user if actor.user_id else None,
                override_reason=override_reason.strip(),
                is_rollback=is_rollback,
                rollback_of=rollback_of,
                reason="waiting for an approver" if check.needs_approval else "",
            )
    except IntegrityError:
        active = Deployment.objects.filter(
            service=service, environment=environment, status__in=Deployment.ACTIVE
        ).first()
        raise Conflict(
            f"Deployment #{active.pk if active else '?'} of {service.name} to "
            f"{environment.name} is active.",
            code="active_deployment",
        ) from None
    with transaction.atomic():
        record_event(
            deployment,
            "requested",
            f"{actor.label} requested {release.version} with {strategy}"
            + (f" (override: {override_reason.strip()})" if override_reason.strip() else ""),
            actor,
        )
        audit.record(
            actor,
            "deployment.request",
            deployment,
            summary={
                "service": service.name,
                "environment": environment.name,
                "version": release.version,
                "strategy": strategy,
                "status": status,
                "override_reason": override_reason.strip(),
                "rollback": is_rollback,
            },
        )
        if status == Status.RUNNING:
            _start(actor, deployment)
    logger.info(
        "deployment %s: %s %s -> %s requested by %s (%s)",
        deployment.pk,
        service.name,
        release.version,
        environment.name,
        actor.label,
        status,
    )
    return deployment


def _start(actor: Actor, deployment: Deployment) -> None:
    deployment.job = jobs.Job.objects.create(
        name=f"deploy {deployment.service.name} {deployment.release.version} to "
        f"{deployment.environment.name}",
        func=TICK,
        queue="deploy",
        params={"deployment": deployment.pk},
        actor=actor.label,
        status=Job.Status.RUNNING,
        started_at=timezone.now(),
        object_type="releases.deployment",
        object_id=str(deployment.pk),
    )
    deployment.started_at = timezone.now()
    deployment.status = Status.RUNNING
    deployment.save(update_fields=["job", "started_at", "status"])
    schedule_tick(deployment, 0)


def schedule_tick(deployment: Deployment, delay_s: float) -> None:
    """Records when the next tick is due and enqueues it after commit. If the enqueue is lost
    (Redis down, worker killed), the reconciler finds the overdue tick and enqueues it again."""
    due = timezone.now() + timedelta(seconds=max(delay_s, 0))
    Deployment.objects.filter(pk=deployment.pk).update(next_tick_at=due)
    deployment.next_tick_at = due
    pk = deployment.pk

    def enqueue():
        queue = django_rq.get_queue("deploy")
        job_id = f"deploy-{pk}-{uuid.uuid4().hex[:8]}"
        try:
            if delay_s <= 0:
                queue.enqueue(TICK, pk, job_id=job_id, result_ttl=60)
            else:
                queue.enqueue_in(timedelta(seconds=delay_s), TICK, pk, job_id=job_id, result_ttl=60)
        except Exception:
            logger.warning(
                "deployment %s: tick not enqueued; the reconciler will retry", pk, exc_info=True
            )

    transaction.on_commit(enqueue)


_FAILURE_HOOKS: list = []


def on_failure(hook) -> None:
    """Registers a function called with a deployment that failed or was aborted (monitoring
    opens an incident from it)."""
    if hook not in _FAILURE_HOOKS:
        _FAILURE_HOOKS.append(hook)


def on_failure_hooks() -> list:
    return list(_FAILURE_HOOKS)


def record_event(
    deployment: Deployment, kind: str, message: str, actor: Actor | str = "", **data
) -> DeploymentEvent:
    label = actor.label if isinstance(actor, Actor) else actor
    return DeploymentEvent.objects.create(
        deployment=deployment, kind=kind, message=message, actor=label, data=data
    )


class PlatformUnavailable(Exception):
    """The platform could not be asked (misconfigured, unreachable, or an API error)."""


def platform_state(service: Service, environment: Environment):
    """The service as the platform reports it (revisions, traffic, URLs), or None when it is
    not deployed there; PlatformUnavailable (with the reason) when the platform cannot tell.
    Pages call this: the adapter gives up on a dead platform after a few seconds."""
    from google.api_core import exceptions as gexc

    try:
        return platform.reader().service_state(service.name, environment)
    except gexc.NotFound:
        return None
    except Exception as exc:
        logger.info("service %s: no state from %s: %s", service.name, environment.name, exc)
        raise PlatformUnavailable(str(exc)) from exc


# Operator actions


def _locked(deployment: Deployment) -> Deployment:
    # FOR NO KEY UPDATE: the engine's open transaction holds a key-share lock on the row while
    # it records a step (every row pointing at the deployment takes one), and an operator
    # action must not wait for that step's platform calls.
    return (
        Deployment.objects.select_for_update(no_key=True)
        .select_related("service", "environment", "release")
        .get(pk=deployment.pk)
    )


def _refuse_state(d: Deployment, action: str, allowed) -> None:
    if d.status not in allowed:
        raise Conflict(
            f"Deployment #{d.pk} is {d.status}; cannot {action} it.", code="invalid_state"
        )


def approve(actor: Actor, deployment: Deployment) -> Deployment:
    actor.require(APPROVE)
    with transaction.atomic():
        d = _locked(deployment)
        _refuse_state(d, "approve", (Status.AWAITING_APPROVAL,))
        if d.requested_by == actor.label:
            raise PermissionRefused(
                f"{actor.label} requested deployment #{d.pk}; another approver must approve it."
            )
        d.approved_by = actor.label
        d.reason = ""
        d.save(update_fields=["approved_by", "reason"])
        record_event(d, "approved", f"approved by {actor.label}", actor)
        audit.record(actor, "deployment.approve", d, summary={"status": "running"})
        _start(actor, d)
    logger.info("deployment %s: approved by %s", d.pk, actor.label)
    return d


def reject(actor: Actor, deployment: Deployment, reason: str = "") -> Deployment:
    actor.require(APPROVE)
    with transaction.atomic():
        d = _locked(deployment)
        _refuse_state(d, "reject", (Status.AWAITING_APPROVAL,))
        if d.requested_by == actor.label:
            raise PermissionRefused(
                f"{actor.label} requested deployment #{d.pk}; withdraw it with abort instead."
            )
        _finish(d, Status.ABORTED, f"rejected by {actor.label}" + (f": {reason}" if reason else ""))
        record_event(d, "rejected", d.reason, actor)
        audit.record(actor, "deployment.reject", d, summary={"reason": reason})
    return d


def _finish(d: Deployment, status: str, reason: str) -> None:
    d.status = status
    d.reason = reason
    d.finished_at = timezone.now()
    d.next_tick_at = None
    d.save(update_fields=["status", "reason", "finished_at", "next_tick_at"])
    if d.job_id:
        job_status = {Status.SUCCEEDED: Job.Status.SUCCEEDED}.get(status, Job.Status.FAILED)
        Job.objects.filter(pk=d.job_id).update(
            status=job_status,
            finished_at=timezone.now(),
            error="" if status == Status.SUCCEEDED else reason,
            result={"status": status, "new_revision": d.new_revision},
        )


def promote(actor: Actor, deployment: Deployment, full: bool = False) -> Deployment:
    """Ends the current pause (or, with full, skips the remaining steps to 100%)."""
    actor.require(DEPLOYMENTS_WRITE)
    with transaction.atomic():
        d = _locked(deployment)
        _refuse_state(d, "promote", (Status.RUNNING, Status.PAUSED))
        step = d.current_step_def or {}
        # "resumed" cleared: a promote skips an analysis that a resume would run again.
        d.step_state = {**d.step_state, "promoted": True, "promote_full": full, "resumed": False}
        if d.status == Status.PAUSED:
            d.status = Status.RUNNING
            d.reason = ""
        d.save(update_fields=["step_state", "status", "reason"])
        what = "to 100%" if full else f"past step {d.current_step + 1} ({step.get('type')})"
        record_event(d, "promoted", f"{actor.label} promoted {what}", actor)
        audit.record(actor, "deployment.promote", d, summary={"full": full, "step": d.current_step})
        schedule_tick(d, 0)
    return d


def pause(actor: Actor, deployment: Deployment) -> Deployment:
    actor.require(DEPLOYMENTS_WRITE)
    with transaction.atomic():
        d = _locked(deployment)
        _refuse_state(d, "pause", (Status.RUNNING,))
        d.status = Status.PAUSED
        d.reason = f"paused by {actor.label}"
        d.next_tick_at = None
        d.save(update_fields=["status", "reason", "next_tick_at"])
        record_event(d, "paused", d.reason, actor)
        audit.record(actor, "deployment.pause", d, summary={"step": d.current_step})
    return d


def resume(actor: Actor, deployment: Deployment) -> Deployment:
    actor.require(DEPLOYMENTS_WRITE)
    with transaction.atomic():
        d = _locked(deployment)
        _refuse_state(d, "resume", (Status.PAUSED,))
        d.status = Status.RUNNING
        d.reason = ""
        # A pause without duration is done once resumed; an inconclusive analysis starts over.
        d.step_state = {**d.step_state, "promoted": True, "resumed": True}
        d.save(update_fields=["status", "reason", "step_state"])
        record_event(d, "resumed", f"resumed by {actor.label}", actor)
        audit.record(actor, "deployment.resume", d, summary={"step": d.current_step})
        schedule_tick(d, 0)
    return d


def abort(actor: Actor, deployment: Deployment, reason: str = "") -> Deployment:
    """Stops the rollout; the engine puts all traffic back on the stable revision."""
    actor.require(DEPLOYMENTS_WRITE)
    with transaction.atomic():
        d = _locked(deployment)
        _refuse_state(d, "abort", Deployment.ACTIVE)
        why = f"aborted by {actor.label}" + (f": {reason}" if reason else "")
        record_event(d, "abort_requested", why, actor)
        audit.record(actor, "deployment.abort", d, summary={"reason": reason})
        # A rollback's only step moves traffic, and a tick may be doing it now: the engine
        # ends it, putting back what that step moved.
        if d.status in (Status.PENDING, Status.AWAITING_APPROVAL) or not (
            d.new_revision or d.is_rollback
        ):
            _finish(d, Status.ABORTED, why)
        else:
            d.step_state = {**d.step_state, "abort": why}
            d.status = Status.RUNNING
            d.save(update_fields=["step_state", "status"])
            schedule_tick(d, 0)
    return d


def retry(actor: Actor, deployment: Deployment, override_reason: str = "") -> Deployment:
    """A new deployment of the same release, strategy and steps (a retried rollback is a
    rollback again: no promotion order, no approval). An admin's override reason lifts the
    promotion order and a freeze again, as for a new request."""
    actor.require(DEPLOYMENTS_WRITE)
    d = deployment
    _refuse_state(d, "retry", (Status.FAILED, Status.ABORTED))
    check = check_deployment(
        actor,
        d.service,
        d.environment,
        d.release,
        d.strategy,
        None,
        override_reason=override_reason,
        is_rollback=d.is_rollback,
    )
    check.steps = d.steps
    if check.refusals:
        first = check.refusals[0]
        error = Conflict if first.status == 409 else ValidationFailed
        raise error("; ".join(r.message for r in check.refusals), code=first.code)
    return _create(
        actor,
        d.service,
        d.environment,
        d.release,
        d.strategy,
        check,
        override_reason=override_reason,
        is_rollback=d.is_rollback,
        rollback_of=d.rollback_of,
    )


def rollback(
    actor: Actor, service: Service, environment: Environment, reason: str = ""
) -> Deployment:
    """Puts the previous successful release of this environment back, as one traffic update.

    1. Find the current release and the successful one before it (its revision is kept).
    2. Abort an active rollout of the service first (its traffic goes back to stable).
    3. Create a rollback deployment that skips analysis and approval.
    """
    actor.require(DEPLOYMENTS_WRITE)
    done = list(
        Deployment.objects.filter(service=service, environment=environment, status=Status.SUCCEEDED)
        .exclude(new_revision="")
        .select_related("release")
        .order_by("-finished_at", "-id")[:10]
    )
    if len(done) < 2:
        raise Conflict(
            f"{service.name} has no earlier successful release in "
            f"{environment.name} to roll back to.",
            code="nothing_to_roll_back",
        )
    current, target = (
        done[0],
        next((x for x in done[1:] if x.new_revision != done[0].new_revision), None),
    )
    if target is None:
        raise Conflict(
            "No earlier revision differs from the current one.", code="nothing_to_roll_back"
        )
    active = Deployment.objects.filter(
        service=service, environment=environment, status__in=Deployment.ACTIVE
    ).first()
    if active is not None:
        abort(actor, active, reason=f"rollback requested{': ' + reason if reason else ''}")
        raise Conflict(
            f"Deployment #{active.pk} was active: it is being aborted (traffic back "
            "to stable). Roll back again once it has stopped if still needed.",
            code="active_deployment",
        )
    check = check_deployment(
        actor, service, environment, target.release, current.strategy, None, is_rollback=True
    )
    check.steps = [
        {"type": "rollback", "revision": target.new_revision, "from_revision": current.new_revision}
    ]
    if check.refusals:
        first = check.refusals[0]
        raise Conflict("; ".join(r.message for r in check.refusals), code=first.code)
    deployment = _create(
        actor,
        service,
        environment,
        target.release,
        current.strategy,
        check,
        override_reason=reason,
        is_rollback=True,
        rollback_of=current,
    )
    return deployment


def save_analysis_template(
    actor: Actor, name: str, metrics: list, description: str = "", **_
) -> AnalysisTemplate:
    """Creates or replaces an analysis template after checking every metric."""
    actor.require(DEPLOYMENTS_WRITE)
    errors: dict[str, list[str]] = {}
    if not isinstance(metrics, list) or not metrics:
        errors["metrics"] = ["Expected a non-empty list of metric checks."]
    else:
        for i, m in enumerate(metrics):
            where = f"metrics.{i}"
            if not isinstance(m, dict):
                errors[where] = ["Expected an object."]
                continue
            if not isinstance(m.get("name"), str) or not m["name"]:
                errors[f"{where}.name"] = ["Required."]
            if m.get("kind") not in ("error_rate", "latency", "request_rate", "metric"):
                errors[f"{where}.kind"] = ["Expected error_rate, latency, request_rate or metric."]
            if m.get("kind") == "metric" and not m.get("metric_type"):
                errors[f"{where}.metric_type"] = ["Required for kind metric."]
            if not any(k in m for k in ("max", "min", "max_ratio_to_stable")):
                errors[f"{where}.max"] = ["Give a condition: max, min or max_ratio_to_stable."]
            for key in ("max", "min", "max_ratio_to_stable", "interval_s"):
                if key in m and (isinstance(m[key], bool) or not isinstance(m[key], (int, float))):
                    errors[f"{where}.{key}"] = ["Expected a number."]
            if (
                "interval_s" in m
                and isinstance(m["interval_s"], (int, float))
                and m["interval_s"] < 1
            ):
                errors[f"{where}.interval_s"] = ["Expected at least 1 second."]
            for key in ("count", "failure_limit", "inconclusive_limit", "min_requests"):
                if key in m and (
                    isinstance(m[key], bool) or not isinstance(m[key], int) or m[key] < 0
                ):
                    errors[f"{where}.{key}"] = ["Expected a whole number, 0 or more."]
    if errors:
        raise ValidationFailed("Invalid analysis template: " + ", ".join(errors), fields=errors)
    with transaction.atomic():
        template, created = AnalysisTemplate.objects.update_or_create(
            name=name, defaults={"metrics": metrics, "description": description}
        )
        audit.record(
            actor,
            "analysis_template.save",
            template,
            summary={"name": name, "metrics": [m["name"] for m in metrics], "created": created},
        )
    return template
