"""On-call in a real browser, against localcloud and a real RQ worker process: a bad release's
canary fails and opens an incident; the operator on call finds it on the on-call page, reads
its timeline and what changed, looks at the failed deployment's chart, rolls back from the
incident and sees the rollback finish on the timeline."""

# Fixtures are imported from another app's conftest; tests name them as arguments.
# ruff: noqa: F811

import os

import pytest
import requests
from django.contrib.auth.models import Group, User

from conftest import PASSWORD
from monitoring.models import Incident
from releases import services
from releases.models import Deployment
from releases.tests.conftest import (  # noqa: F401 - fixtures
    Load,
    demo_service,
    environments,
    localcloud,
    service_name,
    wait_for,
)
from releases.tests.test_browser import CHROMIUM, CHROMIUM_ARGS, _start_worker, _stop_worker

S = Deployment.Status
CANARY = {"steps": [{"set_weight": 50}, {"analysis": {"template": "fast"}}, {"set_weight": 100}]}
WAIT_MS = 60_000


def _deploy(actor, service, environment, release, strategy="all_at_once", params=None):
    deployment = services.request_deployment(actor, service, environment, release, strategy, params)
    return wait_for(deployment, {S.SUCCEEDED, S.FAILED, S.PAUSED})


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"needs Debian's Chromium at {CHROMIUM}")
def test_on_call_rolls_back_from_the_incident_of_a_failed_canary(
    live_server, environments, demo_service, admin_actor, monkeypatch, tmp_path
):
    from playwright.sync_api import expect, sync_playwright

    # Playwright's sync API runs an event loop in this thread; Django's ORM calls here are
    # still synchronous and safe.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    service, dev = demo_service["service"], environments["dev"]
    assert _deploy(admin_actor, service, dev, demo_service["1.0.0"]).status == S.SUCCEEDED
    assert _deploy(admin_actor, service, dev, demo_service["1.1.0"]).status == S.SUCCEEDED
    url = services.platform_state(service, dev).uri
    with Load(url, rps=60):
        bad = _deploy(admin_actor, service, dev, demo_service["bad"], "canary", CANARY)
    assert bad.status == S.FAILED, bad.reason
    incident = Incident.objects.get(deployment=bad)
    oscar = User.objects.create_user("oscar", "oscar@example.test", PASSWORD)
    oscar.groups.add(Group.objects.get_or_create(name="operator")[0])

    worker = _start_worker(tmp_path / "worker.log")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                console_errors: list[str] = []

                def on_console(message) -> None:
                    # The browser's own /favicon.ico request is not the page's doing.
                    if message.type == "error" and "favicon" not in message.location.get("url", ""):
                        console_errors.append(f"{message.text} at {message.location}")

                page.on("console", on_console)
                page.on("dialog", lambda dialog: dialog.accept())

                page.goto(f"{live_server.url}/login/")
                page.fill("#id_username", "oscar")
                page.fill("#id_password", PASSWORD)
                page.click("button[type=submit]")

                # 1. On call: the incident is there, unacknowledged.
                page.click("nav.top >> text=On-call")
                expect(page.locator("h1")).to_have_text("On-call")
                row = page.locator("#mon-oncall tr", has_text=f"#{incident.pk}")
                expect(row).to_contain_text("unacknowledged")
                row.get_by_role("link").click()

                # 2. The incident: the failure and the automatic rollback on the timeline, and
                # the deployments of the last 24 h under "what changed".
                expect(page.locator("h1")).to_contain_text(f"Deployment #{bad.pk} of {service}")
                timeline = page.locator("#timeline")
                expect(timeline).to_contain_text("analysis failed")
                expect(timeline).to_contain_text("automatic rollback")
                changed = page.locator("#what-changed")
                expect(changed).to_contain_text(f"#{bad.pk} deployment of {service} 1.2.0-bad")
                expect(changed).to_contain_text("1.1.0 (succeeded)")

                # 3. The failed deployment's chart: the bad revision against stable, drawn.
                changed.get_by_role("link", name=f"#{bad.pk} deployment of").click()
                expect(page.locator("#deploy-status")).to_have_text("failed")
                canvases = page.locator("#mon-revisions-chart canvas")
                expect(canvases).to_have_count(2)
                page.wait_for_function(
                    "[...document.querySelectorAll('#mon-revisions-chart canvas')]"
                    ".every(c => c.chart && c.chart.data.datasets.length === 2)"
                )
                page.go_back()

                # 4. Roll back from the incident (confirmed in the dialog); the worker runs it
                # and the timeline, refreshing by itself, shows it finished.
                page.get_by_role("button", name="Roll back last deployment").click()
                expect(page.locator(".messages")).to_contain_text("to 1.0.0 started")
                expect(timeline).to_contain_text(f"rolled {service} back in dev to 1.0.0")
                expect(timeline).to_contain_text("1.0.0 serves again", timeout=WAIT_MS)
                # The CSP allows no inline script or style: a violation would show up here.
                assert console_errors == []
            finally:
                browser.close()
    finally:
        _stop_worker(worker)
        # Shown by pytest only when the test fails: what the engine did meanwhile.
        print((tmp_path / "worker.log").read_text(errors="replace")[-5000:])

    rollback = Deployment.objects.get(is_rollback=True)
    assert rollback.status == S.SUCCEEDED and rollback.release.version == "1.0.0"
    assert requests.get(url, timeout=5).json()["version"] == "1.0.0"
    kinds = list(incident.events.values_list("kind", flat=True))
    assert kinds[:3] == ["opened", "deployment_failed", "rolled_back"]
    assert "remediation" in kinds and kinds[-1] == "rolled_back"
