"""Agent tokens: create, revoke, authenticate."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from core import audit, roles
from core.actors import Actor
from core.errors import PermissionRefused, ValidationFailed
from core.models import AgentToken, hash_token

logger = logging.getLogger(__name__)

# last_used_at is written at most this often per token, so busy agents don't write per call.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class NewToken:
    token: AgentToken
    raw: str  # shown once, never stored


def create_token(
    actor: Actor, name: str, scopes: list[str] | str, expires_days: int | None = None
) -> NewToken:
    if not actor.is_admin:
        raise PermissionRefused("creating agent tokens needs the admin role")
    name = (name or "").strip()
    if not name:
        raise ValidationFailed("name is required", fields={"name": ["Give the token a name."]})
    try:
        scope_list = roles.parse_scopes(scopes)
    except ValueError as exc:
        raise ValidationFailed(str(exc), fields={"scopes": [str(exc)]}) from None
    if expires_days is not None and expires_days < 1:
        msg = "expected a whole number of days, at least 1"
        raise ValidationFailed(msg, fields={"expires_days": [msg]})

    raw = AgentToken.generate()
    with transaction.atomic():
        token = AgentToken.objects.create(
            name=name,
            prefix=raw[:10],
            token_hash=hash_token(raw),
            scopes=scope_list,
            created_by=actor.user,
            expires_at=timezone.now() + timedelta(days=expires_days) if expires_days else None,
        )
        audit.record(
            actor,
            "token.create",
            token,
            summary={"name": name, "scopes": scope_list, "expires_at": token.expires_at},
        )
    logger.info("token %s: created %r with scopes %s", token.pk, name, scope_list)
    return NewToken(token, raw)


def revoke_token(actor: Actor, token: AgentToken) -> AgentToken:
    if not actor.is_admin:
        raise PermissionRefused("revoking agent tokens needs the admin role")
    with transaction.atomic():
        # Lock so that two revocations record one event.
        token = AgentToken.objects.select_for_update().get(pk=token.pk)
        if token.revoked_at is None:
            token.revoked_at = timezone.now()
            token.save(update_fields=["revoked_at"])
            audit.record(actor, "token.revoke", token, summary={"name": token.name})
            logger.info("token %s: revoked", token.pk)
    return token


def authenticate(raw: str) -> AgentToken | None:
    """The active token for a raw bearer value, or None."""
    token = AgentToken.objects.filter(token_hash=hash_token(raw)).first()
    if token is None or not token.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        AgentToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token
