"""The services, releases and deployments API: what a client sends, what it gets back, and
who may do what.

Personas (conftest.py): alice is an admin (overrides with a reason), oscar an operator
(registers releases, deploys, runs deployment actions), april an approver (approves
protected deployments, reads otherwise), victor a viewer (reads only).

Nothing here runs a rollout: the environments point at a dead endpoint, and with the `db`
fixture the first tick, enqueued after commit, is never enqueued at all.
"""

import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone
from rest_framework.test import APIClient

from core.models import AuditEvent
from environments import services as env_services
from releases import plans, services
from releases.models import (
    AnalysisRun,
    Deployment,
    DeploymentEvent,
    Measurement,
    Release,
    Service,
    TrafficChange,
)

S = Deployment.Status
DEPLOYMENTS = "/api/v1/deployments/"
DEAD = "http://127.0.0.1:9"  # nothing listens: any call to the platform would fail
CI_URL = "https://ci.example.test/runs/4242"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def envs(db, system_actor):
    """dev -> staging -> production (protected), on a platform that is not there."""
    return {
        name: env_services.create_environment(
            system_actor,
            name,
            order=order,
            protected=protected,
            platform="localcloud",
            run_endpoint=DEAD,
            monitoring_endpoint="127.0.0.1:9",
        )
        for name, order, protected in (
            ("dev", 10, False),
            ("staging", 20, False),
            ("production", 30, True),
        )
    }


@pytest.fixture
def web(envs, system_actor):
    """Service `web` with two good releases and one whose CI failed."""
    service = services.register_service(system_actor, "web")
    for version in ("1.0.0", "2.0.0"):
        services.register_release(
            system_actor, service, version, "img:" + version, ci_status="passed"
        )
    services.register_release(
        system_actor, service, "3.0.0-broken", "img:3", ci_status="failed", ci_url=CI_URL
    )
    return service


def release(version: str, service: str = "web") -> Release:
    return Release.objects.get(service__name=service, version=version)


def deployment(version: str, env: str, status: str = S.SUCCEEDED, service="web", **fields):
    """A deployment as the engine would have left it (no platform needed)."""
    r = release(version, service)
    return Deployment.objects.create(
        service=r.service,
        environment=env_services.get_environment(env),
        release=r,
        strategy=fields.pop("strategy", "canary"),
        steps=fields.pop("steps", plans.build_plan("canary", None)),
        status=status,
        requested_by=fields.pop("requested_by", "oscar"),
        finished_at=timezone.now() if status in Deployment.FINISHED else None,
        **fields,
    )


def deploy(api, version: str, env: str, **body):
    return api.post(
        DEPLOYMENTS,
        {"service": "web", "environment": env, "version": version, **body},
        format="json",
    )


def error(response) -> dict:
    return response.json()["error"]


# Services and releases


def test_operator_registers_a_service_and_a_release(oscar, api_for):
    api = api_for(oscar)

    created = api.post(
        "/api/v1/services/",
        {"name": "billing", "owners": "payments", "default_strategy": "blue_green"},
        format="json",
    )
    assert created.status_code == 201, created.json()
    assert created.json()["default_strategy"] == "blue_green"

    r = api.post(
        "/api/v1/services/billing/releases/",
        {
            "version": "1.4.2",
            "artifact": "img:1.4.2",
            "commit_sha": "abc123",
            "ci_status": "passed",
        },
        format="json",
    )
    assert r.status_code == 201, r.json()
    assert (r.json()["service"], r.json()["created_by"]) == ("billing", "oscar")

    listed = api.get("/api/v1/services/billing/releases/").json()["results"]
    assert [x["version"] for x in listed] == ["1.4.2"]
    assert AuditEvent.objects.filter(action="release.create", actor="oscar").count() == 1
    assert api.get("/api/v1/services/billing/").json()["owners"] == "payments"


def test_registering_needs_releases_write_and_the_403_names_it(
    db, envs, web, victor, api_for, token_client
):
    by_token = token_client("read", "deployments:write").post(
        "/api/v1/services/", {"name": "billing"}, format="json"
    )
    assert by_token.status_code == 403
    assert "'releases:write'" in error(by_token)["message"]

    by_viewer = api_for(victor).post(
        "/api/v1/services/web/releases/", {"version": "9", "artifact": "x"}, format="json"
    )
    assert by_viewer.status_code == 403
    assert "releases:write" in error(by_viewer)["message"]
    assert not Service.objects.filter(name="billing").exists()
    assert not Release.objects.filter(version="9").exists()

    allowed = token_client("releases:write").post(
        "/api/v1/services/web/releases/", {"version": "9", "artifact": "x"}, format="json"
    )
    assert allowed.status_code == 201
    assert allowed.json()["created_by"] == "token:test-agent"


def test_a_version_is_registered_once_and_never_changes(web, oscar, api_for):
    api = api_for(oscar)

    again = api.post(
        "/api/v1/services/web/releases/",
        {"version": "1.0.0", "artifact": "img:other"},
        format="json",
    )

    assert again.status_code == 409
    assert "immutable" in error(again)["message"]
    assert "version" in error(again)["fields"]
    assert release("1.0.0").artifact == "img:1.0.0"
    r = release("1.0.0")
    r.artifact = "img:other"
    with pytest.raises(ValueError, match="immutable"):
        r.save()
    assert release("1.0.0").artifact == "img:1.0.0"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"artifact": "x"}, "version"),
        ({"version": "1"}, "artifact"),
        ({"version": "1", "artifact": "x", "ci_status": "green"}, "ci_status"),
        ({"version": "1", "artifact": "x", "env": {"A": 1}}, "env"),
        ({"version": "1", "artifact": "x", "ci_url": "not a url"}, "ci_url"),
    ],
)
def test_a_bad_release_names_the_field(web, oscar, api_for, body, field):
    response = api_for(oscar).post("/api/v1/services/web/releases/", body, format="json")

    assert response.status_code == 400
    assert field in error(response)["fields"]


def test_bad_services_are_named(web, oscar, api_for):
    api = api_for(oscar)

    bad_name = api.post("/api/v1/services/", {"name": "Web_App"}, format="json")
    assert bad_name.status_code == 400 and "name" in error(bad_name)["fields"]
    duplicate = api.post("/api/v1/services/", {"name": "web"}, format="json")
    assert duplicate.status_code == 409 and "name" in error(duplicate)["fields"]
    bad_steps = api.post(
        "/api/v1/services/",
        {"name": "api", "default_steps": {"canary": {"steps": [{"set_weight": 500}]}}},
        format="json",
    )
    assert bad_steps.status_code == 400
    assert "params.steps.0.set_weight" in error(bad_steps)["fields"]
    missing = api.post("/api/v1/services/nope/releases/", {"version": "1", "artifact": "x"})
    assert missing.status_code == 404 and "service" in error(missing)["fields"]


# The deploy request: every field checked


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"service": None}, 400, "service"),
        ({"service": "nope"}, 404, "service"),
        ({"environment": None}, 400, "environment"),
        ({"environment": "qa"}, 404, "environment"),
        ({"version": None}, 400, "version"),
        ({"version": "0.0.1"}, 404, "version"),
        ({"strategy": "rolling"}, 400, "strategy"),
        ({"params": ["set_weight", 10]}, 400, "params"),
        ({"params": {"steps": [{"set_weight": 0}]}}, 400, "params.steps.0.set_weight"),
        ({"params": {"steps": [{"set_weight": 10}, {"nap": 1}]}}, 400, "params.steps.1"),
        ({"strategy": "blue_green", "params": {"smoke_path": "x"}}, 400, "params.smoke_path"),
        ({"strategy": "progressive", "params": {"increments": 0}}, 400, "params.increments"),
        ({"strategy": "all_at_once", "params": {"weight": 5}}, 400, "params.weight"),
        ({"dry_run": "perhaps"}, 400, "dry_run"),
        ({"override_reason": "x" * 301}, 400, "override_reason"),
        ({"stratgy": "canary"}, 400, "stratgy"),
    ],
)
def test_a_bad_deploy_request_names_the_field(web, oscar, api_for, body, status, field):
    request = {"service": "web", "environment": "dev", "version": "1.0.0", **body}
    request = {k: v for k, v in request.items() if v is not None}

    response = api_for(oscar).post(DEPLOYMENTS, request, format="json")

    assert response.status_code == status, response.json()
    assert field in error(response)["fields"], error(response)
    assert field in error(response)["message"] or status == 404
    assert not Deployment.objects.exists()


def test_a_release_whose_ci_failed_is_refused_naming_the_ci_run(web, oscar, api_for):
    response = deploy(api_for(oscar), "3.0.0-broken", "dev")

    assert response.status_code == 400
    assert error(response)["code"] == "ci_failed"
    assert CI_URL in error(response)["message"]
    assert not Deployment.objects.exists()


def test_a_deploy_is_created_with_its_plan_and_audited(web, oscar, api_for):
    response = deploy(
        api_for(oscar), "1.0.0", "dev", strategy="canary", params={"steps": [{"set_weight": 25}]}
    )

    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["status"], body["version"], body["requested_by"]) == (S.RUNNING, "1.0.0", "oscar")
    assert [s["type"] for s in body["steps"]] == [
        "deploy",
        "set_weight",
        "set_weight",
        "finalize",
    ]
    assert body["steps"][0]["state"] == "current"
    assert body["job"]
    assert [e["kind"] for e in body["events"]] == ["requested"]
    event = AuditEvent.objects.get(action="deployment.request")
    assert event.summary["strategy"] == "canary" and event.actor == "oscar"


# Dry runs


def test_a_dry_run_answers_the_plan_and_every_refusal_creating_nothing(
    web, oscar, api_for, system_actor, monkeypatch
):
    from releases import gates

    deployment("1.0.0", "production", S.RUNNING)
    production = env_services.get_environment("production")
    env_services.add_freeze_window(
        system_actor,
        production,
        "quarter close",
        starts_at=timezone.now() - timedelta(hours=1),
        ends_at=timezone.now() + timedelta(hours=1),
    )
    monkeypatch.setattr(
        gates,
        "_GATES",
        [lambda s, e, rb: gates.Hold("incident_open", "INC-7 (SEV1) is open on web.")],
    )
    before = (Deployment.objects.count(), DeploymentEvent.objects.count())

    response = deploy(api_for(oscar), "3.0.0-broken", "production", dry_run=True)

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["dry_run"] is True and body["outcome"] == "refused"
    assert body["needs_approval"] is True
    assert [r["code"] for r in body["refusals"]] == [
        "ci_failed",
        "active_deployment",
        "promotion_order",
        "frozen",
        "incident_open",
    ]
    messages = " ".join(r["message"] for r in body["refusals"])
    assert CI_URL in messages and "quarter close" in messages and "staging" in messages
    overridable = {r["code"] for r in body["refusals"] if r["overridable"]}
    assert overridable == {"promotion_order", "frozen", "incident_open"}
    assert [s["type"] for s in body["steps"]][:3] == ["deploy", "set_weight", "analysis"]
    assert all(s["description"] for s in body["steps"])
    assert (Deployment.objects.count(), DeploymentEvent.objects.count()) == before
    assert not AuditEvent.objects.filter(action="deployment.request").exists()


def test_a_clean_dry_run_says_it_would_start_or_wait_for_approval(web, oscar, api_for):
    deployment("1.0.0", "staging")
    api = api_for(oscar)

    dev = deploy(api, "1.0.0", "dev", dry_run=True, strategy="all_at_once").json()
    prod = deploy(api, "1.0.0", "production", dry_run=True).json()

    assert (dev["outcome"], dev["refusals"]) == ("start", [])
    assert [s["type"] for s in dev["steps"]] == ["deploy", "set_weight", "finalize"]
    assert (prod["outcome"], prod["refusals"], prod["needs_approval"]) == (
        "awaiting_approval",
        [],
        True,
    )
    assert not Deployment.objects.filter(status=S.AWAITING_APPROVAL).exists()


def test_a_dry_run_names_the_stable_release(web, oscar, api_for):
    deployment("1.0.0", "dev")

    body = deploy(api_for(oscar), "2.0.0", "dev", dry_run=True).json()

    assert body["stable_release"] == "1.0.0"


# The promotion order and freeze windows


def test_a_release_enters_staging_only_after_it_succeeded_in_dev(web, oscar, api_for):
    api = api_for(oscar)

    refused = deploy(api, "1.0.0", "staging")
    assert refused.status_code == 400
    assert error(refused)["code"] == "promotion_order"
    assert "has not succeeded in dev" in error(refused)["message"]
    # An operator's reason overrides nothing.
    assert deploy(api, "1.0.0", "staging", override_reason="hotfix").status_code == 400
    # Another release succeeding in dev does not count, nor does a failed run of this one.
    deployment("2.0.0", "dev")
    deployment("1.0.0", "dev", S.FAILED)
    assert deploy(api, "1.0.0", "staging").status_code == 400

    deployment("1.0.0", "dev", S.SUCCEEDED, service="web")
    assert deploy(api, "1.0.0", "staging").status_code == 201


def test_an_admin_overrides_the_promotion_order_with_a_reason_and_it_is_audited(
    web, alice, api_for
):
    api = api_for(alice)

    assert deploy(api, "1.0.0", "staging").status_code == 400  # no reason, no override
    response = deploy(api, "1.0.0", "staging", override_reason="dev is down; hotfix")

    assert response.status_code == 201, response.json()
    assert response.json()["override_reason"] == "dev is down; hotfix"
    assert "override: dev is down; hotfix" in response.json()["events"][0]["message"]
    event = AuditEvent.objects.get(action="deployment.request")
    assert (event.actor, event.summary["override_reason"]) == ("alice", "dev is down; hotfix")


def test_a_freeze_window_blocks_unless_an_admin_overrides_with_a_reason(
    web, oscar, alice, api_for, system_actor
):
    deployment("1.0.0", "dev")
    staging = env_services.get_environment("staging")
    env_services.add_freeze_window(
        system_actor,
        staging,
        "launch week",
        starts_at=timezone.now() - timedelta(minutes=5),
        ends_at=timezone.now() + timedelta(minutes=55),
    )

    frozen = deploy(api_for(oscar), "1.0.0", "staging")
    assert frozen.status_code == 409
    assert error(frozen)["code"] == "frozen"
    assert "launch week" in error(frozen)["message"]
    assert deploy(api_for(alice), "1.0.0", "staging").status_code == 409
    assert not Deployment.objects.filter(environment=staging).exists()

    allowed = deploy(api_for(alice), "1.0.0", "staging", override_reason="security fix")
    assert allowed.status_code == 201
    assert AuditEvent.objects.get(action="deployment.request").summary["override_reason"] == (
        "security fix"
    )


# Approval of protected environments


def test_a_protected_environment_waits_for_another_approver(web, alice, april, api_for):
    deployment("1.0.0", "staging")

    requested = deploy(api_for(alice), "1.0.0", "production")
    assert requested.status_code == 201
    body = requested.json()
    assert (body["status"], body["reason"], body["job"]) == (
        S.AWAITING_APPROVAL,
        "waiting for an approver",
        None,
    )
    url = f"{DEPLOYMENTS}{body['id']}/approve/"

    own = api_for(alice).post(url)
    assert own.status_code == 403
    assert "alice requested deployment" in error(own)["message"]
    assert Deployment.objects.get(pk=body["id"]).status == S.AWAITING_APPROVAL

    approved = api_for(april).post(url)
    assert approved.status_code == 200, approved.json()
    assert (approved.json()["status"], approved.json()["approved_by"]) == (S.RUNNING, "april")
    assert approved.json()["job"]
    assert [e["kind"] for e in approved.json()["events"]] == ["requested", "approved"]
    again = api_for(april).post(url)
    assert again.status_code == 409 and error(again)["code"] == "invalid_state"


def test_an_approver_rejects_with_a_reason(web, alice, april, api_for):
    deployment("1.0.0", "staging")
    pk = deploy(api_for(alice), "1.0.0", "production").json()["id"]

    own = api_for(alice).post(f"{DEPLOYMENTS}{pk}/reject/", {"reason": "mine"}, format="json")
    assert own.status_code == 403
    response = api_for(april).post(
        f"{DEPLOYMENTS}{pk}/reject/", {"reason": "not during the sale"}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["status"] == S.ABORTED
    assert response.json()["reason"] == "rejected by april: not during the sale"
    assert AuditEvent.objects.filter(action="deployment.reject", actor="april").exists()
    # The environment is free again.
    assert deploy(api_for(alice), "2.0.0", "production", dry_run=True).json()["refusals"] != []
    assert deploy(api_for(alice), "1.0.0", "production").status_code == 201


# One active deployment per service and environment


def test_a_second_deploy_gets_409_naming_the_active_one(web, oscar, api_for):
    first = deploy(api_for(oscar), "1.0.0", "dev").json()

    second = deploy(api_for(oscar), "2.0.0", "dev")

    assert second.status_code == 409
    assert error(second)["code"] == "active_deployment"
    assert f"Deployment #{first['id']} of web to dev is running" in error(second)["message"]


def test_ten_parallel_deploys_create_exactly_one(transactional_db, system_actor):
    from core import tokens

    env_services.create_environment(system_actor, "dev", order=10, run_endpoint=DEAD)
    service = services.register_service(system_actor, "web")
    services.register_release(system_actor, service, "1.0.0", "img:1", ci_status="passed")
    # Ten CI pipelines, each with its own token; each thread has its own database connection.
    raw = [
        tokens.create_token(system_actor, f"ci-{i}", ["deployments:write"]).raw for i in range(10)
    ]
    barrier = threading.Barrier(10)
    answers: list = [None] * 10

    def request(i: int) -> None:
        try:
            api = APIClient()
            api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw[i]}")
            barrier.wait(10)
            answers[i] = api.post(
                DEPLOYMENTS,
                {"service": "web", "environment": "dev", "version": "1.0.0"},
                format="json",
            )
        finally:
            connections.close_all()

    threads = [threading.Thread(target=request, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201] + [409] * 9, [a.json() for a in answers]
    active = Deployment.objects.get()
    for answer in answers:
        if answer.status_code == 409:
            assert error(answer)["code"] == "active_deployment"
            assert f"Deployment #{active.pk} of web to dev" in error(answer)["message"]
    assert DeploymentEvent.objects.filter(kind="requested").count() == 1


# Listing and reading deployments


def test_the_list_filters_by_service_environment_status_and_version(
    web, victor, api_for, system_actor
):
    api_service = services.register_service(system_actor, "api")
    services.register_release(system_actor, api_service, "1.0.0", "img:api", ci_status="passed")
    a = deployment("1.0.0", "dev")
    b = deployment("2.0.0", "dev", S.FAILED)
    c = deployment("2.0.0", "staging", S.RUNNING)
    d = deployment("1.0.0", "dev", S.PAUSED, service="api")
    api = api_for(victor)

    def ids(**query) -> list[int]:
        body = api.get(DEPLOYMENTS, query).json()
        assert body["count"] == len(body["results"])
        return [x["id"] for x in body["results"]]

    assert ids() == [d.pk, c.pk, b.pk, a.pk]  # newest first
    assert ids(service="web") == [c.pk, b.pk, a.pk]
    assert ids(environment="dev") == [d.pk, b.pk, a.pk]
    assert ids(status="running,paused") == [d.pk, c.pk]
    assert ids(status="failed") == [b.pk]
    assert ids(version="2.0.0") == [c.pk, b.pk]
    assert ids(service="web", environment="dev", version="1.0.0") == [a.pk]
    assert ids(service="nope") == []
    row = api.get(DEPLOYMENTS, {"status": "paused"}).json()["results"][0]
    assert (row["service"], row["environment"], row["version"]) == ("api", "dev", "1.0.0")


def test_the_list_is_paginated(web, victor, api_for):
    made = [deployment("1.0.0", "dev", S.FAILED).pk for _ in range(5)]
    api = api_for(victor)

    first = api.get(DEPLOYMENTS, {"page_size": 2}).json()
    last = api.get(DEPLOYMENTS, {"page_size": 2, "page": 3}).json()

    assert first["count"] == 5
    assert [x["id"] for x in first["results"]] == made[::-1][:2]
    assert "page=2" in first["next"] and first["previous"] is None
    assert [x["id"] for x in last["results"]] == [made[0]]
    assert last["next"] is None
    assert api.get(DEPLOYMENTS, {"page": 9}).status_code == 404


def test_the_detail_shows_steps_events_traffic_and_analyses(web, victor, api_for):
    d = deployment(
        "2.0.0",
        "dev",
        S.PAUSED,
        current_step=3,
        stable_revision="web-1-0-0-d1",
        new_revision="web-2-0-0-d2",
        reason="analysis inconclusive: too little traffic",
    )
    services.record_event(d, "requested", "oscar requested 2.0.0 with canary", "oscar")
    TrafficChange.objects.create(
        deployment=d, split={"web-2-0-0-d2": 10, "web-1-0-0-d1": 90}, new_percent=10
    )
    run = AnalysisRun.objects.create(
        deployment=d, step_index=2, template="default", metrics=[], result="inconclusive"
    )
    Measurement.objects.create(
        run=run,
        metric="error-rate",
        value=None,
        sample_count=3,
        threshold="<= 0.02",
        result="inconclusive",
        detail="too little traffic: 3 requests, need 10",
    )

    response = api_for(victor).get(f"{DEPLOYMENTS}{d.pk}/")

    assert response.status_code == 200
    body = response.json()
    assert [s["state"] for s in body["steps"]] == [
        "done",
        "done",
        "done",
        "current",
        "pending",
        "pending",
        "pending",
    ]
    assert body["steps"][1]["description"] == "shift 10% of traffic to the new revision"
    assert body["events"][0]["message"] == "oscar requested 2.0.0 with canary"
    assert body["traffic"][0]["split"] == {"web-2-0-0-d2": 10, "web-1-0-0-d1": 90}
    assert body["traffic"][0]["new_percent"] == 10
    analysis = body["analyses"][0]
    assert (analysis["template"], analysis["result"]) == ("default", "inconclusive")
    assert analysis["measurements"][0]["detail"] == "too little traffic: 3 requests, need 10"
    assert body["reason"] == "analysis inconclusive: too little traffic"
    missing = api_for(victor).get(f"{DEPLOYMENTS}999999/")
    assert missing.status_code == 404


# Who may act on a deployment

STATE_FOR = {
    "approve": S.AWAITING_APPROVAL,
    "reject": S.AWAITING_APPROVAL,
    "promote": S.PAUSED,
    "pause": S.RUNNING,
    "resume": S.PAUSED,
    "abort": S.RUNNING,
    "retry": S.FAILED,
}
# action -> what each persona gets: approvers approve, operators run the rollout, viewers read.
MATRIX = {
    "approve": {"alice": 200, "oscar": 403, "april": 200, "victor": 403},
    "reject": {"alice": 200, "oscar": 403, "april": 200, "victor": 403},
    "promote": {"alice": 200, "oscar": 200, "april": 403, "victor": 403},
    "pause": {"alice": 200, "oscar": 200, "april": 403, "victor": 403},
    "resume": {"alice": 200, "oscar": 200, "april": 403, "victor": 403},
    "abort": {"alice": 200, "oscar": 200, "april": 403, "victor": 403},
    "retry": {"alice": 201, "oscar": 201, "april": 403, "victor": 403},
}
AFTER = {
    "approve": S.RUNNING,
    "reject": S.ABORTED,
    "promote": S.RUNNING,
    "pause": S.PAUSED,
    "resume": S.RUNNING,
    "abort": S.RUNNING,  # the engine moves traffic back, then marks it aborted
    "retry": S.FAILED,  # the old one stays failed; a new one runs
}


@pytest.mark.parametrize(
    ("action", "persona"),
    [(a, p) for a in MATRIX for p in ("alice", "oscar", "april", "victor")],
)
def test_deployment_action_permissions(web, request, api_for, action, persona):
    user = request.getfixturevalue(persona)
    env = "production" if STATE_FOR[action] == S.AWAITING_APPROVAL else "dev"
    d = deployment(
        "1.0.0",
        env,
        STATE_FOR[action],
        requested_by="someone-else",
        stable_revision="web-r1",
        new_revision="web-r2",
    )
    expected = MATRIX[action][persona]

    response = api_for(user).post(f"{DEPLOYMENTS}{d.pk}/{action}/", {}, format="json")

    assert response.status_code == expected, response.json()
    d.refresh_from_db()
    if expected == 403:
        assert error(response)["code"] == "permission_denied"
        scope = "approve" if action in ("approve", "reject") else "deployments:write"
        assert f"'{scope}'" in error(response)["message"]
        assert d.status == STATE_FOR[action]
    else:
        assert d.status == AFTER[action]
        if action == "retry":
            new = response.json()
            assert new["id"] != d.pk and new["status"] == S.RUNNING
            assert new["steps"][0]["type"] == "deploy"
        audited = "deployment.request" if action == "retry" else f"deployment.{action}"
        assert AuditEvent.objects.filter(action=audited, actor=persona).exists()


def test_abort_records_the_request_for_the_engine(web, oscar, api_for):
    d = deployment("1.0.0", "dev", S.RUNNING, stable_revision="web-r1", new_revision="web-r2")

    response = api_for(oscar).post(
        f"{DEPLOYMENTS}{d.pk}/abort/", {"reason": "pager went off"}, format="json"
    )

    d.refresh_from_db()
    assert response.status_code == 200
    assert d.step_state["abort"] == "aborted by oscar: pager went off"
    assert d.next_tick_at is not None and d.next_tick_at <= timezone.now()
    # Nothing was put on the platform yet: aborting before the deploy step ends it at once.
    early = deployment("1.0.0", "staging", S.RUNNING)
    done = api_for(oscar).post(f"{DEPLOYMENTS}{early.pk}/abort/", {}, format="json").json()
    assert (done["status"], done["reason"]) == (S.ABORTED, "aborted by oscar")


def test_an_unknown_action_is_a_404_naming_the_actions(web, oscar, api_for):
    d = deployment("1.0.0", "dev", S.RUNNING)

    response = api_for(oscar).post(f"{DEPLOYMENTS}{d.pk}/explode/")

    assert response.status_code == 404
    assert "approve, reject, promote" in error(response)["message"]


def test_actions_in_the_wrong_state_are_409(web, oscar, api_for):
    d = deployment("1.0.0", "dev", S.SUCCEEDED)
    api = api_for(oscar)

    for action in ("promote", "pause", "resume", "abort", "retry"):
        response = api.post(f"{DEPLOYMENTS}{d.pk}/{action}/", {}, format="json")
        assert response.status_code == 409, action
        assert error(response)["code"] == "invalid_state"
        assert f"is succeeded; cannot {action}" in error(response)["message"]


def test_rollback_with_nothing_to_roll_back_to_is_409(web, oscar, api_for):
    deployment("1.0.0", "dev", new_revision="web-r1")

    response = api_for(oscar).post(
        "/api/v1/services/web/rollback/", {"environment": "dev"}, format="json"
    )

    assert response.status_code == 409
    assert error(response)["code"] == "nothing_to_roll_back"
    assert "no earlier successful release in dev" in error(response)["message"]
    assert api_for(oscar).post("/api/v1/services/web/rollback/", {}, format="json").json()["error"][
        "fields"
    ] == {"environment": ["This field is required."]}


def test_viewer_cannot_deploy_or_roll_back(web, victor, api_for):
    api = api_for(victor)

    assert deploy(api, "1.0.0", "dev").status_code == 403
    assert deploy(api, "1.0.0", "dev", dry_run=True).status_code == 403
    rollback = api.post("/api/v1/services/web/rollback/", {"environment": "dev"}, format="json")
    assert rollback.status_code == 403
    assert "deployments:write" in error(rollback)["message"]
    assert api.get(DEPLOYMENTS).status_code == 200


def test_retrying_a_failed_rollback_is_a_rollback_again(web, oscar, api_for):
    current = deployment("2.0.0", "production", new_revision="web-r2")
    step = {"type": "rollback", "revision": "web-r1", "from_revision": "web-r2"}
    failed = deployment(
        "1.0.0", "production", S.FAILED, is_rollback=True, rollback_of=current, steps=[step]
    )

    response = api_for(oscar).post(f"{DEPLOYMENTS}{failed.pk}/retry/")

    # No promotion order and no approval, as for the rollback it retries.
    assert response.status_code == 201, response.json()
    assert (response.json()["status"], response.json()["is_rollback"]) == (S.RUNNING, True)
    assert [s["type"] for s in response.json()["steps"]] == ["rollback"]
    assert Deployment.objects.get(pk=response.json()["id"]).rollback_of == current


def test_rollback_by_environment_path_names_an_unknown_environment(web, oscar, api_for):
    api = api_for(oscar)

    unknown = api.post("/api/v1/services/web/environments/nowhere/rollback/", {}, format="json")
    assert unknown.status_code == 404
    assert error(unknown)["fields"] == {"environment": ["No such environment."]}

    deployment("1.0.0", "dev", new_revision="web-r1")
    nothing = api.post("/api/v1/services/web/environments/dev/rollback/", {}, format="json")
    assert nothing.status_code == 409
    assert error(nothing)["code"] == "nothing_to_roll_back"


def test_retry_of_an_overridden_deployment_takes_an_admin_override_again(
    web, alice, oscar, api_for
):
    # 2.0.0 never succeeded in dev: its staging deployment needed the admin's override.
    failed = deployment("2.0.0", "staging", S.FAILED, override_reason="hotfix")

    refused = api_for(oscar).post(f"{DEPLOYMENTS}{failed.pk}/retry/", {}, format="json")
    assert refused.status_code == 400
    assert error(refused)["code"] == "promotion_order"

    again = api_for(alice).post(
        f"{DEPLOYMENTS}{failed.pk}/retry/",
        {"override_reason": "hotfix, second try"},
        format="json",
    )
    assert again.status_code == 201, again.json()
    retried = Deployment.objects.get(pk=again.json()["id"])
    assert retried.override_reason == "hotfix, second try"
    assert retried.steps == failed.steps
