"""The overview, the service health page, the dashboard export, the logs view and the
on-call page."""

import json

from django.db import connection
from django.test.utils import CaptureQueriesContext

from monitoring import services
from monitoring.tests.conftest import make_deployment
from releases import services as release_services


def _services(admin_actor, envs, first: int, last: int):
    for i in range(first, last):
        service = release_services.register_service(admin_actor, f"svc-{i:02d}")
        make_deployment(service, envs["dev"], "1.0.0")
        make_deployment(service, envs["prod"], "1.0.0", status="running")
        services.create_health_check(admin_actor, service, envs["dev"], path="/healthz")


def _queries(browser) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = browser.get("/dashboard/")
    assert response.status_code == 200
    return len(captured)


def test_overview_queries_do_not_grow_with_services(client_for, oscar, admin_actor, envs):
    browser = client_for(oscar)
    _services(admin_actor, envs, 0, 3)
    services.open_incident(
        admin_actor, "slow", severity="sev1", services=["svc-00"], environments=["dev"]
    )
    browser.get("/dashboard/")  # warm: platform failures are cached
    three = _queries(browser)
    _services(admin_actor, envs, 3, 15)
    fifteen = _queries(browser)
    assert three == fifteen, (three, fifteen)

    html = browser.get("/dashboard/", HTTP_HX_REQUEST="true").content.decode()
    assert html.startswith('<div id="mon-overview"') and "every 10s" in html
    assert html.count('class="mon-cell') == 30
    assert "platform metrics unavailable" in html and "no data" in html
    assert 'mon-cell bad" data-service="svc-00" data-environment="dev"' in html
    assert "1 open incident" in html


def test_service_health_page_and_export(client_for, victor, admin_actor, web, envs, token_client):
    from core.roles import METRICS_WRITE

    make_deployment(web, envs["dev"], "1.0.0")
    token_client(METRICS_WRITE).post(
        "/api/v1/metrics/",
        {
            "samples": [
                {
                    "name": "queue_depth",
                    "labels": {"service": "web", "environment": "dev"},
                    "value": 4,
                    "timestamp": __import__("time").time() - 60,
                }
            ]
        },
        format="json",
    )
    check = services.create_health_check(admin_actor, web, envs["dev"], path="/healthz")
    services.record_health_result(check, False, status_code=503)
    browser = client_for(victor)
    page = browser.get("/services/web/health/?environment=dev&range=6h")
    assert page.status_code == 200
    html = page.content.decode()
    assert '<script id="mon-chart-data" type="application/json">' in html
    assert 'data-chart="latency.p95"' in html and "js/charts.js" in html
    assert "Platform metrics unavailable" in html
    data = json.loads(html.split('type="application/json">')[1].split("</script>")[0])
    assert data["markers"][0]["label"].endswith("1.0.0")
    assert list(data["agent"]) == ["queue_depth"]
    assert data["history"][str(check.pk)]["points"][0][1:] == [0, 1]
    assert browser.get("/services/nope/health/").status_code == 404

    export = browser.get("/services/web/dashboard.json")
    assert export["Content-Disposition"] == 'attachment; filename="web-dashboard.json"'
    dashboard = json.loads(export.content)
    titles = [t["widget"]["title"] for t in dashboard["mosaicLayout"]["tiles"]]
    assert titles[0] == "Request rate (req/s)" and "Latency p95 (ms)" in titles
    flt = dashboard["mosaicLayout"]["tiles"][0]["widget"]["xyChart"]["dataSets"][0]
    assert (
        'resource.labels.service_name = "web"'
        in flt["timeSeriesQuery"]["timeSeriesFilter"]["filter"]
    )


def test_logs_view_says_when_logs_are_unavailable(client_for, victor, web, envs):
    browser = client_for(victor)
    page = browser.get("/services/web/logs/?environment=dev&q=error")
    assert page.status_code == 200
    assert "Logs unavailable" in page.content.decode()
    partial = browser.get("/services/web/logs/?environment=dev", HTTP_HX_REQUEST="true")
    assert partial.content.decode().startswith('<div id="mon-logs">')


def test_oncall_lists_unacknowledged_first_and_mine(client_for, oscar, admin_actor, web, envs):
    from core.actors import Actor

    acked = services.open_incident(admin_actor, "older sev1", severity="sev1").incident
    services.acknowledge(Actor.for_user(oscar), acked)
    services.open_incident(admin_actor, "new sev4", severity="sev4")
    html = client_for(oscar).get("/oncall/").content.decode()
    assert html.index("new sev4") < html.index("older sev1", html.index("Open incidents"))
    assert "unacknowledged" in html
    mine = html[html.index("Mine") : html.index("Open incidents")]
    assert "older sev1" in mine and "new sev4" not in mine
