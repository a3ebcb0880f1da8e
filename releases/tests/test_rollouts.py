"""Rollouts end to end: the deployment engine in a real RQ worker, driving localcloud through
the real Cloud Run and Monitoring client libraries, with real traffic."""

import requests

from releases import services
from releases.models import Deployment, Measurement
from releases.tests.conftest import Load, wait_for

S = Deployment.Status
CANARY_FAST = {
    "steps": [
        {"set_weight": 20},
        {"analysis": {"template": "fast"}},
        {"set_weight": 50},
        {"analysis": {"template": "fast"}},
        {"set_weight": 100},
    ]
}


def _first_release(actor, demo, env):
    d = services.request_deployment(actor, demo["service"], env, demo["1.0.0"], "all_at_once")
    return wait_for(d, {S.SUCCEEDED, S.FAILED})


def _version_served(url: str) -> str:
    return requests.get(url, timeout=5).json()["version"]


def test_good_canary_goes_to_100_and_bad_canary_is_rolled_back(
    environments, demo_service, admin_actor
):
    dev = environments["dev"]
    first = _first_release(admin_actor, demo_service, dev)
    assert first.status == S.SUCCEEDED, first.reason
    state = services.platform_state(demo_service["service"], dev)
    assert _version_served(state.uri) == "1.0.0"

    with Load(state.uri, rps=60) as load:
        good = services.request_deployment(
            admin_actor, demo_service["service"], dev, demo_service["1.1.0"], "canary", CANARY_FAST
        )
        good = wait_for(good, {S.SUCCEEDED, S.FAILED, S.PAUSED})
        assert good.status == S.SUCCEEDED, good.reason
        assert [t.new_percent for t in good.traffic.all()] == [20, 50, 100]
        assert good.analyses.count() == 2
        assert set(good.analyses.values_list("result", flat=True)) == {"passed"}
        assert _version_served(state.uri) == "1.1.0"

        bad = services.request_deployment(
            admin_actor, demo_service["service"], dev, demo_service["bad"], "canary", CANARY_FAST
        )
        bad = wait_for(bad, {S.SUCCEEDED, S.FAILED, S.PAUSED})
    assert bad.status == S.FAILED
    assert "analysis failed" in bad.reason and "error-rate" in bad.reason
    failed = Measurement.objects.filter(run__deployment=bad, result="fail").first()
    assert failed is not None and failed.value > 0.05
    # All traffic is back on the good release, and the bad one never got past 20%.
    assert [t.new_percent for t in bad.traffic.all()] == [20, 0]
    assert all(_version_served(state.uri) == "1.1.0" for _ in range(20))
    assert load.failed == 0, load.statuses
    # The step where analysis stopped the rollout is marked failed; the later ones skipped.
    from releases.serializers import DeploymentDetailSerializer

    steps = DeploymentDetailSerializer(bad).data["steps"]
    assert [s["state"] for s in steps] == [
        "done",
        "done",
        "failed",
        "skipped",
        "skipped",
        "skipped",
        "skipped",
    ]
    assert steps[2]["type"] == "analysis"
