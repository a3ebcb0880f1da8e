"""An action's changes are audited with the request that started it."""

import pytest

from agents.base import REGISTRY, BaseAgent, action, register
from core import audit
from core.models import AuditEvent, Job

pytestmark = pytest.mark.django_db


class NoteAgent(BaseAgent):
    name = "note"

    @action(params=(), description="Record an audit event from inside the job.")
    def write(self) -> dict:
        audit.record(self.actor, "note.write", object_type="note", object_id="1")
        return {"written": True}


@pytest.fixture(autouse=True)
def note_agent(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    register(NoteAgent)
    yield
    REGISTRY.pop("note", None)


def test_audit_events_written_by_a_job_carry_the_starting_request(
    oscar, client_for, run_worker, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(oscar).post(
            "/agents/actions/",
            {"action": "note.write", "params": "{}"},
            headers={"X-Request-ID": "req-note-1"},
            REMOTE_ADDR="10.9.8.7",
        )
    assert response.status_code == 302

    run_worker()

    assert Job.objects.get().status == "succeeded"
    started = AuditEvent.objects.get(action="action.start")
    written = AuditEvent.objects.get(action="note.write")
    for event in (started, written):
        assert (event.actor, event.source_ip, event.request_id) == (
            "oscar",
            "10.9.8.7",
            "req-note-1",
        )
    assert written.actor_user_id == oscar.pk


def test_a_config_change_by_action_is_audited_with_its_request(
    oscar, system_actor, api_for, run_worker, django_capture_on_commit_callbacks
):
    from environments import services as env_services

    env_services.create_environment(system_actor, "staging", order=20)
    body = {
        "agent": "devops",
        "action": "configure_environment",
        "params": {"environment": "staging", "variables": {"LOG_LEVEL": "debug"}},
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = api_for(oscar).post(
            "/api/v1/actions/", body, format="json", headers={"X-Request-ID": "req-config-9"}
        )
    assert response.status_code == 202, response.content
    assert response["X-Request-ID"] == "req-config-9"

    run_worker()

    event = AuditEvent.objects.get(action="config.set")
    assert event.actor == "oscar"
    assert (event.object_type, event.object_repr) == ("environments.environment", "staging")
    assert event.summary["changes"] == {"LOG_LEVEL": {"from": None, "to": "debug"}}
    assert (event.source_ip, event.request_id) == ("127.0.0.1", "req-config-9")
