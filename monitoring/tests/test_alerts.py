"""Alert policies: API, evaluation against localcloud's Monitoring stand-in, firing into one
incident, webhook delivery (and its failure, on the timeline), and the copy kept in Cloud
Monitoring through AlertPolicyServiceClient."""

import time

import pytest

from agents.devops import health
from agents.devops.platform import PlatformConfig, alert_policy_client
from core.roles import INCIDENTS_WRITE, READ
from environments import services as env_services
from localcloud.requestlog import RequestRecord
from monitoring.models import AlertPolicy, Incident
from monitoring.tests.conftest import closed_port

URL = "/api/v1/alert-policies/"


@pytest.fixture
def live(db, admin_actor, monitoring_server):
    return env_services.create_environment(
        admin_actor,
        "live",
        order=50,
        platform="localcloud",
        gcp_project="test-live",
        region="local",
        run_endpoint=f"http://127.0.0.1:{closed_port()}",
        monitoring_endpoint=monitoring_server.endpoint,
    )


def _traffic(server, service="web", ok=20, errors=10):
    now = time.time()
    for i in range(ok + errors):
        status = 500 if i < errors else 200
        server.log.append(
            RequestRecord(now - 5 + i * 0.1, service, f"{service}-1", None, status, 12.0)
        )


def _policy(api, webhook: str, **extra):
    body = {
        "name": "web errors",
        "service": "web",
        "environment": "live",
        "metric": "error_rate",
        "window_s": 60,
        "comparison": ">",
        "threshold": 0.1,
        "severity": "sev2",
        "webhook_url": webhook,
    }
    body.update(extra)
    return api.post(URL, body, format="json")


def test_a_firing_policy_opens_one_incident_and_notifies_once(
    token_client,
    web,
    live,
    monitoring_server,
    webhook_server,
    fast_webhooks,
    run_worker,
    django_capture_on_commit_callbacks,
):
    api = token_client(READ, INCIDENTS_WRITE)
    with django_capture_on_commit_callbacks(execute=True):
        created = _policy(api, webhook_server.url)
    assert created.status_code == 201, created.json()
    policy_id = created.json()["id"]
    run_worker("default")  # the sync to Cloud Monitoring
    policy = AlertPolicy.objects.get(pk=policy_id)
    assert policy.cloud_name.startswith("projects/test-live/alertPolicies/"), (
        policy.cloud_sync_error
    )
    client = alert_policy_client(PlatformConfig(**live.platform_settings()))
    stored = client.get_alert_policy(name=policy.cloud_name)
    assert stored.display_name == "ops-portal: web errors"
    assert stored.conditions[0].condition_threshold.threshold_value == 0.1

    _traffic(monitoring_server)
    with django_capture_on_commit_callbacks(execute=True):
        first = health.evaluate_policies()
        second = health.evaluate_policies()
    assert first["errors"] == {} and len(first["fired"]) == 1
    assert first["fired"][0]["incident"] == second["fired"][0]["incident"]
    incident = Incident.objects.get()
    assert incident.key == f"alert:{policy_id}" and incident.severity == "sev2"
    kinds = list(incident.events.values_list("kind", flat=True))
    assert kinds == ["opened", "alert_fired", "alert_fired"]
    assert "still firing" in incident.events.last().message
    policy.refresh_from_db()
    assert policy.state == "firing" and policy.last_value == pytest.approx(10 / 30)

    with django_capture_on_commit_callbacks(execute=True):
        run_worker("default")  # one notification: only the first firing notifies
    assert len(webhook_server.received) == 1
    payload = webhook_server.received[0]
    assert payload["incident"] == incident.pk and payload["severity"] == "sev2"
    assert "web errors fired" in payload["message"]
    assert incident.events.filter(kind="notification_sent").count() == 1


def test_an_undeliverable_webhook_shows_on_the_timeline(
    token_client,
    web,
    live,
    monitoring_server,
    fast_webhooks,
    run_worker,
    django_capture_on_commit_callbacks,
):
    api = token_client(READ, INCIDENTS_WRITE)
    dead = f"http://127.0.0.1:{closed_port()}/hook"
    policy_id = _policy(api, dead).json()["id"]
    _traffic(monitoring_server)
    with django_capture_on_commit_callbacks(execute=True):
        health.evaluate_policies()
    run_worker("default")
    incident = Incident.objects.get(key=f"alert:{policy_id}")
    failed = incident.events.get(kind="notification_failed")
    assert f"webhook {dead} not delivered after 3 attempts" in failed.message
    assert "ConnectionError" in failed.message


def test_a_policy_with_no_traffic_has_no_data_and_does_not_fire(
    token_client, web, live, monitoring_server
):
    api = token_client(READ, INCIDENTS_WRITE)
    _policy(api, "", duration_s=0)
    result = health.evaluate_policies()
    assert result["fired"] == []
    assert AlertPolicy.objects.get().state == "no_data"
    assert Incident.objects.count() == 0


def test_a_policy_must_hold_for_its_duration(admin_actor, web, live):
    from datetime import timedelta

    from django.utils import timezone

    from monitoring import services

    policy = services.create_alert_policy(
        admin_actor,
        name="slow",
        service=web,
        environment=live,
        metric="queue_depth",
        threshold=100,
        duration_s=120,
    )
    t0 = timezone.now()
    assert services.record_evaluation(policy, 150, now=t0) is None
    assert AlertPolicy.objects.get().state == "pending"
    assert services.record_evaluation(policy, 150, now=t0 + timedelta(seconds=60)) is None
    fired = services.record_evaluation(policy, 150, now=t0 + timedelta(seconds=120))
    assert fired is not None
    services.record_evaluation(policy, 10, now=t0 + timedelta(seconds=180))
    assert AlertPolicy.objects.get().state == "ok"
    assert fired.events.last().kind == "alert_cleared"


def test_policy_api_validation_detail_and_delete(token_client, api_for, victor, web, live):
    api = token_client(READ, INCIDENTS_WRITE)
    bad = api.post(
        URL,
        {
            "name": "x",
            "service": "nope",
            "environment": "live",
            "metric": "error_rate",
            "comparison": "!=",
            "threshold": "high",
            "emails": "not-an-address",
        },
        format="json",
    )
    assert bad.status_code == 400
    assert {"service", "comparison", "threshold", "emails"} <= set(bad.json()["error"]["fields"])
    short = _policy(api, "", window_s=5)
    assert short.status_code == 400 and "window_s" in short.json()["error"]["fields"]

    pk = _policy(api, "", emails="oncall@example.test").json()["id"]
    assert api.get(f"{URL}{pk}/").json()["emails"] == "oncall@example.test"
    patched = api.patch(f"{URL}{pk}/", {"threshold": 0.2, "enabled": False}, format="json")
    assert patched.status_code == 200 and patched.json()["threshold"] == 0.2
    assert api_for(victor).delete(f"{URL}{pk}/").status_code == 403
    assert api.delete(f"{URL}{pk}/").status_code == 204
    assert api.get(f"{URL}{pk}/").status_code == 404
