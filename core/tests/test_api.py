"""API conventions: one error shape, Idempotency-Key replays, page-number pagination."""

import pytest

from core import jobs
from core.models import IdempotencyRecord, Job

pytestmark = pytest.mark.django_db

ACTIONS = "/api/v1/actions/"
# An action that reaches the service layer and fails its validation: a 400 from the service.
UNKNOWN_AGENT = {"agent": "nobody", "action": "wave"}


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    assert set(body["error"]) == {"code", "message", "fields"}
    return body["error"]


def test_errors_share_one_shape(api_for, victor, token_client, client):
    api = token_client("read", "actions:run")

    missing = _error(api.post(ACTIONS, {}, format="json"), 400)
    assert missing["code"] == "invalid"
    assert missing["message"] == "Invalid input: agent, action."
    assert missing["fields"] == {
        "agent": ["This field is required."],
        "action": ["This field is required."],
    }

    unknown = _error(api.post(ACTIONS, UNKNOWN_AGENT, format="json"), 400)
    assert unknown["message"] == "Unknown agent 'nobody'."
    assert list(unknown["fields"]) == ["agent"]

    assert _error(client.get("/api/v1/jobs/"), 401)["code"] == "not_authenticated"

    refused = _error(api_for(victor).post(ACTIONS, UNKNOWN_AGENT, format="json"), 403)
    assert refused["code"] == "permission_denied"
    assert refused["message"] == "this needs the operator role ('actions:run')"

    gone = _error(api.get("/api/v1/jobs/00000000-0000-0000-0000-000000000000/"), 404)
    assert gone == {"code": "not_found", "message": "Not found.", "fields": {}}


@pytest.mark.parametrize("path", ["/api/v1/nope/", "/api/v2/jobs/", "/api/v1/jobs/not-a-uuid/"])
def test_unknown_api_paths_are_404_in_the_error_shape(path, token_client):
    error = _error(token_client("read").get(path), 404)

    assert error["code"] == "not_found"
    assert error["message"] == f"No such endpoint: {path}"


def test_a_malformed_authorization_header_is_401(client):
    response = client.get("/api/v1/jobs/", headers={"Authorization": "Bearer two words"})

    assert _error(response, 401)["message"] == "Authorization header must be 'Bearer <token>'."


def test_a_wrong_method_is_405_in_the_error_shape(token_client):
    error = _error(token_client("read").delete("/api/v1/jobs/"), 405)

    assert error["code"] == "method_not_allowed"
    assert error["message"] == 'Method "DELETE" not allowed.'


def test_an_anonymous_wrong_method_is_still_401(client):
    assert _error(client.delete("/api/v1/jobs/"), 401)["code"] == "not_authenticated"


@pytest.fixture
def queued_action(monkeypatch):
    """Starting an action records a Job; the action's validation is not under test here."""
    from agents import services

    def start_action(actor, agent, action, params):
        return jobs.enqueue("core.tests.jobfuncs.succeed", name=f"{agent}.{action}", actor=actor)

    monkeypatch.setattr(services, "start_action", start_action)


def test_the_same_idempotency_key_and_body_replays_the_first_response(queued_action, token_client):
    api = token_client("actions:run")
    body = {"agent": "devops", "action": "ping"}

    first = api.post(ACTIONS, body, format="json", headers={"Idempotency-Key": "k-1"})
    again = api.post(ACTIONS, body, format="json", headers={"Idempotency-Key": "k-1"})

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert Job.objects.count() == 1


def test_the_same_key_with_another_body_is_a_409(queued_action, token_client):
    api = token_client("actions:run")
    api.post(
        ACTIONS,
        {"agent": "devops", "action": "ping"},
        format="json",
        headers={"Idempotency-Key": "k-1"},
    )

    response = api.post(
        ACTIONS,
        {"agent": "devops", "action": "pong"},
        format="json",
        headers={"Idempotency-Key": "k-1"},
    )

    error = _error(response, 409)
    assert error["code"] == "idempotency_conflict"
    assert error["message"] == "This Idempotency-Key was used with a different request."
    assert Job.objects.count() == 1


def test_different_principals_may_use_the_same_key(queued_action, token_client, oscar, api_for):
    body = {"agent": "devops", "action": "ping"}
    responses = [
        client.post(ACTIONS, body, format="json", headers={"Idempotency-Key": "k-1"})
        for client in (
            token_client("actions:run", name="a"),
            token_client("actions:run", name="b"),
            api_for(oscar),
        )
    ]

    assert [r.status_code for r in responses] == [202, 202, 202]
    assert len({r.json()["id"] for r in responses}) == 3
    assert not any(r.has_header("Idempotent-Replayed") for r in responses)
    assert Job.objects.count() == 3


def test_a_401_is_not_remembered_for_the_key(queued_action, client):
    client.post(ACTIONS, {}, content_type="application/json", headers={"Idempotency-Key": "k-1"})

    assert not IdempotencyRecord.objects.exists()


def test_a_too_long_key_is_a_400_naming_the_header(token_client):
    response = token_client("actions:run").post(
        ACTIONS, {}, format="json", headers={"Idempotency-Key": "k" * 201}
    )

    assert _error(response, 400)["fields"] == {
        "Idempotency-Key": ["Expected at most 200 characters."]
    }


def test_lists_are_paginated_with_count_next_and_results(system_actor, token_client):
    for n in range(7):
        jobs.enqueue("core.tests.jobfuncs.succeed", name=f"job-{n}", actor=system_actor)
    api = token_client("read")

    first = api.get("/api/v1/jobs/?page_size=3").json()
    assert set(first) == {"count", "next", "previous", "results"}
    assert first["count"] == 7
    assert [j["name"] for j in first["results"]] == ["job-6", "job-5", "job-4"]
    assert first["previous"] is None
    assert first["next"] == "http://testserver/api/v1/jobs/?page=2&page_size=3"

    last = api.get("/api/v1/jobs/?page=3&page_size=3").json()
    assert [j["name"] for j in last["results"]] == ["job-0"]
    assert last["next"] is None

    assert len(api.get("/api/v1/jobs/").json()["results"]) == 7

    error = _error(api.get("/api/v1/jobs/?page=9"), 404)
    assert error["message"] == "Invalid page."
