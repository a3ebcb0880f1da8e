"""Incident, on-call, policy and check lists, and the deployments API: the number of queries
a page or endpoint takes does not grow with the number of rows it lists."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from monitoring import services
from monitoring.tests.conftest import make_deployment
from releases import services as release_services

PAGES = ["/incidents/", "/oncall/", "/alert-policies/", "/health-checks/"]
API = [
    "/api/v1/incidents/",
    "/api/v1/alert-policies/",
    "/api/v1/health-checks/",
    "/api/v1/deployments/",
    "/api/v1/services/",
]


def _rows(actor, envs, start: int, stop: int) -> None:
    """For each i: a service with a deployment, an open incident with an event, an alert
    policy and a health check, in dev."""
    for i in range(start, stop):
        name = f"svc-{i:02d}"
        service = release_services.register_service(actor, name)
        release_services.register_release(actor, service, "1.0.0", "img:1", ci_status="passed")
        make_deployment(service, envs["dev"], "1.0.0", new_revision=f"{name}-r1")
        incident = services.open_incident(
            actor, f"{name} is slow", severity="sev3", services=[name], environments=["dev"]
        ).incident
        services.add_event(actor, incident, "note", "looking")
        services.create_alert_policy(
            actor,
            name=f"{name} errors",
            service=service,
            environment=envs["dev"],
            metric="error_rate",
            window_s=300,
            comparison=">",
            threshold=0.05,
        )
        services.create_health_check(actor, service, envs["dev"], path="/healthz")


def _count(client, path: str, **headers) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path, **headers)
    assert response.status_code == 200, (path, response.status_code)
    return len(captured)


@pytest.mark.parametrize("path", PAGES + API)
def test_lists_take_the_same_queries_for_3_or_12_rows(
    path, admin_actor, envs, oscar, client_for, api_for
):
    client = api_for(oscar) if path.startswith("/api/") else client_for(oscar)
    _rows(admin_actor, envs, 0, 3)
    client.get(path)  # warm caches (sessions, content types)
    three = _count(client, path)
    _rows(admin_actor, envs, 3, 12)
    twelve = _count(client, path)

    assert three == twelve, (path, three, twelve)
