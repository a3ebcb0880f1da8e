"""Operations on incidents, alert policies, metrics and health checks. Views, the API, jobs
and agents call these; each write runs in one transaction and records its audit event.

Rules every incident follows:
- one open incident per key: a firing alert or a failing check adds to the open incident
  with its key instead of opening another (the database's partial unique index decides);
- one incident per failed deployment, however often the failure hook runs;
- every change lands on the incident's timeline with who and when.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from core import audit, jobs
from core.actors import Actor
from core.errors import Conflict, NotFoundError, ValidationFailed
from core.models import AuditEvent
from core.roles import ENVIRONMENTS_WRITE, INCIDENTS_WRITE
from environments import services as env_services
from environments.models import Environment
from monitoring.models import (
    AlertPolicy,
    HealthCheck,
    HealthCheckResult,
    Incident,
    IncidentEvent,
    MetricRollup,
    MetricSample,
    Severity,
)
from releases import services as release_services
from releases.models import Deployment, Service

logger = logging.getLogger(__name__)

Kind = IncidentEvent.Kind
State = Incident.State

POSTMORTEM_FIELDS = ("summary", "impact", "root_cause", "action_items")
CHANGE_ACTIONS = ("config.set", "config.promote", "secret.set", "secret.delete")
WHAT_CHANGED_WINDOW = timedelta(hours=24)
SYNC_JOB = "agents.devops.health.sync_alert_policy"
DELETE_SYNC_JOB = "agents.devops.health.delete_alert_policy"
NOTIFY_JOB = "monitoring.jobs.deliver_notification"


# Incidents: reading


def get_incident(pk) -> Incident:
    incident = (
        Incident.objects.filter(pk=pk)
        .select_related("commander", "deployment", "alert_policy")
        .prefetch_related("services", "environments")
        .first()
    )
    if incident is None:
        raise NotFoundError(f"No incident #{pk}.")
    return incident


def open_incidents():
    return Incident.objects.filter(state__in=Incident.OPEN)


def blocking_incident(service: Service, environment: Environment) -> Incident | None:
    """The oldest open SEV1/SEV2 incident of this service in this environment, if any."""
    return (
        open_incidents()
        .filter(severity__in=("sev1", "sev2"), services=service, environments=environment)
        .order_by("opened_at", "id")
        .first()
    )


@dataclass
class Change:
    """One line of "what changed": a deployment or a config or secret change."""

    at: datetime
    kind: str  # "deployment", "config", "secret"
    summary: str
    actor: str
    environment: str
    deployment_id: int | None = None
    audit_id: int | None = None
    audit_action: str = ""
    audit_object_id: str = ""


def what_changed(incident: Incident, now: datetime | None = None) -> list[Change]:
    """Deployments, config and secret changes of the incident's services and environments
    from 24 h before it opened until now, newest first (three queries)."""
    since = incident.opened_at - WHAT_CHANGED_WINDOW
    services = list(incident.services.all())
    environments = list(incident.environments.all())
    changes: list[Change] = []
    if services:
        deployments = Deployment.objects.filter(created_at__gte=since, service__in=services)
        if environments:
            deployments = deployments.filter(environment__in=environments)
        for d in deployments.select_related("service", "environment", "release")[:100]:
            what = "rollback to" if d.is_rollback else "deployment of"
            changes.append(
                Change(
                    at=d.created_at,
                    kind="deployment",
                    summary=f"#{d.pk} {what} {d.service.name} {d.release.version} ({d.status})",
                    actor=d.requested_by,
                    environment=d.environment.name,
                    deployment_id=d.pk,
                )
            )
    if environments:
        names = {e.name for e in environments}
        by_pk = {str(e.pk): e.name for e in environments}
        names_env = Q()
        for env in environments:
            names_env |= (Q(object_type="environments.environment") & Q(object_id=str(env.pk))) | Q(
                summary__environment=env.name
            )
        events = AuditEvent.objects.filter(
            names_env, created_at__gte=since, action__in=CHANGE_ACTIONS
        ).order_by("-created_at")[:100]
        wanted = {s.name for s in services}
        for event in events:
            service = (event.summary or {}).get("service", "*")
            if wanted and service not in ("*", "", None) and service not in wanted:
                continue  # a change of another service in the same environment
            env_name = (event.summary or {}).get("environment") or by_pk.get(event.object_id, "")
            if env_name not in names:
                continue
            changes.append(
                Change(
                    at=event.created_at,
                    kind="secret" if event.action.startswith("secret") else "config",
                    summary=_describe_change(event),
                    actor=event.actor,
                    environment=env_name,
                    audit_id=event.pk,
                    audit_action=event.action,
                    audit_object_id=event.object_id,
                )
            )
    changes.sort(key=lambda c: c.at, reverse=True)
    return changes


def _describe_change(event: AuditEvent) -> str:
    summary = event.summary or {}
    scope = summary.get("service", "*")
    scope_text = "" if scope in ("*", "") else f" of {scope}"
    if event.action == "config.set":
        keys = ", ".join(sorted(summary.get("changes", {})))
        return f"config{scope_text} changed: {keys}"
    if event.action == "config.promote":
        return f"config promoted from {summary.get('from')}: {', '.join(summary.get('keys', []))}"
    if event.action == "secret.set":
        return f"secret {summary.get('name')}{scope_text} set (v{summary.get('version')})"
    return f"secret {summary.get('name')}{scope_text} removed"


# Incidents: writing


def _event(
    incident: Incident, kind: str, message: str, actor: Actor | str = "", **data
) -> IncidentEvent:
    label = actor.label if isinstance(actor, Actor) else actor
    return IncidentEvent.objects.create(
        incident=incident, kind=kind, message=message, actor=label, data=data
    )


def _clean_text(value, field_name: str, max_length: int, *, required: bool) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValidationFailed(f"Invalid {field_name}.", fields={field_name: ["Expected text."]})
    value = value.strip()
    if required and not value:
        raise ValidationFailed(
            f"{field_name} is required.", fields={field_name: ["This field is required."]}
        )
    if len(value) > max_length:
        raise ValidationFailed(
            f"{field_name} is too long.", fields={field_name: [f"At most {max_length} characters."]}
        )
    return value


def _severity(value) -> str:
    if isinstance(value, str) and value.lower() in Severity.values:
        return value.lower()
    raise ValidationFailed(
        "Invalid severity.", fields={"severity": ["Expected one of: sev1, sev2, sev3, sev4."]}
    )


def _services_named(names, field_name: str = "services") -> list[Service]:
    names = list(names or [])
    found = {s.name: s for s in Service.objects.filter(name__in=names)}
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ValidationFailed(
            f"Unknown service(s): {', '.join(map(str, unknown))}.",
            fields={field_name: [f"No service named {n!r}." for n in unknown]},
        )
    return [found[n] for n in dict.fromkeys(names)]


def _environments_named(names, field_name: str = "environments") -> list[Environment]:
    names = list(names or [])
    found = {e.name: e for e in Environment.objects.filter(name__in=names)}
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ValidationFailed(
            f"Unknown environment(s): {', '.join(map(str, unknown))}.",
            fields={field_name: [f"No environment named {n!r}." for n in unknown]},
        )
    return [found[n] for n in dict.fromkeys(names)]


@dataclass
class Opened:
    incident: Incident
    created: bool  # False: the event was added to the open incident with the same key


def open_incident(
    actor: Actor,
    title: str,
    *,
    severity: str = Severity.SEV3,
    services: list[Service] | list[str] = (),
    environments: list[Environment] | list[str] = (),
    description: str = "",
    key: str = "",
    source: str = Incident.Source.PERSON,
    deployment: Deployment | None = None,
    alert_policy: AlertPolicy | None = None,
    event_kind: str = Kind.OPENED,
    event_message: str = "",
    event_data: dict | None = None,
    repeat_kind: str | None = None,
    repeat_message: str = "",
    check_scope: bool = True,
) -> Opened:
    """Opens an incident, or, when one with the same key is open, adds the event to it.

    1. Validate the fields and resolve service and environment names.
    2. With a key, lock the open incident with that key and add the event to it (the
       repeat_kind event, when given, else the event_kind one).
    3. Otherwise create the incident with its first events; the partial unique index on open
       keys makes a racing second opener fall back to step 2.
    """
    if check_scope:
        actor.require(INCIDENTS_WRITE)
    title = _clean_text(title, "title", 200, required=True)
    description = _clean_text(description, "description", 10000, required=False)
    key = _clean_text(key, "key", 200, required=False)
    severity = _severity(severity)
    services = [s for s in services if isinstance(s, Service)] + _services_named(
        [s for s in services if not isinstance(s, Service)]
    )
    environments = [e for e in environments if isinstance(e, Environment)] + _environments_named(
        [e for e in environments if not isinstance(e, Environment)]
    )
    message = event_message or title
    for _attempt in range(2):
        if key:
            existing = _add_to_open(
                actor,
                key,
                repeat_kind or event_kind,
                repeat_message or message,
                event_data or {},
            )
            if existing is not None:
                return Opened(existing, False)
        try:
            with transaction.atomic():
                incident = Incident.objects.create(
                    title=title,
                    description=description,
                    severity=severity,
                    source=source,
                    key=key,
                    deployment=deployment,
                    alert_policy=alert_policy,
                    opened_by=actor.label,
                )
                incident.services.set(services)
                incident.environments.set(environments)
                where = _where(services, environments)
                _event(
                    incident,
                    Kind.OPENED,
                    f"{actor.label} opened {incident.get_severity_display()}: {title}{where}",
                    actor,
                    source=source,
                )
                if event_kind != Kind.OPENED:
                    _event(incident, event_kind, message, actor, **(event_data or {}))
                audit.record(
                    actor,
                    "incident.open",
                    incident,
                    summary={
                        "severity": severity,
                        "source": source,
                        "key": key,
                        "services": [s.name for s in services],
                        "environments": [e.name for e in environments],
                    },
                )
        except IntegrityError:
            if not key and deployment is None:
                raise
            if deployment is not None:
                existing = Incident.objects.filter(deployment=deployment, source=source).first()
                if existing is not None:
                    return Opened(existing, False)
            continue  # another opener won the race for this key: add to theirs
        logger.info(
            "incident %s: opened %s by %s (key %r)", incident.pk, severity, actor.label, key
        )
        return Opened(incident, True)
    raise Conflict(f"Could not open or find the incident with key {key!r}.")


def _where(services, environments) -> str:
    parts = []
    if services:
        parts.append(", ".join(s.name for s in services))
    if environments:
        parts.append("in " + ", ".join(e.name for e in environments))
    return f" ({' '.join(parts)})" if parts else ""


def _add_to_open(actor: Actor, key: str, kind: str, message: str, data: dict) -> Incident | None:
    with transaction.atomic():
        incident = open_incidents().select_for_update().filter(key=key).first()
        if incident is None:
            return None
        _event(incident, kind, message, actor, **data)
    logger.info("incident %s: %s added (key %r)", incident.pk, kind, key)
    return incident


def _locked(incident: Incident) -> Incident:
    return Incident.objects.select_for_update().get(pk=incident.pk)


def add_event(
    actor: Actor, incident: Incident, kind: str, message: str, data: dict | None = None
) -> IncidentEvent:
    """A note, or an event an agent reports (alert fired, remediation taken, ...)."""
    actor.require(INCIDENTS_WRITE)
    if kind not in IncidentEvent.POSTABLE:
        raise ValidationFailed(
            "Invalid kind.",
            fields={"kind": [f"Expected one of: {', '.join(IncidentEvent.POSTABLE)}."]},
        )
    message = _clean_text(message, "message", 10000, required=True)
    if data is not None and not isinstance(data, dict):
        raise ValidationFailed("Invalid data.", fields={"data": ["Expected an object."]})
    with transaction.atomic():
        event = _event(incident, kind, message, actor, **(data or {}))
        audit.record(actor, "incident.event", incident, summary={"kind": kind})
    return event


def acknowledge(actor: Actor, incident: Incident) -> Incident:
    actor.require(INCIDENTS_WRITE)
    with transaction.atomic():
        i = _locked(incident)
        if i.state not in Incident.UNACKNOWLEDGED:
            raise Conflict(f"Incident #{i.pk} is {i.state}; cannot acknowledge it.")
        i.state = State.ACKNOWLEDGED
        i.acknowledged_at = timezone.now()
        i.acknowledged_by = actor.label
        fields = ["state", "acknowledged_at", "acknowledged_by"]
        if i.commander_id is None and actor.user_id:
            i.commander_id = actor.user_id
            fields.append("commander")
        i.save(update_fields=fields)
        _event(i, Kind.ACKNOWLEDGED, f"acknowledged by {actor.label}", actor)
        audit.record(actor, "incident.acknowledge", i, summary={"state": i.state})
    logger.info("incident %s: acknowledged by %s", i.pk, actor.label)
    return i


def resolve(actor: Actor, incident: Incident, note: str = "") -> Incident:
    actor.require(INCIDENTS_WRITE)
    note = _clean_text(note, "note", 10000, required=False)
    with transaction.atomic():
        i = _locked(incident)
        if not i.is_open:
            raise Conflict(f"Incident #{i.pk} is {i.state}; cannot resolve it.")
        i.state = State.RESOLVED
        i.resolved_at = timezone.now()
        i.resolved_by = actor.label
        i.save(update_fields=["state", "resolved_at", "resolved_by"])
        _event(
            i, Kind.RESOLVED, f"resolved by {actor.label}" + (f": {note}" if note else ""), actor
        )
        audit.record(actor, "incident.resolve", i, summary={"note": note})
    logger.info("incident %s: resolved by %s", i.pk, actor.label)
    return i


def reopen(actor: Actor, incident: Incident, reason: str = "") -> Incident:
    actor.require(INCIDENTS_WRITE)
    reason = _clean_text(reason, "reason", 10000, required=False)
    try:
        with transaction.atomic():
            i = _locked(incident)
            if i.state != State.RESOLVED:
                raise Conflict(f"Incident #{i.pk} is {i.state}; only a resolved one reopens.")
            i.state = State.REOPENED
            i.resolved_at = None
            i.resolved_by = ""
            i.save(update_fields=["state", "resolved_at", "resolved_by"])
            _event(
                i,
                Kind.REOPENED,
                f"reopened by {actor.label}" + (f": {reason}" if reason else ""),
                actor,
            )
            audit.record(actor, "incident.reopen", i, summary={"reason": reason})
    except IntegrityError:
        raise Conflict(
            f"Another incident with key {incident.key!r} is open; add to that one instead.",
            code="duplicate_key",
        ) from None
    logger.info("incident %s: reopened by %s", i.pk, actor.label)
    return i


def update_incident(actor: Actor, incident: Incident, **fields) -> Incident:
    """Changes the commander (a username, or "" for none), severity, title, description, and,
    once resolved, the postmortem fields."""
    actor.require(INCIDENTS_WRITE)
    allowed = {"commander", "severity", "title", "description", *POSTMORTEM_FIELDS}
    unknown = set(fields) - allowed
    if unknown:
        raise ValidationFailed(
            "Unknown fields.", fields={k: ["Unknown field."] for k in sorted(unknown)}
        )
    with transaction.atomic():
        i = _locked(incident)
        changes: dict[str, dict] = {}
        if "commander" in fields:
            commander = _commander(fields["commander"])
            if commander != i.commander:
                changes["commander"] = {
                    "from": i.commander.get_username() if i.commander else "",
                    "to": commander.get_username() if commander else "",
                }
                i.commander = commander
        if "severity" in fields:
            severity = _severity(fields["severity"])
            if severity != i.severity:
                changes["severity"] = {"from": i.severity, "to": severity}
                i.severity = severity
        for name, limit, required in (("title", 200, True), ("description", 10000, False)):
            if name in fields:
                value = _clean_text(fields[name], name, limit, required=required)
                if value != getattr(i, name):
                    changes[name] = {"from": getattr(i, name), "to": value}
                    setattr(i, name, value)
        postmortem = {k: fields[k] for k in POSTMORTEM_FIELDS if k in fields}
        if postmortem and i.state != State.RESOLVED:
            raise ValidationFailed(
                f"Incident #{i.pk} is {i.state}: the postmortem is written once it is resolved.",
                fields={k: ["Resolve the incident first."] for k in postmortem},
            )
        for name, value in postmortem.items():
            value = _clean_text(value, name, 20000, required=False)
            if value != getattr(i, name):
                changes[name] = {"changed": True}
                setattr(i, name, value)
        if changes:
            i.save()
            described = ", ".join(
                f"{k} {v['from'] or '—'} → {v['to'] or '—'}" if "from" in v else f"{k} updated"
                for k, v in changes.items()
            )
            _event(i, Kind.CHANGED, f"{actor.label} changed {described}", actor, changes=changes)
            audit.record(actor, "incident.update", i, summary=changes)
            logger.info("incident %s: %s changed by %s", i.pk, sorted(changes), actor.label)
    return get_incident(i.pk)


def _commander(value):
    if value in (None, ""):
        return None
    user = get_user_model().objects.filter(username=value, is_active=True).first()
    if user is None:
        raise ValidationFailed(
            "Unknown commander.", fields={"commander": [f"No active user named {value!r}."]}
        )
    return user


# Remediation from the incident page


def _affected_pair(incident: Incident, service: str, environment: str):
    services = {s.name: s for s in incident.services.all()}
    environments = {e.name: e for e in incident.environments.all()}
    if service not in services:
        raise ValidationFailed(
            f"{service!r} is not a service of incident #{incident.pk}.",
            fields={"service": [f"Expected one of: {', '.join(services) or 'none'}."]},
        )
    if environment not in environments:
        raise ValidationFailed(
            f"{environment!r} is not an environment of incident #{incident.pk}.",
            fields={"environment": [f"Expected one of: {', '.join(environments) or 'none'}."]},
        )
    return services[service], environments[environment]


def remediate_rollback(
    actor: Actor, incident: Incident, service: str, environment: str
) -> Deployment:
    """Rolls the service's last deployment back in that environment; on the timeline."""
    actor.require(INCIDENTS_WRITE)
    svc, env = _affected_pair(incident, service, environment)
    reason = f"incident #{incident.pk}: {incident.title}"
    deployment = release_services.rollback(actor, svc, env, reason=reason)
    with transaction.atomic():
        _event(
            incident,
            Kind.REMEDIATION,
            f"{actor.label} rolled {svc.name} back in {env.name} to "
            f"{deployment.release.version} (deployment #{deployment.pk})",
            actor,
            action="rollback",
            deployment=deployment.pk,
            service=svc.name,
            environment=env.name,
        )
        audit.record(
            actor,
            "incident.remediate",
            incident,
            summary={"action": "rollback", "deployment": deployment.pk, "service": svc.name},
        )
    logger.info("incident %s: rollback deployment %s by %s", incident.pk, deployment.pk, actor)
    return deployment


FREEZE_HOURS = 2


def remediate_freeze(
    actor: Actor, incident: Incident, service: str, environment: str, hours: float = FREEZE_HOURS
):
    """Freezes deployments in the environment for `hours`. Freeze windows are per environment:
    this holds every service there, not only the incident's."""
    actor.require(INCIDENTS_WRITE)
    actor.require(ENVIRONMENTS_WRITE)
    svc, env = _affected_pair(incident, service, environment)
    now = timezone.now()
    with transaction.atomic():
        window = env_services.add_freeze_window(
            actor,
            env,
            f"incident #{incident.pk} ({svc.name}): {incident.title}"[:300],
            starts_at=now,
            ends_at=now + timedelta(hours=hours),
        )
        _event(
            incident,
            Kind.REMEDIATION,
            f"{actor.label} froze deployments in {env.name} for {hours:g} h (freeze windows "
            f"hold every service of the environment, not only {svc.name})",
            actor,
            action="freeze",
            freeze_window=window.pk,
            environment=env.name,
        )
        audit.record(
            actor,
            "incident.remediate",
            incident,
            summary={"action": "freeze", "environment": env.name, "hours": hours},
        )
    logger.info("incident %s: %s frozen for %s h by %s", incident.pk, env.name, hours, actor)
    return window


# Hooks from releases


def incident_for_failed_deployment(deployment: Deployment) -> Incident | None:
    """releases' on_failure hook: one incident per failed or aborted deployment, with the
    failure and the automatic rollback on its timeline. A failure here never fails the
    deployment engine's tick."""
    if deployment.status not in (Deployment.Status.FAILED, Deployment.Status.ABORTED):
        return None
    if deployment.status == Deployment.Status.ABORTED and deployment.reason.startswith(
        ("aborted by", "rejected by")
    ):
        return None  # a person stopped it; nothing broke
    actor = Actor.system("monitoring")
    try:
        with transaction.atomic():
            return _open_for_deployment(actor, deployment)
    except Exception:
        logger.exception("deployment %s: could not open its incident", deployment.pk)
        return None


def _open_for_deployment(actor: Actor, d: Deployment) -> Incident:
    existing = Incident.objects.filter(deployment=d, source=Incident.Source.DEPLOYMENT).first()
    if existing is not None:
        return existing
    severity = Severity.SEV2 if d.environment.protected else Severity.SEV3
    opened = open_incident(
        actor,
        f"Deployment #{d.pk} of {d.service.name} {d.release.version} to "
        f"{d.environment.name} {d.status}",
        severity=severity,
        services=[d.service],
        environments=[d.environment],
        description=d.reason,
        key=f"deployment:{d.pk}",
        source=Incident.Source.DEPLOYMENT,
        deployment=d,
        event_kind=Kind.DEPLOYMENT_FAILED,
        event_message=f"deployment #{d.pk} {d.status}: {d.reason}",
        event_data={"deployment": d.pk},
        check_scope=False,
    )
    incident = opened.incident
    if opened.created:
        back = d.stable_revision or "the stable revision"
        if d.stable_revision and d.new_revision and d.stable_revision != d.new_revision:
            message = (
                f"automatic rollback: all traffic of {d.service.name} back on {back}; "
                f"{d.new_revision} took none"
            )
        else:
            message = f"automatic rollback: {d.service.name} keeps serving {back}"
        _event(
            incident,
            Kind.ROLLED_BACK,
            message,
            actor,
            deployment=d.pk,
            revision=d.stable_revision,
            automatic=True,
        )
    logger.info("deployment %s: incident %s opened for its failure", d.pk, incident.pk)
    return incident


def note_deployment(deployment: Deployment, created: bool) -> None:
    """Adds a deployment that starts, or a rollback that finishes, to the timeline of every
    open incident of its service in its environment."""
    incidents = list(
        open_incidents().filter(
            services=deployment.service_id, environments=deployment.environment_id
        )
    )
    if not incidents:
        return
    if created:
        what = "rollback" if deployment.is_rollback else "deployment"
        kind = Kind.ROLLED_BACK if deployment.is_rollback else Kind.DEPLOYMENT_STARTED
        message = f"{what} #{deployment.pk} of {deployment.release} requested by " + (
            deployment.requested_by
        )
    else:
        kind = Kind.ROLLED_BACK
        message = f"rollback #{deployment.pk} finished: {deployment.release} serves again"
    for incident in incidents:
        if incident.deployment_id == deployment.pk:
            continue
        _event(incident, kind, message, deployment.requested_by, deployment=deployment.pk)


# Alert policies

POLICY_FIELDS = (
    "name",
    "service",
    "environment",
    "metric",
    "window_s",
    "comparison",
    "threshold",
    "duration_s",
    "severity",
    "webhook_url",
    "emails",
    "enabled",
)


def get_alert_policy(pk) -> AlertPolicy:
    policy = AlertPolicy.objects.select_related("service", "environment").filter(pk=pk).first()
    if policy is None:
        raise NotFoundError(f"No alert policy {pk}.")
    return policy


def _check_policy(policy: AlertPolicy) -> None:
    from django.core.exceptions import ValidationError

    errors: dict[str, list[str]] = {}
    try:
        policy.full_clean(exclude=["created_by", "state"], validate_unique=False)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if policy.window_s < 60 or policy.window_s > 86400:
        errors.setdefault("window_s", []).append("Expected 60 to 86400 seconds.")
    if policy.metric.startswith("latency_p") and policy.metric not in (
        "latency_p50",
        "latency_p95",
        "latency_p99",
    ):
        errors.setdefault("metric", []).append("Expected latency_p50, latency_p95 or latency_p99.")
    if errors:
        raise ValidationFailed("Invalid alert policy: " + ", ".join(errors), fields=errors)


def create_alert_policy(actor: Actor, **fields) -> AlertPolicy:
    actor.require(INCIDENTS_WRITE)
    unknown = set(fields) - set(POLICY_FIELDS)
    if unknown:
        raise ValidationFailed("Unknown fields.", fields={k: ["Unknown field."] for k in unknown})
    policy = AlertPolicy(created_by=actor.label, **fields)
    _check_policy(policy)
    with transaction.atomic():
        try:
            with transaction.atomic():
                policy.save()
        except IntegrityError:
            raise Conflict(
                f"An alert policy named {policy.name!r} exists.",
                fields={"name": ["Must be unique."]},
            ) from None
        audit.record(actor, "alert_policy.create", policy, summary=_policy_summary(policy))
        _enqueue_sync(actor, policy)
    logger.info("alert policy %s: created by %s: %s", policy.pk, actor.label, policy.describe())
    return policy


def update_alert_policy(actor: Actor, policy: AlertPolicy, **fields) -> AlertPolicy:
    actor.require(INCIDENTS_WRITE)
    unknown = set(fields) - set(POLICY_FIELDS)
    if unknown:
        raise ValidationFailed("Unknown fields.", fields={k: ["Unknown field."] for k in unknown})
    with transaction.atomic():
        p = AlertPolicy.objects.select_for_update().get(pk=policy.pk)
        changes = {}
        for key, value in fields.items():
            old = getattr(p, key)
            if old != value:
                changes[key] = {"from": str(old), "to": str(value)}
                setattr(p, key, value)
        _check_policy(p)
        if changes:
            try:
                with transaction.atomic():
                    p.save()
            except IntegrityError:
                raise Conflict(
                    f"An alert policy named {p.name!r} exists.",
                    fields={"name": ["Must be unique."]},
                ) from None
            audit.record(actor, "alert_policy.update", p, summary=changes)
            _enqueue_sync(actor, p)
            logger.info("alert policy %s: %s changed by %s", p.pk, sorted(changes), actor.label)
    return get_alert_policy(p.pk)


def delete_alert_policy(actor: Actor, policy: AlertPolicy) -> None:
    actor.require(INCIDENTS_WRITE)
    with transaction.atomic():
        audit.record(actor, "alert_policy.delete", policy, summary=_policy_summary(policy))
        if policy.cloud_name:
            jobs.enqueue(
                DELETE_SYNC_JOB,
                name=f"delete alert policy {policy.name} from Cloud Monitoring",
                actor=actor,
                params={"environment": policy.environment_id, "cloud_name": policy.cloud_name},
            )
        pk = policy.pk
        policy.delete()
    logger.info("alert policy %s: deleted by %s", pk, actor.label)


def _policy_summary(policy: AlertPolicy) -> dict:
    return {
        "name": policy.name,
        "condition": policy.describe(),
        "severity": policy.severity,
        "webhook": bool(policy.webhook_url),
        "emails": len(policy.email_list),
    }


def _enqueue_sync(actor: Actor, policy: AlertPolicy) -> None:
    """Creates or updates the policy's copy in Cloud Monitoring, in the worker."""
    jobs.enqueue(
        SYNC_JOB,
        name=f"sync alert policy {policy.name} to Cloud Monitoring",
        actor=actor,
        params={"policy": policy.pk},
        obj=policy,
    )


def record_policy_sync(policy_id: int, cloud_name: str = "", error: str = "") -> None:
    updates = {"cloud_sync_error": error[:2000]}
    if cloud_name:
        updates["cloud_name"] = cloud_name
    AlertPolicy.objects.filter(pk=policy_id).update(**updates)


def record_evaluation(
    policy: AlertPolicy, value: float | None, now: datetime | None = None, detail: str = ""
) -> Incident | None:
    """Applies one evaluation of a policy; returns the incident it fired into, if it fired.

    1. No data: state no_data, nothing fires (too little traffic is not a breach).
    2. Breaching: remember since when; once it has held for duration_s, fire: open the
       incident keyed "alert:<id>" or add the firing to the open one; notify the channels
       when the policy starts firing (not on every evaluation while it keeps firing).
    3. Not breaching: back to ok; an open incident of the policy hears that it cleared.
    """
    now = now or timezone.now()
    actor = Actor.system(f"alert:{policy.name}")
    with transaction.atomic():
        p = AlertPolicy.objects.select_for_update().select_related("service", "environment")
        p = p.get(pk=policy.pk)
        was = p.state
        p.last_value = value
        p.last_evaluated_at = now
        incident = None
        if value is None:
            p.state = AlertPolicy.State.NO_DATA
            p.breaching_since = None
        elif p.breaches(value):
            p.breaching_since = p.breaching_since or now
            held = (now - p.breaching_since).total_seconds()
            if held >= p.duration_s:
                p.state = AlertPolicy.State.FIRING
                incident = _fire(actor, p, value, detail, starting=was != AlertPolicy.State.FIRING)
            else:
                p.state = AlertPolicy.State.PENDING
        else:
            p.state = AlertPolicy.State.OK
            p.breaching_since = None
            if was == AlertPolicy.State.FIRING:
                open_one = open_incidents().filter(key=p.key).first()
                if open_one is not None:
                    _event(
                        open_one,
                        Kind.ALERT_CLEARED,
                        f"{p.name}: condition cleared ({p.metric} = {value:.4g})",
                        actor,
                        value=value,
                    )
        p.save(update_fields=["state", "breaching_since", "last_value", "last_evaluated_at"])
    if p.state != was:
        logger.info("alert policy %s: %s -> %s (value %s)", p.pk, was, p.state, value)
    return incident


def _fire(actor: Actor, p: AlertPolicy, value: float, detail: str, *, starting: bool):
    message = (
        f"{p.name} {'fired' if starting else 'still firing'}: {p.metric} = {value:.4g} "
        f"{p.comparison} {p.threshold:g} over {p.window_s}s" + (f" ({detail})" if detail else "")
    )
    opened = open_incident(
        actor,
        f"{p.name}: {p.metric} {p.comparison} {p.threshold:g} on {p.service.name} in "
        f"{p.environment.name}",
        severity=p.severity,
        services=[p.service],
        environments=[p.environment],
        key=p.key,
        source=Incident.Source.ALERT,
        alert_policy=p,
        event_kind=Kind.ALERT_FIRED,
        event_message=message,
        event_data={"policy": p.pk, "value": value},
        check_scope=False,
    )
    if starting or opened.created:
        notify(opened.incident, p, message)
    return opened.incident


# Notifications


def notification_payload(incident: Incident, message: str) -> dict:
    base = getattr(settings, "PORTAL_BASE_URL", "").rstrip("/")
    return {
        "incident": incident.pk,
        "title": incident.title,
        "severity": incident.severity,
        "state": incident.state,
        "key": incident.key,
        "message": message,
        "services": [s.name for s in incident.services.all()],
        "environments": [e.name for e in incident.environments.all()],
        "opened_at": incident.opened_at.isoformat(),
        "url": f"{base}/incidents/{incident.pk}/",
    }


def channels_for(incident: Incident, policy: AlertPolicy | None = None) -> dict:
    """The incident's alert policy's channels, else the portal's default ones (settings
    MONITORING_WEBHOOK_URL and MONITORING_NOTIFY_EMAILS)."""
    policy = policy or incident.alert_policy
    if policy is not None and (policy.webhook_url or policy.email_list):
        return {"webhook": policy.webhook_url, "emails": policy.email_list}
    return {
        "webhook": getattr(settings, "MONITORING_WEBHOOK_URL", ""),
        "emails": list(getattr(settings, "MONITORING_NOTIFY_EMAILS", [])),
    }


def notify(incident: Incident, policy: AlertPolicy | None, message: str) -> list:
    """Enqueues one delivery job per channel, after commit; each retries with backoff and
    writes the outcome on the timeline."""
    channels = channels_for(incident, policy)
    payload = notification_payload(incident, message)
    actor = Actor.system("monitoring")
    queued = []
    if channels["webhook"]:
        queued.append(
            jobs.enqueue(
                NOTIFY_JOB,
                name=f"notify incident {incident.pk} by webhook",
                actor=actor,
                params={"incident": incident.pk, "channel": "webhook", "payload": payload},
                obj=incident,
            )
        )
    if channels["emails"]:
        queued.append(
            jobs.enqueue(
                NOTIFY_JOB,
                name=f"notify incident {incident.pk} by e-mail",
                actor=actor,
                params={
                    "incident": incident.pk,
                    "channel": "email",
                    "payload": payload,
                    "to": channels["emails"],
                },
                obj=incident,
            )
        )
    if not queued:
        logger.info("incident %s: no notification channel configured", incident.pk)
    return queued


def record_notification(incident_id: int, channel: str, ok: bool, detail: str) -> None:
    incident = Incident.objects.filter(pk=incident_id).first()
    if incident is None:
        return
    kind = Kind.NOTIFICATION_SENT if ok else Kind.NOTIFICATION_FAILED
    _event(incident, kind, detail, "monitoring", channel=channel)


def recently_notified(incident: Incident, within: timedelta) -> bool:
    return incident.events.filter(
        kind__in=(Kind.NOTIFICATION_SENT, Kind.NOTIFICATION_FAILED),
        created_at__gte=timezone.now() - within,
    ).exists()


# Health checks

HEALTH_FIELDS = (
    "path",
    "base_url",
    "interval_s",
    "timeout_s",
    "expected_status",
    "failure_threshold",
    "severity",
    "enabled",
)


def get_health_check(pk) -> HealthCheck:
    check = HealthCheck.objects.select_related("service", "environment").filter(pk=pk).first()
    if check is None:
        raise NotFoundError(f"No health check {pk}.")
    return check


def _check_health(check: HealthCheck) -> None:
    from django.core.exceptions import ValidationError

    errors: dict[str, list[str]] = {}
    try:
        # Uniqueness is the database's to decide (see _save_check), named on the path field.
        check.full_clean(exclude=["created_by"], validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        errors = exc.message_dict
    if not check.path.startswith("/"):
        errors.setdefault("path", []).append("Expected a path starting with /.")
    if not 5 <= check.interval_s <= 86400:
        errors.setdefault("interval_s", []).append("Expected 5 to 86400 seconds.")
    if not 0.1 <= check.timeout_s <= 60:
        errors.setdefault("timeout_s", []).append("Expected 0.1 to 60 seconds.")
    if errors:
        raise ValidationFailed("Invalid health check: " + ", ".join(errors), fields=errors)


def _save_check(check: HealthCheck) -> None:
    try:
        with transaction.atomic():
            check.save()
    except IntegrityError:
        raise Conflict(
            f"{check.service.name} already has a check of {check.path} in "
            f"{check.environment.name}.",
            fields={"path": ["Must be unique per service and environment."]},
        ) from None


def create_health_check(
    actor: Actor, service: Service, environment: Environment, **fields
) -> HealthCheck:
    actor.require(INCIDENTS_WRITE)
    unknown = set(fields) - set(HEALTH_FIELDS)
    if unknown:
        raise ValidationFailed("Unknown fields.", fields={k: ["Unknown field."] for k in unknown})
    check = HealthCheck(service=service, environment=environment, created_by=actor.label, **fields)
    _check_health(check)
    with transaction.atomic():
        _save_check(check)
        audit.record(
            actor,
            "health_check.create",
            check,
            summary={"service": service.name, "environment": environment.name, "path": check.path},
        )
    logger.info("health check %s: created by %s", check.pk, actor.label)
    return check


def update_health_check(actor: Actor, check: HealthCheck, **fields) -> HealthCheck:
    """Changes a check's fields, service or environment; the audit event lists what changed."""
    actor.require(INCIDENTS_WRITE)
    unknown = set(fields) - {"service", "environment", *HEALTH_FIELDS}
    if unknown:
        raise ValidationFailed("Unknown fields.", fields={k: ["Unknown field."] for k in unknown})
    with transaction.atomic():
        c = HealthCheck.objects.select_for_update().select_related("service", "environment")
        c = c.get(pk=check.pk)
        changes = {}
        for key, value in fields.items():
            old = getattr(c, key)
            if old != value:
                changes[key] = {"from": str(old), "to": str(value)}
                setattr(c, key, value)
        _check_health(c)
        if changes:
            _save_check(c)
            audit.record(actor, "health_check.update", c, summary=changes)
            logger.info("health check %s: %s changed by %s", c.pk, sorted(changes), actor.label)
    return c


def delete_health_check(actor: Actor, check: HealthCheck) -> None:
    actor.require(INCIDENTS_WRITE)
    with transaction.atomic():
        audit.record(actor, "health_check.delete", check, summary={"path": check.path})
        pk = check.pk
        check.delete()
    logger.info("health check %s: deleted by %s", pk, actor.label)


def claim_due_health_checks(now: datetime | None = None, limit: int = 500) -> list[int]:
    """Ids of enabled checks whose time has come, each moved to its next run. The conditional
    UPDATE per check keeps two clocks from running the same check twice."""
    now = now or timezone.now()
    due = HealthCheck.objects.filter(enabled=True, next_run_at__lte=now).values_list(
        "pk", "next_run_at", "interval_s"
    )[:limit]
    claimed = []
    for pk, next_run_at, interval_s in due:
        if HealthCheck.objects.filter(pk=pk, next_run_at=next_run_at).update(
            next_run_at=now + timedelta(seconds=interval_s)
        ):
            claimed.append(pk)
    return claimed


def record_health_result(
    check: HealthCheck,
    ok: bool,
    *,
    status_code: int | None = None,
    latency_ms: float | None = None,
    error: str = "",
    url: str = "",
    now: datetime | None = None,
) -> HealthCheckResult:
    """Stores one probe result; the failure_threshold-th failure in a row opens the incident
    keyed "health:<id>" (or adds to it), and later failures add to it."""
    now = now or timezone.now()
    actor = Actor.system("health-check")
    with transaction.atomic():
        c = HealthCheck.objects.select_for_update().select_related("service", "environment")
        c = c.get(pk=check.pk)
        result = HealthCheckResult.objects.create(
            health_check=c,
            checked_at=now,
            ok=ok,
            status_code=status_code,
            latency_ms=latency_ms,
            error=error[:500],
        )
        c.last_checked_at = now
        if ok:
            c.consecutive_failures = 0
            c.status = HealthCheck.Status.HEALTHY
        else:
            c.consecutive_failures += 1
            down = c.consecutive_failures >= c.failure_threshold
            c.status = HealthCheck.Status.DOWN if down else HealthCheck.Status.FAILING
            if down:
                what = f"HTTP {status_code}" if status_code is not None else error or "no answer"
                open_incident(
                    actor,
                    f"{c.service.name} health check {c.path} failing in {c.environment.name}",
                    severity=c.severity,
                    services=[c.service],
                    environments=[c.environment],
                    key=c.key,
                    source=Incident.Source.HEALTH_CHECK,
                    event_kind=Kind.HEALTH_CHECK_FAILED,
                    event_message=(
                        f"{c.path} failed {c.consecutive_failures} times in a row: {what}"
                        f" (expected HTTP {c.expected_status}){' at ' + url if url else ''}"
                    ),
                    event_data={"check": c.pk, "status_code": status_code, "error": error[:200]},
                    check_scope=False,
                )
        c.save(update_fields=["last_checked_at", "consecutive_failures", "status"])
    return result


# Metrics


def prune(now: datetime | None = None) -> dict:
    """Deletes samples, rollups and health-check results older than their retention."""
    now = now or timezone.now()
    sample_days = getattr(settings, "MONITORING_SAMPLE_RETENTION_DAYS", 8)
    rollup_days = getattr(settings, "MONITORING_ROLLUP_RETENTION_DAYS", 35)
    result_days = getattr(settings, "MONITORING_HEALTH_RETENTION_DAYS", 8)
    counts = {
        "samples": MetricSample.objects.filter(
            timestamp__lt=now - timedelta(days=sample_days)
        ).delete()[0],
        "rollups": MetricRollup.objects.filter(
            minute__lt=now - timedelta(days=rollup_days)
        ).delete()[0],
        "health_results": HealthCheckResult.objects.filter(
            checked_at__lt=now - timedelta(days=result_days)
        ).delete()[0],
    }
    logger.info("monitoring prune: %s", counts)
    return counts
