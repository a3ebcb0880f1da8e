"""The append-only, hash-chained audit log."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from django.db import connection, transaction
from django.utils import timezone

from core import context
from core.actors import Actor
from core.models import AuditEvent

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
# Any constant shared by every writer: the advisory lock serialises appends to the chain.
_CHAIN_LOCK_ID = 0x0A0D17


def _digest(prev_hash: str, event: AuditEvent) -> str:
    payload = {
        "prev": prev_hash,
        "created_at": event.created_at.isoformat(),
        "actor": event.actor,
        "actor_user": event.actor_user_id,
        "actor_token": event.actor_token_id,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "object_repr": event.object_repr,
        "summary": event.summary,
        "source_ip": event.source_ip,
        "request_id": event.request_id,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def record(
    actor: Actor,
    action: str,
    obj=None,
    *,
    object_type: str = "",
    object_id: str = "",
    object_repr: str = "",
    summary: dict | None = None,
) -> AuditEvent:
    """Appends one event. Call it inside the transaction that makes the change, so that the
    event and the change are committed together or not at all. `summary` must never hold a
    secret value."""
    if obj is not None:
        object_type = object_type or obj._meta.label_lower
        object_id = object_id or str(obj.pk)
        object_repr = object_repr or str(obj)[:200]
    info = context.current()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_ID])
        last = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
        event = AuditEvent(
            created_at=timezone.now(),
            actor_user_id=actor.user_id,
            actor_token_id=getattr(actor.token, "pk", None),
            actor=actor.label,
            action=action,
            object_type=object_type,
            object_id=object_id,
            object_repr=object_repr,
            summary=summary or {},
            source_ip=info.source_ip,
            request_id=info.request_id,
            prev_hash=last or GENESIS,
        )
        # Round-trip the summary through JSON so the hash covers what the database stores.
        event.summary = json.loads(json.dumps(event.summary, default=str))
        event.hash = _digest(event.prev_hash, event)
        event.save()
    logger.info("audit %s: %s %s %s:%s", event.pk, actor.label, action, object_type, object_id)
    return event


@dataclass
class ChainReport:
    checked: int
    broken_at: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def verify_chain() -> ChainReport:
    """Walks the chain from the first event; stops at the first event that does not match."""
    prev = GENESIS
    checked = 0
    for event in AuditEvent.objects.order_by("id").iterator(chunk_size=2000):
        if event.prev_hash != prev:
            return ChainReport(checked, event.pk, "previous hash does not match (row missing?)")
        if _digest(prev, event) != event.hash:
            return ChainReport(checked, event.pk, "content does not match its hash (row edited)")
        prev = event.hash
        checked += 1
    return ChainReport(checked)
