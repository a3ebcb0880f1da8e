"""DevOpsAgent's monitoring actions: monitor_health runs the checks and summarises each
service; handle_incidents rolls back a recent deployment behind an open incident, or
notifies. Also the health checks' consecutive-failure incidents and the clock's duties."""

# Fixtures are imported from another app's conftest; tests name them as arguments.
# ruff: noqa: F811

from datetime import timedelta

import pytest
from django.utils import timezone

from agents.devops import health
from core.actors import Actor
from core.models import Job
from core.roles import ACTIONS_RUN, INCIDENTS_WRITE, READ
from monitoring import services
from monitoring.models import HealthCheck, Incident
from monitoring.tests.conftest import (  # noqa: F401 - fixtures
    admin_actor,
    envs,
    fast_webhooks,
    health_server,
    make_deployment,
    web,
    webhook_server,
)
from releases.models import Deployment


@pytest.fixture
def check(web, envs, health_server, admin_actor):
    return services.create_health_check(
        admin_actor,
        web,
        envs["dev"],
        path="/healthz",
        base_url=health_server.url,
        failure_threshold=3,
        timeout_s=2,
    )


def test_a_check_failing_n_times_in_a_row_opens_one_incident(check, health_server):
    health_server.status = 503
    for _ in range(2):
        health.run_checks([check])
    check.refresh_from_db()
    assert check.status == "failing" and Incident.objects.count() == 0
    health.run_checks([check])
    health.run_checks([check])
    incident = Incident.objects.get()
    assert incident.key == f"health:{check.pk}" and incident.severity == "sev2"
    kinds = list(incident.events.values_list("kind", flat=True))
    assert kinds == ["opened", "health_check_failed", "health_check_failed"]
    assert (
        "failed 3 times in a row: HTTP 503 (expected HTTP 200)" in incident.events.all()[1].message
    )

    health_server.status = 200
    health.run_checks([check])
    check.refresh_from_db()
    assert check.status == "healthy" and check.consecutive_failures == 0
    assert check.results.count() == 5


def test_monitor_health_action_summarises_each_service(
    token_client, check, health_server, run_worker, django_capture_on_commit_callbacks, web, envs
):
    api = token_client(READ, ACTIONS_RUN, INCIDENTS_WRITE)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(
            "/api/v1/actions/",
            {"agent": "devops", "action": "monitor_health", "params": {"environment": "dev"}},
            format="json",
        )
    assert response.status_code in (201, 202), response.json()
    run_worker("default")
    job = Job.objects.get(name="devops.monitor_health")
    assert job.status == "succeeded", job.error
    cell = job.result["web"]["dev"]
    assert cell["status"] == "healthy"
    assert cell["evidence"][0].startswith("/healthz: HTTP 200 in ")

    health_server.status = 500
    summary = health.monitor_health()
    assert summary["web"]["dev"]["status"] == "down"
    assert "HTTP 500, expected 200" in summary["web"]["dev"]["evidence"][0]


def test_actions_need_incidents_write(token_client, db):
    api = token_client(READ, ACTIONS_RUN)
    refused = api.post(
        "/api/v1/actions/", {"agent": "devops", "action": "handle_incidents"}, format="json"
    )
    assert refused.status_code == 403
    assert "incidents:write" in refused.json()["error"]["message"]


def test_handle_incidents_rolls_back_a_recent_deployment(web, envs, admin_actor):
    dev = envs["dev"]
    old = make_deployment(web, dev, "1.0.0")
    Deployment.objects.filter(pk=old.pk).update(finished_at=timezone.now() - timedelta(hours=3))
    recent = make_deployment(web, dev, "1.1.0")
    incident = services.open_incident(
        admin_actor, "errors", services=[web], environments=[dev]
    ).incident

    handled = health.handle_incidents(Actor.system("devops-agent"))
    assert handled[0]["incident"] == incident.pk
    assert handled[0]["actions"][0].startswith(f"rolled back deployment #{recent.pk}")
    rollback = Deployment.objects.get(is_rollback=True)
    assert rollback.rollback_of_id == recent.pk and rollback.release.version == "1.0.0"
    remediation = incident.events.get(kind="remediation")
    assert "rolled web back in dev to 1.0.0" in remediation.message

    # The rollback exists now: the next round notifies instead of rolling back again.
    again = health.handle_incidents(Actor.system("devops-agent"))
    assert Deployment.objects.filter(is_rollback=True).count() == 1
    assert again[0]["actions"] == ["notified 0 channel(s)"]


def test_handle_incidents_notifies_when_nothing_was_deployed(
    web,
    envs,
    admin_actor,
    settings,
    webhook_server,
    fast_webhooks,
    run_worker,
    django_capture_on_commit_callbacks,
):
    settings.MONITORING_WEBHOOK_URL = webhook_server.url
    incident = services.open_incident(
        admin_actor, "disk full", services=[web], environments=[envs["dev"]]
    ).incident
    with django_capture_on_commit_callbacks(execute=True):
        handled = health.handle_incidents(Actor.system("devops-agent"))
    assert handled[0]["actions"] == ["notified 1 channel(s)"]
    run_worker("default")
    assert webhook_server.received[0]["incident"] == incident.pk
    assert incident.events.filter(kind="notification_sent").exists()
    later = health.handle_incidents(Actor.system("devops-agent"))
    assert later[0]["actions"] == ["notified recently; waiting"]


def test_the_clock_enqueues_due_checks_evaluation_and_prune(check, envs):
    from django.core.cache import cache

    cache.delete_many(["mon:clock:evaluate", "mon:clock:prune"])
    health._last_run.clear()
    lines = health.run_due()
    assert lines[0] == f"health checks [{check.pk}] enqueued"
    assert "monitoring prune enqueued" in lines
    assert health.run_due() == []  # nothing due again straight away
    check.refresh_from_db()
    assert check.next_run_at > timezone.now()
    assert Job.objects.filter(func="agents.devops.health.run_checks_job").count() == 1
    assert HealthCheck.objects.filter(next_run_at__lte=timezone.now()).count() == 0
