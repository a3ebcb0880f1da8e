"""The alert policy and health check forms of the monitoring pages (create, edit, delete; who
may; errors next to the fields; the audit trail), and acknowledging and resolving an incident
from its page."""

import pytest

from core.models import AuditEvent
from monitoring import services
from monitoring.models import AlertPolicy, HealthCheck, Incident

POLICIES = "/alert-policies/"
CHECKS = "/health-checks/"


def _policy_form(**changes) -> dict:
    data = {
        "name": "web errors",
        "service": "web",
        "environment": "dev",
        "metric": "error_rate",
        "window_s": "300",
        "comparison": ">",
        "threshold": "0.05",
        "duration_s": "120",
        "severity": "sev2",
        "webhook_url": "https://hooks.example.test/oncall",
        "emails": "oncall@example.test, lead@example.test",
        "enabled": "on",
    }
    data.update(changes)
    return data


def _check_form(**changes) -> dict:
    data = {
        "service": "web",
        "environment": "dev",
        "path": "/healthz",
        "interval_s": "30",
        "timeout_s": "2.5",
        "expected_status": "200",
        "failure_threshold": "3",
        "severity": "sev2",
        "enabled": "on",
    }
    data.update(changes)
    return data


def _audit(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def test_an_operator_creates_edits_and_deletes_an_alert_policy(client_for, oscar, web, envs):
    browser = client_for(oscar)
    created = browser.post(POLICIES, _policy_form())
    assert created.status_code == 302, created.content.decode()
    policy = AlertPolicy.objects.get()
    assert policy.describe() == "error_rate over 300s > 0.05 for 120s (web in dev)"
    assert policy.email_list == ["oncall@example.test", "lead@example.test"]
    assert policy.created_by == "oscar"
    [event] = _audit("alert_policy.create")
    assert event.actor == "oscar" and event.object_id == str(policy.pk)
    page = browser.get(POLICIES).content.decode()
    assert "Alert policy web errors created." in page
    assert f'href="/alert-policies/{policy.pk}/edit/"' in page

    form = browser.get(f"{POLICIES}{policy.pk}/edit/")
    assert form.status_code == 200
    assert 'value="web errors"' in form.content.decode()
    saved = browser.post(
        f"{POLICIES}{policy.pk}/edit/",
        _policy_form(threshold="0.1", environment="prod", emails="", enabled=""),
    )
    assert saved.status_code == 302, saved.content.decode()
    policy.refresh_from_db()
    assert (policy.threshold, policy.environment.name, policy.emails) == (0.1, "prod", "")
    assert not policy.enabled
    [update] = _audit("alert_policy.update")
    assert set(update.summary) == {"threshold", "environment", "emails", "enabled"}
    assert update.summary["threshold"] == {"from": "0.05", "to": "0.1"}

    deleted = browser.post(f"{POLICIES}{policy.pk}/delete/")
    assert deleted.status_code == 302
    assert not AlertPolicy.objects.exists()
    [removed] = _audit("alert_policy.delete")
    assert removed.summary["name"] == "web errors" and removed.actor == "oscar"


def test_alert_policy_errors_are_shown_next_to_their_fields(client_for, oscar, web, envs):
    browser = client_for(oscar)
    # The form's own checks: shape of the input.
    bad = browser.post(POLICIES, _policy_form(threshold="high", emails="nope", service="db"))
    assert bad.status_code == 400
    html = bad.content.decode()
    assert '<small class="field-error" id="policy-threshold-error">Enter a number.' in html
    assert 'id="policy-emails-error">&#x27;nope&#x27; is not an e-mail address.' in html
    assert 'id="policy-service-error">Select a valid choice.' in html

    # The service's rules come back next to the fields they name.
    refused = browser.post(POLICIES, _policy_form(window_s="5", metric="latency_p42"))
    assert refused.status_code == 400
    html = refused.content.decode()
    assert 'id="policy-window_s-error">Expected 60 to 86400 seconds.' in html
    assert 'id="policy-metric-error">Expected latency_p50, latency_p95 or latency_p99.' in html

    browser.post(POLICIES, _policy_form())
    twice = browser.post(POLICIES, _policy_form())
    assert twice.status_code == 400
    assert 'id="policy-name-error">Must be unique.' in twice.content.decode()
    assert AlertPolicy.objects.count() == 1
    assert len(_audit("alert_policy.create")) == 1

    policy = AlertPolicy.objects.get()
    edit = browser.post(f"{POLICIES}{policy.pk}/edit/", _policy_form(window_s="10"))
    assert edit.status_code == 400
    assert 'id="policy-window_s-error">Expected 60 to 86400 seconds.' in edit.content.decode()
    policy.refresh_from_db()
    assert policy.window_s == 300 and not _audit("alert_policy.update")


@pytest.mark.parametrize(
    "persona, allowed",
    [("alice", True), ("oscar", True), ("april", False), ("victor", False)],
)
def test_who_may_change_policies_and_checks(
    request, client_for, admin_actor, web, envs, persona, allowed
):
    """incidents:write (admins and operators) may; approvers and viewers see no form and get
    403 from every write."""
    browser = client_for(request.getfixturevalue(persona))
    policy = services.create_alert_policy(
        admin_actor,
        name="existing",
        service=web,
        environment=envs["dev"],
        metric="error_rate",
        threshold=1,
    )
    check = services.create_health_check(admin_actor, web, envs["dev"], path="/ready")

    for url, marker in ((POLICIES, "New alert policy"), (CHECKS, "New health check")):
        page = browser.get(url)
        assert page.status_code == 200
        html = page.content.decode()
        assert (marker in html) is allowed
        assert ("Delete</button>" in html) is allowed

    writes = [
        (POLICIES, _policy_form(name="mine")),
        (f"{POLICIES}{policy.pk}/edit/", _policy_form(name="existing")),
        (CHECKS, _check_form()),
        (f"{CHECKS}{check.pk}/edit/", _check_form(path="/ready", interval_s="60")),
        (f"{POLICIES}{policy.pk}/delete/", {}),
        (f"{CHECKS}{check.pk}/delete/", {}),
    ]
    for url, data in writes:
        response = browser.post(url, data)
        assert response.status_code == (302 if allowed else 403), (url, response.status_code)
    if not allowed:
        assert browser.get(f"{POLICIES}{policy.pk}/edit/").status_code == 403
        assert browser.get(f"{CHECKS}{check.pk}/edit/").status_code == 403
        assert AlertPolicy.objects.get().name == "existing"
        assert HealthCheck.objects.get().path == "/ready"
    else:
        assert list(AlertPolicy.objects.values_list("name", flat=True)) == ["mine"]
        assert list(HealthCheck.objects.values_list("path", flat=True)) == ["/healthz"]


def test_an_operator_creates_edits_and_deletes_a_health_check(client_for, oscar, web, envs):
    browser = client_for(oscar)
    created = browser.post(CHECKS, _check_form())
    assert created.status_code == 302, created.content.decode()
    check = HealthCheck.objects.get()
    assert (check.interval_s, check.timeout_s, check.failure_threshold) == (30, 2.5, 3)
    assert check.created_by == "oscar"
    [event] = _audit("health_check.create")
    assert event.summary == {"service": "web", "environment": "dev", "path": "/healthz"}
    page = browser.get(CHECKS).content.decode()
    assert "Health check web /healthz in dev created." in page
    assert "3 failures" in page and "HTTP 200" in page

    assert 'value="/healthz"' in browser.get(f"{CHECKS}{check.pk}/edit/").content.decode()
    saved = browser.post(
        f"{CHECKS}{check.pk}/edit/",
        _check_form(path="/ready", expected_status="204", failure_threshold="5"),
    )
    assert saved.status_code == 302, saved.content.decode()
    check.refresh_from_db()
    assert (check.path, check.expected_status, check.failure_threshold) == ("/ready", 204, 5)
    [update] = _audit("health_check.update")
    assert update.actor == "oscar"
    assert update.summary == {
        "path": {"from": "/healthz", "to": "/ready"},
        "expected_status": {"from": "200", "to": "204"},
        "failure_threshold": {"from": "3", "to": "5"},
    }

    assert browser.post(f"{CHECKS}{check.pk}/delete/").status_code == 302
    assert not HealthCheck.objects.exists()
    assert [e.summary for e in _audit("health_check.delete")] == [{"path": "/ready"}]


def test_health_check_errors_are_shown_next_to_their_fields(client_for, oscar, web, envs):
    browser = client_for(oscar)
    bad = browser.post(CHECKS, _check_form(expected_status="700", failure_threshold="0"))
    assert bad.status_code == 400
    html = bad.content.decode()
    assert 'id="check-expected_status-error">Ensure this value is less than or equal' in html
    assert 'id="check-failure_threshold-error">Ensure this value is greater than' in html

    refused = browser.post(CHECKS, _check_form(path="healthz", interval_s="2", timeout_s="90"))
    assert refused.status_code == 400
    html = refused.content.decode()
    assert 'id="check-path-error">Expected a path starting with /.' in html
    assert 'id="check-interval_s-error">Expected 5 to 86400 seconds.' in html
    assert 'id="check-timeout_s-error">Expected 0.1 to 60 seconds.' in html

    assert browser.post(CHECKS, _check_form()).status_code == 302
    twice = browser.post(CHECKS, _check_form())
    assert twice.status_code == 400
    assert 'id="check-path-error">Must be unique per service and environment.' in (
        twice.content.decode()
    )
    assert HealthCheck.objects.count() == 1 and len(_audit("health_check.create")) == 1


def test_an_operator_acknowledges_and_resolves_an_incident_from_its_page(
    client_for, oscar, victor, admin_actor, web, envs
):
    incident = services.open_incident(
        admin_actor, "checkout errors", severity="sev2", services=[web], environments=["dev"]
    ).incident
    url = f"/incidents/{incident.pk}/"
    assert '<button type="submit">Acknowledge</button>' not in (
        client_for(victor).get(url).content.decode()
    )
    browser = client_for(oscar)
    assert '<button type="submit">Acknowledge</button>' in browser.get(url).content.decode()

    acked = browser.post(url + "acknowledge/", follow=True)
    assert acked.redirect_chain == [(url, 302)]
    html = acked.content.decode()
    assert "Acknowledged." in html and "acknowledged by oscar" in html
    incident.refresh_from_db()
    assert incident.state == Incident.State.ACKNOWLEDGED
    assert incident.commander == oscar  # the first to acknowledge leads
    again = browser.post(url + "acknowledge/", follow=True).content.decode()
    assert f"Incident #{incident.pk} is acknowledged; cannot acknowledge it." in again

    resolved = browser.post(url + "resolve/", {"note": "pool size back to 20"}, follow=True)
    html = resolved.content.decode()
    assert "Resolved. Write the postmortem below." in html
    assert "resolved by oscar: pool size back to 20" in html
    assert "Save postmortem" in html
    incident.refresh_from_db()
    assert incident.state == Incident.State.RESOLVED and incident.resolved_by == "oscar"
    kinds = list(incident.events.values_list("kind", flat=True))
    assert kinds == ["opened", "acknowledged", "resolved"]
    assert [e.actor for e in _audit("incident.acknowledge") + _audit("incident.resolve")] == [
        "oscar",
        "oscar",
    ]
