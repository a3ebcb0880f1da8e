"""End to end on localcloud: a bad release's canary fails its analysis, the engine puts all
traffic back on stable, and monitoring opens one incident with the rollback on its timeline.
Slow (a real rollout, about a minute)."""

# Fixtures are imported from another app's conftest; tests name them as arguments.
# ruff: noqa: F811

from monitoring.models import Incident
from releases import services
from releases.models import Deployment
from releases.tests.conftest import (  # noqa: F401 - fixtures
    Load,
    admin_actor,
    demo_service,
    environments,
    localcloud,
    service_name,
    wait_for,
)

S = Deployment.Status
CANARY = {"steps": [{"set_weight": 50}, {"analysis": {"template": "fast"}}, {"set_weight": 100}]}


def test_a_failed_canary_opens_one_incident_with_its_rollback(
    environments,
    demo_service,
    admin_actor,  # noqa: F811
):
    dev = environments["dev"]
    first = services.request_deployment(
        admin_actor, demo_service["service"], dev, demo_service["1.0.0"], "all_at_once"
    )
    assert wait_for(first, {S.SUCCEEDED, S.FAILED}).status == S.SUCCEEDED
    state = services.platform_state(demo_service["service"], dev)

    with Load(state.uri, rps=60):
        bad = services.request_deployment(
            admin_actor, demo_service["service"], dev, demo_service["bad"], "canary", CANARY
        )
        bad = wait_for(bad, {S.SUCCEEDED, S.FAILED, S.PAUSED})
    assert bad.status == S.FAILED

    incident = Incident.objects.get(deployment=bad)
    assert Incident.objects.filter(deployment=bad).count() == 1
    assert incident.source == "deployment" and incident.is_open
    assert list(incident.services.all()) == [demo_service["service"]]
    events = list(incident.events.values_list("kind", "message"))
    assert [k for k, _ in events] == ["opened", "deployment_failed", "rolled_back"]
    assert "analysis failed" in events[1][1]
    assert f"back on {bad.stable_revision}" in events[2][1]
