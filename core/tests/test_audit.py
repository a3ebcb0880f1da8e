"""The audit log: who changed what, from where, in which request; append-only and chained."""

from datetime import UTC, datetime
from io import StringIO
from unittest import mock

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from core import audit
from core.actors import Actor
from core.models import AgentToken, AuditEvent

pytestmark = pytest.mark.django_db


def _verify() -> str:
    out = StringIO()
    call_command("verify_audit_log", stdout=out)
    return out.getvalue().strip()


def _record_at(when: datetime, actor: str, action: str, object_type: str, object_id: str):
    with mock.patch.object(audit.timezone, "now", return_value=when):
        return audit.record(
            Actor.system(actor), action, object_type=object_type, object_id=object_id
        )


@pytest.fixture
def chain():
    """Three events, a day apart."""
    return [
        _record_at(
            datetime(2030, 1, 1, 9, tzinfo=UTC), "alice", "token.create", "core.agenttoken", "1"
        ),
        _record_at(
            datetime(2030, 1, 2, 9, tzinfo=UTC),
            "oscar",
            "config.set",
            "environments.environment",
            "7",
        ),
        _record_at(
            datetime(2030, 1, 3, 9, tzinfo=UTC), "alice", "token.revoke", "core.agenttoken", "1"
        ),
    ]


@pytest.fixture
def trigger_disabled():
    """A DBA with table rights: the append-only trigger is off for the rest of the test (the
    test's transaction rolls the ALTER back)."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE core_auditevent DISABLE TRIGGER core_auditevent_append_only")


def test_token_creation_records_actor_object_source_ip_and_request_id(alice, client_for):
    response = client_for(alice).post(
        "/tokens/",
        {"name": "ci", "scopes": ["read"]},
        headers={"X-Request-ID": "req-create-42"},
        REMOTE_ADDR="10.1.2.3",
    )

    assert response["X-Request-ID"] == "req-create-42"
    token = AgentToken.objects.get()
    event = AuditEvent.objects.get(action="token.create")
    assert event.actor == "alice"
    assert event.actor_user_id == alice.pk
    assert (event.object_type, event.object_id) == ("core.agenttoken", str(token.pk))
    assert event.object_repr == str(token)
    assert event.source_ip == "10.1.2.3"
    assert event.request_id == "req-create-42"
    assert event.summary["scopes"] == ["read"]


def test_token_revocation_records_the_request(alice, client_for, token_client):
    api = token_client("read", name="old")

    response = client_for(alice).post(
        f"/tokens/{api.token.pk}/revoke/", headers={"X-Request-ID": "req-revoke-7"}
    )

    assert response["X-Request-ID"] == "req-revoke-7"
    event = AuditEvent.objects.get(action="token.revoke")
    assert (event.actor, event.object_id) == ("alice", str(api.token.pk))
    assert (event.source_ip, event.request_id) == ("127.0.0.1", "req-revoke-7")


def test_a_malformed_request_id_is_replaced(victor, client_for):
    response = client_for(victor).get("/jobs/", headers={"X-Request-ID": "no spaces; allowed"})

    assert len(response["X-Request-ID"]) == 32
    assert response["X-Request-ID"] != "no spaces; allowed"


def test_verify_audit_log_passes_on_an_intact_chain(chain):
    assert _verify() == "audit chain intact: 3 events verified"
    assert chain[1].prev_hash == chain[0].hash


def test_the_database_refuses_to_update_or_delete_an_event(chain):
    for change in (
        lambda: AuditEvent.objects.filter(pk=chain[1].pk).update(actor="mallory"),
        lambda: AuditEvent.objects.filter(pk=chain[1].pk).delete(),
    ):
        with pytest.raises(DatabaseError, match="audit events are append-only"):
            with transaction.atomic():
                change()

    assert AuditEvent.objects.get(pk=chain[1].pk).actor == "oscar"
    assert _verify() == "audit chain intact: 3 events verified"


def test_verify_audit_log_names_an_edited_event(chain, trigger_disabled):
    AuditEvent.objects.filter(pk=chain[1].pk).update(actor="mallory")

    with pytest.raises(CommandError) as caught:
        _verify()

    assert str(caught.value) == (
        f"audit chain broken at event {chain[1].pk}: content does not match its hash "
        "(row edited) (1 events before it are intact)"
    )


def test_verify_audit_log_finds_a_deleted_event(chain, trigger_disabled):
    AuditEvent.objects.filter(pk=chain[1].pk).delete()

    with pytest.raises(CommandError) as caught:
        _verify()

    assert str(caught.value).startswith(
        f"audit chain broken at event {chain[2].pk}: previous hash does not match (row missing?)"
    )


def test_verify_audit_log_finds_an_edit_that_recomputed_its_own_hash(chain, trigger_disabled):
    # A careful forger rehashes the edited row; the next event still points at the old hash.
    forged = AuditEvent.objects.get(pk=chain[1].pk)
    forged.summary = {"changes": "none, honest"}
    new_hash = audit._digest(forged.prev_hash, forged)
    AuditEvent.objects.filter(pk=forged.pk).update(summary=forged.summary, hash=new_hash)

    with pytest.raises(CommandError, match=f"broken at event {chain[2].pk}: previous hash"):
        _verify()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", [3, 2, 1]),
        ("actor=alice", [3, 1]),
        ("action=token", [3, 1]),
        ("action=config.set", [2]),
        ("object_type=core.agenttoken&object_id=1", [3, 1]),
        ("object_type=environments.environment&object_id=1", []),
        ("since=2030-01-02T00:00:00Z", [3, 2]),
        ("until=2030-01-02T12:00:00Z", [2, 1]),
        ("since=2030-01-02T00:00:00Z&until=2030-01-02T12:00:00Z", [2]),
        ("actor=alice&since=2030-01-02T00:00:00Z", [3]),
    ],
)
def test_audit_filters_in_the_api_and_on_the_page(
    query, expected, chain, token_client, victor, client_for
):
    wanted = [chain[n - 1].pk for n in expected]

    body = token_client("read").get(f"/api/v1/audit/?{query}").json()
    # The token_client fixture's own token.create event is newer than the chain.
    got = [e["id"] for e in body["results"] if e["id"] in {c.pk for c in chain}]
    assert got == wanted

    page = client_for(victor).get(f"/audit/?{query}")
    assert page.status_code == 200
    hashes = [e.pk for e in page.context["page"].object_list if e in chain]
    assert hashes == wanted


def test_the_audit_page_shows_source_ip_and_request_id(alice, client_for):
    client_for(alice).post(
        "/tokens/", {"name": "ci", "scopes": ["read"]}, headers={"X-Request-ID": "req-page-1"}
    )

    html = client_for(alice).get("/audit/").content.decode()

    assert "<code>token.create</code>" in html
    assert "127.0.0.1" in html
    assert "req-page-1" in html


def test_a_bad_since_is_a_400_naming_since(token_client, victor, client_for):
    response = token_client("read").get("/api/v1/audit/?since=last-tuesday")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert error["message"] == "Invalid input: since."
    assert list(error["fields"]) == ["since"]
    assert "Datetime has wrong format" in error["fields"]["since"][0]

    page = client_for(victor).get("/audit/?since=last-tuesday")
    assert b"Enter a valid date/time." in page.content
