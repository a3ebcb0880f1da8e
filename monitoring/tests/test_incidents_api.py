"""The incidents API: create, timeline, acknowledge/resolve/reopen, filters, validation,
permissions and deduplication by key."""

import pytest

from core.roles import INCIDENTS_WRITE, READ
from monitoring import services
from monitoring.models import Incident

URL = "/api/v1/incidents/"


@pytest.fixture
def agent(token_client):
    return token_client(READ, INCIDENTS_WRITE)


def _open(api, **body):
    payload = {"title": "web is slow", "severity": "sev3", "services": ["web"]}
    payload.update(body)
    return api.post(URL, payload, format="json")


def test_it_creates_an_incident_and_its_timeline(agent, web, envs):
    response = _open(agent, environments=["dev"], description="p95 over 2 s")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["state"] == "triggered"
    assert body["services"] == ["web"] and body["environments"] == ["dev"]
    assert body["source"] == "agent"
    assert [e["kind"] for e in body["events"]] == ["opened"]
    assert body["events"][0]["actor"] == "token:test-agent"

    pk = body["id"]
    note = agent.post(f"{URL}{pk}/events/", {"message": "looking at the DB"}, format="json")
    assert note.status_code == 201 and note.json()["kind"] == "note"
    event = agent.post(
        f"{URL}{pk}/events/",
        {"kind": "remediation", "message": "scaled up", "data": {"instances": 4}},
        format="json",
    )
    assert event.status_code == 201
    events = agent.get(f"{URL}{pk}/events/").json()["results"]
    assert [e["kind"] for e in events] == ["opened", "note", "remediation"]
    assert events[2]["data"] == {"instances": 4}


def test_it_acknowledges_resolves_and_reopens(agent, api_for, oscar, web, envs):
    pk = _open(agent).json()["id"]
    person = api_for(oscar)
    ack = person.post(f"{URL}{pk}/acknowledge/", format="json")
    assert ack.status_code == 200
    assert ack.json()["state"] == "acknowledged"
    assert ack.json()["commander"] == "oscar"  # the first to acknowledge leads
    again = person.post(f"{URL}{pk}/acknowledge/", format="json")
    assert again.status_code == 409

    early = person.patch(f"{URL}{pk}/", {"root_cause": "a bad index"}, format="json")
    assert early.status_code == 400
    assert "root_cause" in early.json()["error"]["fields"]

    resolved = person.post(f"{URL}{pk}/resolve/", {"note": "index added"}, format="json")
    assert resolved.json()["state"] == "resolved"
    postmortem = person.patch(
        f"{URL}{pk}/",
        {"summary": "slow queries", "root_cause": "a missing index", "action_items": "lint"},
        format="json",
    )
    assert postmortem.status_code == 200
    assert postmortem.json()["root_cause"] == "a missing index"

    reopened = person.post(f"{URL}{pk}/reopen/", {"note": "slow again"}, format="json")
    assert reopened.json()["state"] == "reopened"
    kinds = [e["kind"] for e in reopened.json()["events"]]
    assert kinds == ["opened", "acknowledged", "resolved", "changed", "reopened"]
    assert reopened.json()["events"][-1]["message"] == "reopened by oscar: slow again"


def test_it_filters_by_state_severity_service_and_environment(agent, web, envs, admin_actor):
    from releases import services as release_services

    release_services.register_service(admin_actor, "api")
    a = _open(agent, severity="sev1", environments=["prod"]).json()["id"]
    b = _open(agent, severity="sev3", services=["api"], environments=["dev"]).json()["id"]
    agent.post(f"{URL}{b}/resolve/", format="json")

    def ids(query):
        response = agent.get(URL + query)
        assert response.status_code == 200, response.json()
        return [i["id"] for i in response.json()["results"]]

    assert ids("?state=open") == [a]
    assert ids("?state=resolved") == [b]
    assert ids("?severity=sev1,sev2") == [a]
    assert ids("?service=api") == [b]
    assert ids("?environment=prod") == [a]
    assert sorted(ids("")) == sorted([a, b])
    bad = agent.get(URL + "?state=burning&severity=sev9")
    assert bad.status_code == 400
    assert set(bad.json()["error"]["fields"]) == {"state", "severity"}


def test_bad_input_is_refused_naming_the_fields(agent, web, envs):
    response = agent.post(
        URL,
        {"severity": "sev7", "services": ["nope"], "environments": "dev"},
        format="json",
    )
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert {"title", "severity", "environments"} <= set(fields)

    unknown = _open(agent, services=["nope", "web"])
    assert unknown.status_code == 400
    assert unknown.json()["error"]["fields"]["services"] == ["No service named 'nope'."]

    pk = _open(agent).json()["id"]
    bad_event = agent.post(f"{URL}{pk}/events/", {"kind": "resolved"}, format="json")
    assert bad_event.status_code == 400
    assert set(bad_event.json()["error"]["fields"]) == {"kind", "message"}
    bad_patch = agent.patch(f"{URL}{pk}/", {"commander": "nobody", "colour": "red"}, format="json")
    assert bad_patch.status_code == 400
    assert "colour" in bad_patch.json()["error"]["fields"]


def test_permissions(api_for, victor, token_client, web, envs):
    viewer = api_for(victor)
    assert viewer.get(URL).status_code == 200
    refused = _open(viewer)
    assert refused.status_code == 403
    assert "incidents:write" in refused.json()["error"]["message"]

    reader = token_client(READ, name="reader")
    refused = _open(reader)
    assert refused.status_code == 403
    assert "lacks the 'incidents:write' scope" in refused.json()["error"]["message"]
    assert Incident.objects.count() == 0
    assert token_client(READ).get(URL + "?state=open").status_code == 200


def test_a_key_deduplicates_open_incidents(agent, web, envs):
    first = _open(agent, key="probe:web:dev")
    second = _open(agent, key="probe:web:dev", title="web is still slow")
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert Incident.objects.count() == 1
    kinds = [e["kind"] for e in second.json()["events"]]
    assert kinds == ["opened", "alert_fired"]

    agent.post(f"{URL}{first.json()['id']}/resolve/", format="json")
    third = _open(agent, key="probe:web:dev")
    assert third.status_code == 201 and third.json()["id"] != first.json()["id"]
    # The old one cannot reopen while another with its key is open.
    refused = agent.post(f"{URL}{first.json()['id']}/reopen/", format="json")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "duplicate_key"


def test_the_service_layer_dedups_a_key_too(admin_actor, web, envs):
    one = services.open_incident(admin_actor, "down", key="k", services=[web])
    two = services.open_incident(admin_actor, "down", key="k", services=[web])
    assert one.created and not two.created
    assert one.incident.pk == two.incident.pk
