"""Agent tokens: stored as a SHA-256 only, made by a command or by an admin in the portal."""

import hashlib
import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from core import tokens
from core.actors import Actor
from core.models import AgentToken, AuditEvent

pytestmark = pytest.mark.django_db


def _bearer(raw: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return api


def _all_rows_text(table: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {table}")  # noqa: S608 - a fixed table name
        return repr(cursor.fetchall())


def test_only_a_sha256_of_the_token_is_stored(system_actor):
    created = tokens.create_token(system_actor, "ci", ["read"])

    assert created.raw.startswith("opk_") and len(created.raw) > 40
    token = AgentToken.objects.get()
    assert token.token_hash == hashlib.sha256(created.raw.encode()).hexdigest()
    assert created.raw[:10] == token.prefix
    assert created.raw not in _all_rows_text("core_agenttoken")
    assert created.raw not in _all_rows_text("core_auditevent")


def test_create_agent_token_command_prints_a_working_token_on_its_last_line():
    out = StringIO()

    call_command(
        "create_agent_token",
        "ci",
        "--scopes",
        "read,actions:run",
        "--expires-days",
        "7",
        stdout=out,
    )

    lines = out.getvalue().strip().splitlines()
    raw = lines[-1]
    token = AgentToken.objects.get(name="ci")
    assert token.scopes == ["read", "actions:run"]
    assert abs(token.expires_at - (timezone.now() + timedelta(days=7))) < timedelta(minutes=1)
    assert f"scopes=read,actions:run expires={token.expires_at:%Y-%m-%d}" in lines[0]
    assert raw not in lines[0]
    response = _bearer(raw).get("/api/v1/jobs/")
    assert response.status_code == 200
    event = AuditEvent.objects.get(action="token.create")
    assert (event.actor, event.object_id) == ("manage.py", str(token.pk))


def test_create_agent_token_command_names_an_unknown_scope():
    with pytest.raises(CommandError) as caught:
        call_command("create_agent_token", "ci", "--scopes", "read,deploy", stdout=StringIO())

    assert str(caught.value).startswith("unknown scope(s): deploy; expected some of: read,")
    assert not AgentToken.objects.exists()


def test_create_agent_token_command_refuses_zero_days():
    with pytest.raises(CommandError, match="expected a whole number of days, at least 1"):
        call_command(
            "create_agent_token", "ci", "--scopes", "read", "--expires-days", "0", stdout=StringIO()
        )


def test_the_portal_shows_a_new_token_once(alice, client_for):
    c = client_for(alice)

    response = c.post("/tokens/", {"name": "deploy-bot", "scopes": ["read", "actions:run"]})

    assert response.status_code == 200
    html = response.content.decode()
    raw = re.search(r'id="new-token">(opk_[^<]+)<', html).group(1)
    assert "it is shown once" in html
    assert _bearer(raw).get("/api/v1/jobs/").status_code == 200
    later = c.get("/tokens/").content.decode()
    assert raw not in later
    assert "deploy-bot" in later and f"{raw[:10]}…" in later


def test_the_portal_names_a_missing_token_name(alice, client_for):
    response = client_for(alice).post("/tokens/", {"name": "", "scopes": ["read"]})

    assert response.status_code == 400
    assert b"This field is required." in response.content
    assert not AgentToken.objects.exists()


def test_revoking_in_the_portal_stops_the_token_and_is_audited(alice, client_for, token_client):
    api = token_client("read", name="old-ci")
    assert api.get("/api/v1/jobs/").status_code == 200

    response = client_for(alice).post(f"/tokens/{api.token.pk}/revoke/", follow=True)

    assert b"Token old-ci revoked." in response.content
    token = AgentToken.objects.get(pk=api.token.pk)
    assert token.state == "revoked"
    assert api.get("/api/v1/jobs/").status_code == 401
    event = AuditEvent.objects.get(action="token.revoke")
    assert (event.actor, event.actor_user_id, event.object_id) == ("alice", alice.pk, str(token.pk))


def test_revoking_twice_records_one_event(alice, token_client):
    api = token_client("read")
    admin = Actor.for_user(alice)

    tokens.revoke_token(admin, api.token)
    tokens.revoke_token(admin, api.token)

    assert AuditEvent.objects.filter(action="token.revoke").count() == 1


def test_using_a_token_sets_last_used_at(token_client):
    api = token_client("read")
    assert AgentToken.objects.get(pk=api.token.pk).last_used_at is None

    api.get("/api/v1/jobs/")

    first = AgentToken.objects.get(pk=api.token.pk).last_used_at
    assert timezone.now() - first < timedelta(seconds=10)
    api.get("/api/v1/jobs/")
    # Written at most once a minute, so that a busy agent does not write on every call.
    assert AgentToken.objects.get(pk=api.token.pk).last_used_at == first


def test_the_audit_log_shows_a_token_by_name_and_prefix_only(token_client):
    api = token_client("read", name="reader")

    event = api.get("/api/v1/audit/?action=token.create").json()["results"][0]

    assert event["actor"] == "tests"
    assert event["object_repr"] == f"reader ({api.token.prefix}…)"
    assert event["summary"]["scopes"] == ["read"]
