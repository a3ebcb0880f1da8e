"""Blue-green, all-at-once and progressive rollouts end to end: a real RQ worker drives
localcloud through the Cloud Run and Monitoring clients, and the test reads what a user would
(the URLs, the traffic split, the deployment's history)."""

import requests

from releases import services
from releases.models import Deployment
from releases.tests.conftest import Load, run_queues, wait_for

S = Deployment.Status
DONE = {S.SUCCEEDED, S.FAILED, S.PAUSED, S.ABORTED}


def first_release(actor, demo, env) -> Deployment:
    d = services.request_deployment(actor, demo["service"], env, demo["1.0.0"], "all_at_once")
    d = wait_for(d, DONE)
    assert d.status == S.SUCCEEDED, d.reason
    return d


def versions(url: str, n: int = 10) -> set[str]:
    return {requests.get(url, timeout=5).json()["version"] for _ in range(n)}


def percents(d: Deployment) -> list[int]:
    return [t.new_percent for t in d.traffic.all()]


def test_blue_green_previews_switches_keeps_the_old_revision_then_rolls_back(
    environments, demo_service, admin_actor, alice, api_for
):
    dev, svc = environments["dev"], demo_service["service"]
    first = first_release(admin_actor, demo_service, dev)
    uri = services.platform_state(svc, dev).uri

    d = services.request_deployment(
        admin_actor, svc, dev, demo_service["1.1.0"], "blue_green", {"analysis": "fast"}
    )

    def in_analysis() -> bool:
        d.refresh_from_db()
        return d.current_step >= 2 or not d.is_active

    run_queues(in_analysis, 40)
    assert d.steps[d.current_step]["type"] == "analysis", d.reason
    preview = services.platform_state(svc, dev)
    # The preview URL serves the new release only; users still get the old one only.
    assert preview.tag_uris["preview"] == d.step_state["tag_uri"]
    assert versions(preview.tag_uris["preview"]) == {"1.1.0"}
    assert versions(uri) == {"1.0.0"}
    assert preview.percent(first.new_revision) == 100
    assert d.events.filter(kind="smoke_passed").exists()

    d = wait_for(d, DONE, 40)
    assert d.status == S.SUCCEEDED, d.reason
    assert percents(d) == [100]  # one switch, no steps in between
    assert list(d.analyses.values_list("result", flat=True)) == ["passed"]
    after = services.platform_state(svc, dev)
    assert after.percent(d.new_revision) == 100
    assert "preview" not in after.tag_uris
    assert after.revision(first.new_revision) is not None  # kept for the rollback window
    assert d.events.filter(kind="kept", message__contains=first.new_revision).exists()
    assert versions(uri) == {"1.1.0"}

    response = api_for(alice).post(
        f"/api/v1/services/{svc.name}/environments/dev/rollback/",
        {"reason": "checkout errors"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    rollback = wait_for(Deployment.objects.get(pk=response.json()["id"]), DONE, 30)
    assert rollback.status == S.SUCCEEDED, rollback.reason
    assert rollback.is_rollback and rollback.release.version == "1.0.0"
    # The previous release back as one traffic update, no analysis.
    assert [t.split for t in rollback.traffic.all()] == [{first.new_revision: 100}]
    assert not rollback.analyses.exists()
    assert versions(uri, 20) == {"1.0.0"}
    d.refresh_from_db()
    assert (d.status, d.reason) == (S.ROLLED_BACK, f"rolled back by deployment #{rollback.pk}")


def test_all_at_once_moves_every_request_in_one_update(environments, demo_service, admin_actor):
    dev, svc = environments["dev"], demo_service["service"]
    first = first_release(admin_actor, demo_service, dev)
    uri = services.platform_state(svc, dev).uri

    with Load(uri, rps=30) as load:
        d = services.request_deployment(admin_actor, svc, dev, demo_service["1.1.0"], "all_at_once")
        d = wait_for(d, DONE, 40)

    assert d.status == S.SUCCEEDED, d.reason
    assert d.stable_revision == first.new_revision
    assert [t.split for t in d.traffic.all()] == [{d.new_revision: 100}]
    assert versions(uri) == {"1.1.0"}
    assert load.failed == 0, load.statuses
    assert "canary" not in services.platform_state(svc, dev).tag_uris


def test_progressive_steps_up_over_its_duration_with_analysis(
    environments, demo_service, admin_actor
):
    dev, svc = environments["dev"], demo_service["service"]
    first_release(admin_actor, demo_service, dev)
    uri = services.platform_state(svc, dev).uri

    with Load(uri, rps=40) as load:
        d = services.request_deployment(
            admin_actor,
            svc,
            dev,
            demo_service["1.1.0"],
            "progressive",
            {"duration_s": 2, "increments": 2, "analysis": "fast"},
        )
        d = wait_for(d, DONE, 40)

    assert d.status == S.SUCCEEDED, d.reason
    assert percents(d) == [50, 100]
    assert list(d.analyses.values_list("result", flat=True)) == ["passed"]
    half, full = d.traffic.all()
    # The pause between increments is duration / increments = 1 s, after the analysis.
    assert (full.created_at - half.created_at).total_seconds() >= 1.0
    assert versions(uri) == {"1.1.0"}
    assert load.failed == 0, load.statuses
