"""An operator's rollout in a real browser, against localcloud and a real RQ worker process:
deploy a canary from the service page, watch the deployment page move by itself (HTMX), promote
it past its pause, then deploy a bad release and watch it fail with traffic back on stable."""

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from django.conf import settings
from django.contrib.auth.models import Group, User

from conftest import PASSWORD
from releases import services
from releases.models import Deployment
from releases.tests.conftest import Load, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# A canary that waits for the operator at 20%, after a quick analysis.
PARAMS = (
    '{"steps": [{"set_weight": 20}, {"analysis": {"template": "fast"}}, {"pause": {}}, '
    '{"set_weight": 100}]}'
)
S = Deployment.Status
WAIT_MS = 60_000


def _test_database_url() -> str:
    """DATABASE_URL with the test database's name: the worker process must see the rows
    this (transactional) test commits."""
    url = urlsplit(os.environ["DATABASE_URL"])
    return url._replace(path="/" + settings.DATABASES["default"]["NAME"]).geturl()


def _start_worker(log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": _test_database_url(),
        "REDIS_URL": settings.REDIS_URL,
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "manage.py", "rqworker", "deploy", "--with-scheduler"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop_worker(worker: subprocess.Popen) -> None:
    worker.terminate()
    try:
        worker.wait(10)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(5)


def _version_served(url: str) -> str:
    return requests.get(url, timeout=5).json()["version"]


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"needs Debian's Chromium at {CHROMIUM}")
def test_an_operator_promotes_a_canary_and_watches_a_bad_one_fail(
    live_server, environments, demo_service, admin_actor, monkeypatch, tmp_path
):
    from playwright.sync_api import expect, sync_playwright

    # Playwright's sync API runs an event loop in this thread; Django's ORM calls here are
    # still synchronous and safe.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    service, dev = demo_service["service"], environments["dev"]
    # A stable revision first, so that the canary has something to compare with.
    first = services.request_deployment(
        admin_actor, service, dev, demo_service["1.0.0"], "all_at_once"
    )
    assert wait_for(first, {S.SUCCEEDED, S.FAILED}).status == S.SUCCEEDED, first.reason
    url = services.platform_state(service, dev).uri
    oscar = User.objects.create_user("oscar", "oscar@example.test", PASSWORD)
    oscar.groups.add(Group.objects.get_or_create(name="operator")[0])

    worker = _start_worker(tmp_path / "worker.log")
    try:
        with Load(url, rps=40) as load, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                console_errors: list[str] = []

                def on_console(message) -> None:
                    # The browser's own /favicon.ico request is not the page's doing.
                    if message.type == "error" and "favicon" not in message.location.get("url", ""):
                        console_errors.append(f"{message.text} at {message.location}")

                page.on("console", on_console)

                page.goto(f"{live_server.url}/login/")
                page.fill("#id_username", "oscar")
                page.fill("#id_password", PASSWORD)
                page.click("button[type=submit]")
                page.click("nav.top >> text=Services")
                page.click(f"text={service.name}")
                expect(page.locator("h1")).to_have_text(service.name)
                expect(page.locator("#env-dev")).to_contain_text("1.0.0")

                # 1. The canary: deployed from the form, it stops at its pause by itself.
                page.select_option("#deploy-environment", "dev")
                page.select_option("#deploy-version", "1.1.0")
                page.select_option("#deploy-strategy", "canary")
                page.fill("#deploy-params", PARAMS)
                page.click("button[value=deploy]")
                expect(page.locator("h1")).to_contain_text("1.1.0 → dev")
                expect(page.locator(".messages")).to_contain_text("(running)")
                # Marks this document: only HTMX swaps, never a reload, may change it now.
                page.evaluate("window.sameDocument = true")
                status = page.locator("#deploy-status")
                expect(status).to_have_text("paused", timeout=WAIT_MS)
                expect(page.locator("#step-3")).to_contain_text("current")  # the pause
                expect(page.locator("#step-2")).to_contain_text("done")  # the analysis
                expect(page.locator("table.measurements").first).to_contain_text("error-rate")
                expect(page.locator("#deploy-weight")).to_have_attribute("value", "20")
                assert page.evaluate("window.sameDocument === true")

                # 2. Promote: past the pause to 100%, then done.
                page.get_by_role("button", name="Promote", exact=True).click()
                expect(page.locator(".messages")).to_contain_text("promoted")
                expect(status).to_have_text("succeeded", timeout=WAIT_MS)
                expect(page.locator("#deploy-weight")).to_have_attribute("value", "100")
                assert _version_served(url) == "1.1.0"

                # 3. The bad release: its analysis fails, traffic goes back to 1.1.0 by itself.
                page.click(f".breadcrumb >> text={service.name}")
                page.select_option("#deploy-environment", "dev")
                page.select_option("#deploy-version", "1.2.0-bad")
                page.select_option("#deploy-strategy", "canary")
                page.fill("#deploy-params", PARAMS)
                page.click("button[value=deploy]")
                expect(page.locator("h1")).to_contain_text("1.2.0-bad → dev")
                expect(status).to_have_text("failed", timeout=WAIT_MS)
                expect(page.locator("#deploy-reason")).to_contain_text("analysis failed")
                expect(page.locator("#deploy-weight")).to_have_attribute("value", "0")
                expect(page.locator("table.traffic-history")).to_contain_text("0%")
                expect(page.get_by_role("button", name="Retry")).to_be_visible()
                assert page.locator(".deploy-live[hx-trigger]").count() == 0  # polling stopped
                # The CSP allows no inline script or style: a violation would show up here.
                assert console_errors == []
            finally:
                browser.close()
    finally:
        _stop_worker(worker)
        # Shown by pytest only when the test fails: what the engine did meanwhile.
        print((tmp_path / "worker.log").read_text(errors="replace")[-5000:])

    bad = Deployment.objects.get(release=demo_service["bad"])
    assert bad.status == S.FAILED and [t.new_percent for t in bad.traffic.all()] == [20, 0]
    assert all(_version_served(url) == "1.1.0" for _ in range(10))
    assert load.failed == 0, load.statuses
