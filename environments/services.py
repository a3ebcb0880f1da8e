"""Operations on environments, their configuration and secrets. Views, the API and agents
call these; each runs in one transaction and writes its audit events.

Rules every change follows:
- a protected environment's config and secrets change only by an admin;
- during a freeze window a change needs an admin and an override reason (audited);
- secret values never reach a log line, an audit summary or a response.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, time

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from core import audit, crypto
from core.actors import Actor
from core.errors import Conflict, NotFoundError, PermissionRefused, ValidationFailed, validate_model
from core.roles import ADMIN, ENVIRONMENTS_WRITE, SECRETS_WRITE
from environments.models import (
    KEY_RE,
    SERVICE_RE,
    ConfigVar,
    Environment,
    FreezeWindow,
    Secret,
    SecretVersion,
)

logger = logging.getLogger(__name__)

ENVIRONMENT_FIELDS = (
    "description",
    "order",
    "protected",
    "platform",
    "gcp_project",
    "region",
    "run_endpoint",
    "monitoring_endpoint",
)


# Names the environments' pages use for themselves (/environments/parity/ and so on).
RESERVED_NAMES = frozenset({"new", "parity", "promote"})


def get_environment(name: str) -> Environment:
    try:
        return Environment.objects.get(name=name)
    except Environment.DoesNotExist:
        raise NotFoundError(
            f"No environment named {name!r}.", fields={"environment": ["No such environment."]}
        ) from None


def check_change_allowed(
    actor: Actor, environment: Environment, override_reason: str | None = None, *, scope: str
) -> str | None:
    """Raises unless `actor` may change `environment` now; returns the freeze override reason
    when one was used (to be audited)."""
    actor.require(scope)
    if environment.protected and not actor.is_admin:
        raise PermissionRefused(
            f"{environment.name} is protected: its configuration changes need the admin role"
        )
    window = environment.active_freeze()
    if window is None:
        return None
    if not actor.is_admin:
        raise Conflict(
            f"{environment.name} is frozen ({window.describe()}: {window.reason}); "
            "an admin can override with a reason",
            code="frozen",
        )
    if not (override_reason or "").strip():
        raise ValidationFailed(
            f"{environment.name} is frozen ({window.reason}): give an override reason",
            fields={"override_reason": ["Required during a freeze window."]},
        )
    return override_reason.strip()


# Environments


def create_environment(actor: Actor, name: str, **fields) -> Environment:
    actor.require(ADMIN)
    if name in RESERVED_NAMES:
        raise ValidationFailed(
            f"{name!r} is reserved for a page of the portal.",
            fields={"name": [f"Choose a name other than {', '.join(sorted(RESERVED_NAMES))}."]},
        )
    env = Environment(name=name, **{k: v for k, v in fields.items() if k in ENVIRONMENT_FIELDS})
    if env.order is None:
        last = Environment.objects.order_by("-order").values_list("order", flat=True).first()
        env.order = (last or 0) + 10
    validate_model(env, "environment")
    with transaction.atomic():
        try:
            env.save()
        except IntegrityError:
            raise Conflict(
                f"An environment named {name!r} or with order {env.order} exists.",
                fields={"name": ["Must be unique."], "order": ["Must be unique."]},
            ) from None
        audit.record(
            actor,
            "environment.create",
            env,
            summary={f: getattr(env, f) for f in ("name", *ENVIRONMENT_FIELDS)},
        )
    logger.info("environment %s: created by %s", env.name, actor.label)
    return env


def update_environment(actor: Actor, environment: Environment, **fields) -> Environment:
    actor.require(ADMIN)
    unknown = set(fields) - set(ENVIRONMENT_FIELDS)
    if unknown:
        raise ValidationFailed("Unknown fields.", fields={k: ["Unknown field."] for k in unknown})
    with transaction.atomic():
        env = Environment.objects.select_for_update().get(pk=environment.pk)
        changes = {}
        for key, value in fields.items():
            if getattr(env, key) != value:
                changes[key] = {"from": getattr(env, key), "to": value}
                setattr(env, key, value)
        validate_model(env, "environment")
        if changes:
            try:
                with transaction.atomic():
                    env.save()
            except IntegrityError:
                raise Conflict(
                    "Another environment has this order.", fields={"order": ["Must be unique."]}
                ) from None
            audit.record(actor, "environment.update", env, summary=changes)
            logger.info("environment %s: updated %s", env.name, sorted(changes))
    return env


# Freeze windows


def add_freeze_window(
    actor: Actor,
    environment: Environment,
    reason: str,
    *,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
    weekday: int | None = None,
    start_time: time | None = None,
    end_time: time | None = None,
) -> FreezeWindow:
    """A one-off window (starts_at, ends_at) or a weekly one (weekday, start_time, end_time)."""
    actor.require(ENVIRONMENTS_WRITE)
    errors: dict[str, list[str]] = {}
    if not (reason or "").strip():
        errors["reason"] = ["Say why changes are frozen."]
    if weekday is not None:
        if not 0 <= weekday <= 6:
            errors["weekday"] = ["Expected 0 (Monday) to 6 (Sunday)."]
        if start_time is None or end_time is None:
            errors["start_time"] = ["A weekly window needs start_time and end_time."]
        elif start_time >= end_time:
            errors["end_time"] = ["Expected a time after start_time."]
    elif starts_at is None or ends_at is None:
        errors["starts_at"] = ["Give starts_at and ends_at, or weekday with start/end times."]
    elif starts_at >= ends_at:
        errors["ends_at"] = ["Expected a time after starts_at."]
    if errors:
        raise ValidationFailed("Invalid freeze window: " + ", ".join(errors), fields=errors)
    with transaction.atomic():
        window = FreezeWindow.objects.create(
            environment=environment,
            reason=reason.strip(),
            starts_at=starts_at,
            ends_at=ends_at,
            weekday=weekday,
            start_time=start_time,
            end_time=end_time,
            created_by=actor.label,
        )
        audit.record(
            actor,
            "freeze.add",
            window,
            summary={
                "environment": environment.name,
                "window": window.describe(),
                "reason": window.reason,
            },
        )
    logger.info("environment %s: freeze window %s added", environment.name, window.pk)
    return window


def get_freeze_window(environment: Environment, pk: int) -> FreezeWindow:
    try:
        return FreezeWindow.objects.select_related("environment").get(
            environment=environment, pk=pk
        )
    except FreezeWindow.DoesNotExist:
        raise NotFoundError(f"{environment.name} has no freeze window {pk}.") from None


def remove_freeze_window(actor: Actor, window: FreezeWindow, reason: str = "") -> None:
    """Lifting a freeze is an admin's call."""
    actor.require(ADMIN)
    with transaction.atomic():
        audit.record(
            actor,
            "freeze.remove",
            window,
            summary={
                "environment": window.environment.name,
                "window": window.describe(),
                "reason": reason,
            },
        )
        pk = window.pk
        window.delete()
    logger.info("environment %s: freeze window %s removed", window.environment.name, pk)


# Configuration and secrets


@dataclass
class ConfigChange:
    key: str
    old: str | None
    new: str | None  # None: removed


def _check_key(key, field_name: str, errors: dict) -> None:
    if not isinstance(key, str) or not KEY_RE.match(key):
        errors.setdefault(field_name, []).append(
            "Expected UPPER_SNAKE_CASE: letters A-Z, digits and _, not starting with a digit."
        )


def validate_service(service, field_name: str = "service") -> str:
    """ "" (every service) or a Cloud Run service name."""
    if service is None or service == "":
        return ""
    if not isinstance(service, str) or not SERVICE_RE.match(service):
        raise ValidationFailed(
            f"Invalid {field_name}.",
            fields={
                field_name: [
                    "Expected a service name (lowercase letters, digits and dashes, at most "
                    "63) or empty for every service."
                ]
            },
        )
    return service


def validate_variables(variables, field_name: str = "variables") -> dict[str, str | None]:
    if not isinstance(variables, dict):
        raise ValidationFailed(
            f"{field_name} must be an object of KEY: value",
            fields={field_name: ["Expected an object of KEY: value."]},
        )
    errors: dict[str, list[str]] = {}
    for key, value in variables.items():
        _check_key(key, f"{field_name}.{key}", errors)
        if value is not None and not isinstance(value, str):
            errors.setdefault(f"{field_name}.{key}", []).append(
                "Expected a string value (or null to remove it)."
            )
        elif isinstance(value, str) and len(value) > 32768:
            errors.setdefault(f"{field_name}.{key}", []).append("At most 32768 characters.")
    if errors:
        raise ValidationFailed("Invalid " + field_name + ": " + ", ".join(errors), fields=errors)
    return variables


def _apply_variables(actor, env, service, variables, override) -> list[ConfigChange]:
    changes = []
    existing = {
        v.key: v
        for v in ConfigVar.objects.select_for_update().filter(
            environment=env, service=service, key__in=list(variables)
        )
    }
    now = timezone.now()
    for key, value in variables.items():
        current = existing.get(key)
        if value is None:
            if current is not None:
                current.delete()
                changes.append(ConfigChange(key, current.value, None))
            continue
        if current is None:
            ConfigVar.objects.create(
                environment=env,
                service=service,
                key=key,
                value=value,
                updated_by=actor.label,
                updated_at=now,
            )
            changes.append(ConfigChange(key, None, value))
        elif current.value != value:
            ConfigVar.objects.filter(pk=current.pk).update(
                value=value, version=F("version") + 1, updated_by=actor.label, updated_at=now
            )
            changes.append(ConfigChange(key, current.value, value))
    if changes:
        audit.record(
            actor,
            "config.set",
            env,
            summary={
                "service": service or "*",
                "changes": {c.key: {"from": c.old, "to": c.new} for c in changes},
                **({"freeze_override": override} if override else {}),
            },
        )
        logger.info(
            "environment %s: config %s changed by %s",
            env.name,
            sorted(c.key for c in changes),
            actor.label,
        )
    return changes


def set_config(
    actor: Actor,
    environment: Environment,
    variables: dict,
    *,
    service: str = "",
    replace: bool = False,
    override_reason: str | None = None,
) -> list[ConfigChange]:
    """Sets variables (a value of None removes the key). With `replace`, keys of that scope not
    named are removed: the given set becomes the whole configuration."""
    variables = dict(validate_variables(variables))
    service = validate_service(service)
    with transaction.atomic():
        override = check_change_allowed(
            actor, environment, override_reason, scope=ENVIRONMENTS_WRITE
        )
        if replace:
            for key in ConfigVar.objects.filter(
                environment=environment, service=service
            ).values_list("key", flat=True):
                variables.setdefault(key, None)
        return _apply_variables(actor, environment, service, variables, override)


@dataclass
class SecretChange:
    name: str
    version: int | None  # None: removed


def _apply_secret(actor, env, service, name, value, override) -> SecretChange:
    secret = (
        Secret.objects.select_for_update()
        .filter(environment=env, service=service, name=name)
        .first()
    )
    if value is None:
        if secret is None:
            return SecretChange(name, None)
        audit.record(
            actor,
            "secret.delete",
            secret,
            summary={
                "environment": env.name,
                "service": service or "*",
                "name": name,
                **({"freeze_override": override} if override else {}),
            },
        )
        secret.delete()
        logger.info("environment %s: secret %s removed by %s", env.name, name, actor.label)
        return SecretChange(name, None)
    ciphertext = crypto.encrypt(value)
    if secret is None:
        secret = Secret.objects.create(
            environment=env,
            service=service,
            name=name,
            ciphertext=ciphertext,
            updated_by=actor.label,
        )
    else:
        secret.ciphertext = ciphertext
        secret.version += 1
        secret.updated_by = actor.label
        secret.updated_at = timezone.now()
        secret.save()
    SecretVersion.objects.create(
        secret=secret, version=secret.version, ciphertext=ciphertext, created_by=actor.label
    )
    # The summary names the secret and its version, never the value.
    audit.record(
        actor,
        "secret.set",
        secret,
        summary={
            "environment": env.name,
            "service": service or "*",
            "name": name,
            "version": secret.version,
            **({"freeze_override": override} if override else {}),
        },
    )
    logger.info(
        "environment %s: secret %s set to version %s by %s",
        env.name,
        name,
        secret.version,
        actor.label,
    )
    return SecretChange(name, secret.version)


def validate_secrets(secrets, field_name: str = "secrets") -> dict[str, str | None]:
    if not isinstance(secrets, dict):
        raise ValidationFailed(
            f"{field_name} must be an object of NAME: value",
            fields={field_name: ["Expected an object of NAME: value."]},
        )
    errors: dict[str, list[str]] = {}
    for name, value in secrets.items():
        _check_key(name, f"{field_name}.{name}", errors)
        if value is not None and (not isinstance(value, str) or value == ""):
            errors.setdefault(f"{field_name}.{name}", []).append(
                "Expected a non-empty string (or null to remove it)."
            )
    if errors:
        raise ValidationFailed("Invalid " + field_name + ": " + ", ".join(errors), fields=errors)
    return secrets


def set_secret(
    actor: Actor,
    environment: Environment,
    name: str,
    value: str | None,
    *,
    service: str = "",
    override_reason: str | None = None,
) -> SecretChange:
    validate_secrets({name: value}, field_name="secret")
    service = validate_service(service)
    with transaction.atomic():
        override = check_change_allowed(actor, environment, override_reason, scope=SECRETS_WRITE)
        return _apply_secret(actor, environment, service, name, value, override)


@dataclass
class BatchResult:
    environment: str
    config: list[ConfigChange] = field(default_factory=list)
    secrets: list[SecretChange] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "environment": self.environment,
            "config_changed": [c.key for c in self.config],
            "secrets_changed": [{"name": s.name, "version": s.version} for s in self.secrets],
        }


def apply_batch(
    actor: Actor,
    environment: Environment,
    *,
    variables: dict | None = None,
    secrets: dict | None = None,
    service: str = "",
    override_reason: str | None = None,
) -> BatchResult:
    """Variables and secrets changed together, all or nothing."""
    variables = validate_variables(variables or {})
    secrets = validate_secrets(secrets or {})
    service = validate_service(service)
    result = BatchResult(environment.name)
    with transaction.atomic():
        override = None
        if variables:
            override = check_change_allowed(
                actor, environment, override_reason, scope=ENVIRONMENTS_WRITE
            )
            result.config = _apply_variables(actor, environment, service, variables, override)
        if secrets:
            override = check_change_allowed(
                actor, environment, override_reason, scope=SECRETS_WRITE
            )
            result.secrets = [
                _apply_secret(actor, environment, service, name, value, override)
                for name, value in secrets.items()
            ]
    return result


def resolve_secrets(environment: Environment, service: str = "") -> dict[str, str]:
    """Plain secret values for a deployment: environment-wide ones, overridden by the service's
    own. Only deployment code calls this; never show or log what it returns."""
    values = {}
    for secret in Secret.objects.filter(
        environment=environment, service__in=["", service]
    ).order_by("service"):
        values[secret.name] = crypto.decrypt(secret.ciphertext)
    return values


def resolve_config(environment: Environment, service: str = "") -> dict[str, str]:
    values = {}
    for var in ConfigVar.objects.filter(
        environment=environment, service__in=["", service]
    ).order_by("service"):
        values[var.key] = var.value
    return values


def rotate_secret_encryption() -> int:
    """Re-encrypts every stored secret value with the newest key; returns how many."""
    count = 0
    with transaction.atomic():
        for model in (Secret, SecretVersion):
            for row in model.objects.select_for_update().only("pk", "ciphertext"):
                model.objects.filter(pk=row.pk).update(ciphertext=crypto.rotate(row.ciphertext))
                count += 1
    logger.info("secrets: %s values re-encrypted with the newest key", count)
    return count


# Parity and promotion


@dataclass
class ParityRow:
    service: str
    key: str
    kind: str  # "config" or "secret"
    a: str | None  # value (config) or "v<N>" (secret); None: missing
    b: str | None

    @property
    def status(self) -> str:
        if self.a is None:
            return "missing_in_a"
        if self.b is None:
            return "missing_in_b"
        return "same" if self.a == self.b else "differs"


@dataclass
class Parity:
    a: str
    b: str
    rows: list[ParityRow]

    @property
    def differences(self) -> list[ParityRow]:
        return [r for r in self.rows if r.status != "same"]

    def as_dict(self) -> dict:
        def pick(status):
            return [
                {"service": r.service or None, "key": r.key, "kind": r.kind}
                for r in self.rows
                if r.status == status
            ]

        return {
            "a": self.a,
            "b": self.b,
            "missing_in_a": pick("missing_in_a"),
            "missing_in_b": pick("missing_in_b"),
            "differs": [
                {
                    "service": r.service or None,
                    "key": r.key,
                    "kind": r.kind,
                    **(
                        {"a": r.a, "b": r.b}
                        if r.kind == "config"
                        else {"a_version": r.a, "b_version": r.b}
                    ),
                }
                for r in self.rows
                if r.status == "differs"
            ],
            "same": len([r for r in self.rows if r.status == "same"]),
        }


def parity(a: Environment, b: Environment) -> Parity:
    """Config keys and secret names present in one environment and not the other, and values
    that differ. Secrets are compared by version only: their values are never read here."""
    rows: dict[tuple, ParityRow] = {}
    for side, env in (("a", a), ("b", b)):
        for service, key, value in ConfigVar.objects.filter(environment=env).values_list(
            "service", "key", "value"
        ):
            row = rows.setdefault(
                ("config", service, key), ParityRow(service, key, "config", None, None)
            )
            setattr(row, side, value)
        for service, name, version in Secret.objects.filter(environment=env).values_list(
            "service", "name", "version"
        ):
            row = rows.setdefault(
                ("secret", service, name), ParityRow(service, name, "secret", None, None)
            )
            setattr(row, side, f"v{version}")
    ordered = sorted(rows.values(), key=lambda r: (r.status == "same", r.service, r.key, r.kind))
    return Parity(a.name, b.name, ordered)


@dataclass
class PromotionPreview:
    source: str
    target: str
    service: str
    changes: list[ConfigChange]

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "target": self.target,
            "service": self.service or None,
            "changes": [{"key": c.key, "from": c.old, "to": c.new} for c in self.changes],
        }


def preview_promotion(
    source: Environment, target: Environment, keys: list[str], service: str = ""
) -> PromotionPreview:
    """What copying `keys` from source to target would change (nothing is written)."""
    service = validate_service(service)
    if source.pk == target.pk:
        raise ValidationFailed(
            "Source and target are the same environment.",
            fields={"target": ["Choose an environment other than the source."]},
        )
    if not isinstance(keys, list) or not keys:
        raise ValidationFailed(
            "Choose at least one key to promote.",
            fields={"keys": ["Expected a non-empty list of keys."]},
        )
    src = dict(
        ConfigVar.objects.filter(environment=source, service=service, key__in=keys).values_list(
            "key", "value"
        )
    )
    missing = [k for k in keys if k not in src]
    if missing:
        raise ValidationFailed(
            f"Not set in {source.name}: {', '.join(missing)}",
            fields={"keys": [f"Not set in {source.name}: {', '.join(missing)}."]},
        )
    dst = dict(
        ConfigVar.objects.filter(environment=target, service=service, key__in=keys).values_list(
            "key", "value"
        )
    )
    changes = [ConfigChange(k, dst.get(k), src[k]) for k in keys if dst.get(k) != src[k]]
    return PromotionPreview(source.name, target.name, service, changes)


def promote_config(
    actor: Actor,
    source: Environment,
    target: Environment,
    keys: list[str],
    *,
    service: str = "",
    override_reason: str | None = None,
) -> PromotionPreview:
    """Copies the chosen variables from source to target; returns what changed."""
    with transaction.atomic():
        preview = preview_promotion(source, target, keys, service)
        override = check_change_allowed(actor, target, override_reason, scope=ENVIRONMENTS_WRITE)
        if preview.changes:
            _apply_variables(
                actor, target, service, {c.key: c.new for c in preview.changes}, override
            )
            audit.record(
                actor,
                "config.promote",
                target,
                summary={
                    "from": source.name,
                    "keys": [c.key for c in preview.changes],
                    **({"freeze_override": override} if override else {}),
                },
            )
    return preview
