"""An operator's round trip in a real browser: log in, change a config variable of staging
through its form, then see the change in the staging/production parity view."""

import os

import pytest
from django.contrib.auth.models import Group, User

from conftest import PASSWORD
from core.actors import Actor
from environments import services

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"needs Debian's Chromium at {CHROMIUM}")
def test_an_operator_changes_config_and_sees_it_in_parity(
    live_server, transactional_db, monkeypatch
):
    from playwright.sync_api import expect, sync_playwright

    # Playwright's sync API runs an event loop in this thread; Django's ORM calls here are
    # still synchronous and safe.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    oscar = User.objects.create_user("oscar", "oscar@example.test", PASSWORD)
    oscar.groups.add(Group.objects.get_or_create(name="operator")[0])
    system = Actor.system("tests")
    staging = services.create_environment(system, "staging", order=20)
    production = services.create_environment(system, "production", order=30, protected=True)
    services.set_config(system, staging, {"LOG_LEVEL": "info"})
    services.set_config(system, production, {"LOG_LEVEL": "warning"})

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

            page.goto(f"{live_server.url}/login/")
            page.fill("#id_username", "oscar")
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]")
            # Logged in, the operator lands on the dashboard and opens the environments.
            expect(page.locator("h1")).to_have_text("Dashboard")
            page.click("nav.top >> text=Environments")
            expect(page.locator("h1")).to_have_text("Environments")

            page.click("text=staging")
            expect(page.locator("h1")).to_contain_text("staging")
            page.fill("#config-key", "LOG_LEVEL")
            page.fill("#config-value", "debug-from-browser")
            page.click("text=Save variable")
            expect(page.locator(".messages")).to_contain_text("staging: LOG_LEVEL saved.")
            expect(page.locator("#config")).to_contain_text("debug-from-browser")

            page.click("text=Compare with production")
            expect(page.locator("h1")).to_have_text("Parity: staging and production")
            row = page.locator("table.parity tr", has_text="LOG_LEVEL")
            expect(row).to_have_class("diff-changed")
            expect(row).to_contain_text("debug-from-browser")
            expect(row).to_contain_text("warning")
            # The CSP allows no inline script or style: a violation would show up here.
            assert console_errors == []
        finally:
            browser.close()
