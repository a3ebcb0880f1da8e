"""The SEV1/SEV2 deployment gate, the failed-deployment hook, "what changed" and the
remediation buttons of the incident page."""

from datetime import timedelta

from django.utils import timezone

from core.actors import Actor
from environments import services as env_services
from monitoring import services
from monitoring.models import Incident, IncidentEvent
from monitoring.tests.conftest import make_deployment
from releases import services as release_services
from releases.models import Deployment

DEPLOY = "/api/v1/deployments/"


def _sev(admin_actor, web, env, severity="sev1"):
    return services.open_incident(
        admin_actor, "checkout errors", severity=severity, services=[web], environments=[env]
    ).incident


def test_an_open_sev1_holds_deployments_but_not_rollbacks(api_for, oscar, alice, web, envs):
    dev = envs["dev"]
    make_deployment(web, dev, "1.0.0")
    make_deployment(web, dev, "1.1.0")
    release_services.register_release(Actor.system("t"), web, "1.2.0", "python app.py")
    incident = _sev(Actor.system("t"), web, dev)

    operator = api_for(oscar)
    body = {"service": "web", "environment": "dev", "version": "1.2.0", "strategy": "all_at_once"}
    refused = operator.post(DEPLOY, body, format="json")
    assert refused.status_code == 409, refused.json()
    error = refused.json()["error"]
    assert error["code"] == "incident_open"
    assert f"Incident #{incident.pk} (SEV1: checkout errors)" in error["message"]

    # A SEV3 elsewhere does not hold; a rollback passes the SEV1.
    rollback = operator.post(
        "/api/v1/services/web/rollback/", {"environment": "dev"}, format="json"
    )
    assert rollback.status_code in (200, 201, 202), rollback.json()
    assert Deployment.objects.filter(is_rollback=True).count() == 1
    kinds = list(incident.events.values_list("kind", flat=True))
    assert kinds == ["opened", "rolled_back"]  # the rollback is on the timeline

    # The rollback is active now; finish it so the admin's override can start.
    Deployment.objects.filter(is_rollback=True).update(status="succeeded")
    admin = api_for(alice)
    overridden = admin.post(DEPLOY, {**body, "override_reason": "hotfix"}, format="json")
    assert overridden.status_code == 201, overridden.json()
    assert incident.events.filter(kind="deployment_started").exists()


def test_a_sev3_or_a_resolved_incident_does_not_hold(admin_actor, web, envs):
    dev = envs["dev"]
    assert release_services.check_deployment  # the gate is registered by monitoring's ready()
    from releases.gates import holds

    sev3 = _sev(admin_actor, web, dev, "sev3")
    assert holds(web, dev, False) == []
    services.update_incident(admin_actor, sev3, severity="sev2")
    assert [h.code for h in holds(web, dev, False)] == ["incident_open"]
    assert holds(web, dev, True) == []
    assert holds(web, envs["prod"], False) == []
    services.resolve(admin_actor, sev3)
    assert holds(web, dev, False) == []


def test_a_failed_deployment_opens_one_incident_with_its_rollback(web, envs):
    d = make_deployment(
        web,
        envs["prod"],
        "2.0.0",
        status="failed",
        stable_revision="web-00001",
        new_revision="web-00002",
        reason="analysis failed at step 2: error-rate 0.31 > 0.05",
    )
    hooks = release_services.on_failure_hooks()
    assert services.incident_for_failed_deployment in hooks
    first = services.incident_for_failed_deployment(d)
    again = services.incident_for_failed_deployment(d)
    assert first is not None and again.pk == first.pk
    assert Incident.objects.count() == 1
    assert first.deployment_id == d.pk and first.severity == "sev2"  # prod is protected
    events = list(first.events.values_list("kind", "message"))
    assert [k for k, _ in events] == ["opened", "deployment_failed", "rolled_back"]
    assert "web-00001" in events[2][1]
    # A person's abort opens nothing.
    aborted = make_deployment(
        web, envs["dev"], "2.0.1", status="aborted", reason="aborted by oscar"
    )
    assert services.incident_for_failed_deployment(aborted) is None


def test_the_incident_page_shows_what_changed(client_for, oscar, admin_actor, web, envs):
    dev = envs["dev"]
    env_services.set_config(admin_actor, dev, {"POOL_SIZE": "50"}, service="web")
    env_services.set_config(admin_actor, envs["prod"], {"OTHER_ENV": "1"})
    d = make_deployment(web, dev, "3.1.0")
    old = make_deployment(web, dev, "3.0.0")
    Deployment.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=2))
    incident = _sev(admin_actor, web, dev, "sev3")

    page = client_for(oscar).get(f"/incidents/{incident.pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "What changed" in html
    assert f"#{d.pk} deployment of web 3.1.0 (succeeded)" in html
    assert f"/deployments/{d.pk}/" in html
    assert "config of web changed: POOL_SIZE" in html
    assert "OTHER_ENV" not in html  # another environment
    assert "3.0.0" not in html  # before the 24 h window
    changes = services.what_changed(incident)
    assert [c.kind for c in changes] == ["deployment", "config"]  # newest first


def test_remediation_buttons_land_on_the_timeline(client_for, oscar, admin_actor, web, envs):
    dev = envs["dev"]
    make_deployment(web, dev, "1.0.0")
    make_deployment(web, dev, "1.1.0")
    incident = _sev(admin_actor, web, dev, "sev3")
    browser = client_for(oscar)
    url = f"/incidents/{incident.pk}/"

    rolled = browser.post(url + "rollback/", {"service": "web", "environment": "dev"})
    assert rolled.status_code == 302
    frozen = browser.post(url + "freeze/", {"service": "web", "environment": "dev"})
    assert frozen.status_code == 302

    remediations = list(incident.events.filter(kind=IncidentEvent.Kind.REMEDIATION))
    assert [e.data["action"] for e in remediations] == ["rollback", "freeze"]
    assert "rolled web back in dev to 1.0.0" in remediations[0].message
    assert "froze deployments in dev for 2 h" in remediations[1].message
    window = dev.freeze_windows.get()
    assert f"incident #{incident.pk}" in window.reason
    assert window.ends_at - window.starts_at == timedelta(hours=2)
    from core.models import AuditEvent

    actions = list(
        AuditEvent.objects.filter(object_id=str(incident.pk), action="incident.remediate")
        .order_by("id")
        .values_list("summary__action", flat=True)
    )
    assert actions == ["rollback", "freeze"]
    page = browser.get(url).content.decode()
    assert "Freeze windows are per environment" in page or "per environment" in page


def test_a_viewer_gets_no_buttons_and_cannot_post(client_for, victor, admin_actor, web, envs):
    incident = _sev(admin_actor, web, envs["dev"], "sev3")
    browser = client_for(victor)
    page = browser.get(f"/incidents/{incident.pk}/").content.decode()
    assert "Roll back last deployment" not in page
    refused = browser.post(f"/incidents/{incident.pk}/acknowledge/")
    assert refused.status_code == 403
