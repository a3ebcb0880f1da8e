"""The deployment page's chart of the new against the stable revision: how the page asks for
it, "no data" when the platform is unreachable, and real series from a canary on localcloud."""

# Fixtures are imported from another app's conftest; tests name them as arguments.
# ruff: noqa: F811

import json
from datetime import timedelta
from html import unescape

from django.utils import timezone

from monitoring.tests.conftest import make_deployment
from releases import services as release_services
from releases.models import Deployment
from releases.tests.conftest import (  # noqa: F401 - fixtures
    Load,
    demo_service,
    environments,
    localcloud,
    service_name,
    wait_for,
)

S = Deployment.Status
CANARY = {"steps": [{"set_weight": 50}, {"analysis": {"template": "fast"}}, {"set_weight": 100}]}


def _chart_url(html: str) -> str:
    """The hx-get of the chart placeholder on a deployment page."""
    tag = html[html.index('<div id="mon-revisions-chart"') :]
    return unescape(tag.split('hx-get="', 1)[1].split('"', 1)[0])


def _trigger(html: str) -> str:
    tag = html[html.index('<div id="mon-revisions-chart"') :]
    return tag.split('hx-trigger="', 1)[1].split('"', 1)[0]


def _chart_data(html: str) -> dict:
    return json.loads(
        html.split('<script id="mon-revisions-data" type="application/json">')[1].split(
            "</script>"
        )[0]
    )


def test_the_deployment_page_asks_for_the_chart_while_active_then_once(
    client_for, victor, web, envs
):
    browser = client_for(victor)
    running = make_deployment(
        web, envs["dev"], "1.1.0", status="running", stable_revision="web-1-0-0"
    )
    html = browser.get(f"/deployments/{running.pk}/").content.decode()
    assert _trigger(html) == "load, every 10s"
    url = _chart_url(html)
    assert url.startswith("/services/web/revisions-chart/?environment=dev&deployment=")
    assert "revisions=web-1-1-0,web-1-0-0" in url and "until=" not in url
    assert "js/charts.js" in html

    # Live: the fragment keeps refreshing itself; the platform is nowhere, so "no data".
    fragment = browser.get(url, HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200
    body = fragment.content.decode()
    assert body.startswith('<section id="mon-revisions-chart"')
    assert 'hx-trigger="every 10s"' in body and "load" not in body.split(">", 1)[0]
    assert "No data: platform metrics unavailable" in body
    assert "mon-revisions-data" not in body

    # Finished while the page was open: the next refresh ends the window and stops polling.
    Deployment.objects.filter(pk=running.pk).update(status="succeeded", finished_at=timezone.now())
    stopped = browser.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert "hx-trigger" not in stopped.split(">", 1)[0]

    finished = browser.get(f"/deployments/{running.pk}/").content.decode()
    assert _trigger(finished) == "load"
    assert "until=" in _chart_url(finished)


def test_the_chart_names_a_bad_query(client_for, victor, web, envs):
    browser = client_for(victor)
    base = "/services/web/revisions-chart/?environment=dev&revisions=a,b"
    now = timezone.now()
    missing = browser.get(base)
    assert missing.status_code == 400
    assert "Chart not drawn: since: This field is required." in missing.content.decode()
    backwards = browser.get(
        base, {"since": now.isoformat(), "until": (now - timedelta(hours=1)).isoformat()}
    )
    assert backwards.status_code == 400
    assert "until: Expected a time after since." in backwards.content.decode()
    assert browser.get(base.replace("dev", "nowhere") + "&since=2026-01-01T00:00").status_code == (
        404
    )
    assert browser.get("/services/nope/revisions-chart/?since=x").status_code == 404
    # A deployment not yet given its revision: nothing to chart, said plainly.
    pending = make_deployment(web, envs["dev"], "2.0.0", status="pending", new_revision="")
    empty = browser.get(
        "/services/web/revisions-chart/",
        {"environment": "dev", "deployment": pending.pk, "since": now.isoformat()},
    )
    assert "No data: the platform has no request to any revision yet" in empty.content.decode()


def test_a_canary_on_localcloud_is_charted_against_stable(
    environments, demo_service, admin_actor, client_for, groups
):
    from django.contrib.auth.models import Group, User

    service, dev = demo_service["service"], environments["dev"]
    first = release_services.request_deployment(
        admin_actor, service, dev, demo_service["1.0.0"], "all_at_once"
    )
    assert wait_for(first, {S.SUCCEEDED, S.FAILED}).status == S.SUCCEEDED
    state = release_services.platform_state(service, dev)
    with Load(state.uri, rps=60):
        bad = release_services.request_deployment(
            admin_actor, service, dev, demo_service["bad"], "canary", CANARY
        )
        bad = wait_for(bad, {S.SUCCEEDED, S.FAILED, S.PAUSED})
    assert bad.status == S.FAILED

    viewer = User.objects.create_user("victor")
    viewer.groups.add(Group.objects.get(name="viewer"))
    browser = client_for(viewer)
    page = browser.get(f"/deployments/{bad.pk}/").content.decode()
    fragment = browser.get(_chart_url(page), HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200
    html = fragment.content.decode()
    assert "hx-trigger" not in html.split(">", 1)[0]  # finished: drawn once
    assert 'data-chart="error_rate"' in html and 'data-chart="latency.p95"' in html
    data = _chart_data(html)
    new, stable = f"new {bad.new_revision}", f"stable {bad.stable_revision}"
    errors = data["series"]["error_rate"]
    assert set(errors) == {new, stable}
    # The bad release answers half its requests with 500; the stable one none.
    assert max(v for _, v in errors[new]) > 0.2
    assert max(v for _, v in errors[stable]) == 0
    assert set(data["series"]["latency"]["p95"]) == {new, stable}
    assert data["since"] <= errors[new][0][0] <= data["until"]

    # Below the chart, the logs of both revisions since the deployment was requested: the
    # bad revision's start line is there, read from localcloud.
    tag = page[page.index('<div id="deploy-logs"') :]
    logs_url = unescape(tag.split('hx-get="', 1)[1].split('"', 1)[0])
    assert f"revision={bad.new_revision},{bad.stable_revision}" in logs_url
    logs = browser.get(logs_url, HTTP_HX_REQUEST="true").content.decode()
    assert "listening on port" in logs and bad.new_revision in logs
