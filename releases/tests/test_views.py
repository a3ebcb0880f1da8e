"""The services and deployments pages, without a platform: every environment points at a
dead endpoint, so the pages must render without waiting for it. Deployments are created
through the services (their first tick is never enqueued: the test's transaction never
commits) or put in a state directly, as the engine would leave them."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.actors import Actor
from environments import services as env_services
from releases import services, views
from releases.models import AnalysisRun, Deployment, Measurement, Release, TrafficChange

S = Deployment.Status
DEAD = "http://127.0.0.1:9"  # the discard port: nothing answers there


def html(response) -> str:
    return response.content.decode()


@pytest.fixture
def system():
    return Actor.system("tests")


@pytest.fixture
def envs(db, system):
    """dev -> staging -> production (protected), all on an unreachable localcloud."""
    return {
        name: env_services.create_environment(
            system,
            name,
            order=order,
            protected=protected,
            platform="localcloud",
            gcp_project=f"test-{name}",
            region="local",
            run_endpoint=DEAD,
            monitoring_endpoint="127.0.0.1:9",
        )
        for name, order, protected in (
            ("dev", 10, False),
            ("staging", 20, False),
            ("production", 30, True),
        )
    }


@pytest.fixture
def demo(envs, system):
    service = services.register_service(system, "demo", owners="team-a")
    for version in ("1.0.0", "1.1.0"):
        services.register_release(
            system,
            service,
            version,
            "python examples/demo_service.py",
            ci_status="passed",
            ci_url=f"https://ci.example.test/{version}",
            commit_sha="abc123",
        )
    return service


def release(service, version: str) -> Release:
    return service.releases.get(version=version)


def put(deployment: Deployment, status: str, **fields) -> Deployment:
    """Leaves a deployment in a state as the engine would."""
    if status in Deployment.FINISHED:
        fields.setdefault("finished_at", timezone.now())
    Deployment.objects.filter(pk=deployment.pk).update(status=status, **fields)
    deployment.refresh_from_db()
    return deployment


def succeeded(service, environment, version: str, revision: str, requested_by="tests"):
    return Deployment.objects.create(
        service=service,
        environment=environment,
        release=release(service, version),
        strategy="all_at_once",
        steps=[{"type": "deploy", "tag": "canary"}, {"type": "finalize"}],
        status=S.SUCCEEDED,
        current_step=2,
        new_revision=revision,
        requested_by=requested_by,
        finished_at=timezone.now(),
    )


@pytest.fixture
def running(demo, envs, oscar):
    """A canary of 1.1.0 in dev at 20%, its analysis measured once."""
    d = services.request_deployment(
        Actor.for_user(oscar),
        demo,
        envs["dev"],
        release(demo, "1.1.0"),
        "canary",
        {"steps": [{"set_weight": 20}, {"analysis": {}}, {"pause": {}}, {"set_weight": 100}]},
    )
    put(
        d,
        S.RUNNING,
        current_step=2,
        step_state={"weight": 20},
        new_revision="demo-00002",
        stable_revision="demo-00001",
    )
    TrafficChange.objects.create(
        deployment=d, split={"demo-00002": 20, "demo-00001": 80}, new_percent=20
    )
    run = AnalysisRun.objects.create(deployment=d, step_index=2, template="default")
    Measurement.objects.create(
        run=run,
        metric="error-rate",
        value=0.0123,
        stable_value=0.01,
        sample_count=42,
        threshold="<= 0.02",
        result="pass",
    )
    return d


PERSONAS = ("alice", "oscar", "april", "victor")


# Every page, every persona


@pytest.mark.parametrize("persona", PERSONAS)
def test_every_page_renders_for_every_persona(request, persona, running, client_for):
    client = client_for(request.getfixturevalue(persona))
    pages = {
        "/services/": "<h1>Services</h1>",
        "/services/demo/": "<h1>demo</h1>",
        "/deployments/": "<h1>Deployments</h1>",
        f"/deployments/{running.pk}/": f"Deployment #{running.pk}: demo",
    }
    for url, heading in pages.items():
        response = client.get(url)
        assert response.status_code == 200, url
        page = html(response)
        assert heading in page, url
        assert 'class="breadcrumb"' in page, url
        assert "style=" not in page and "<script>" not in page, url  # the CSP allows neither
    nav = html(client.get("/deployments/"))
    assert 'href="/services/"' in nav and 'href="/deployments/" aria-current="page"' in nav


def test_the_service_page_does_not_wait_for_a_dead_platform(demo, victor, client_for):
    client = client_for(victor)
    # Whatever an earlier test left, this page asks the dead platform afresh.
    views._lookups.clear()

    first = client.get("/services/demo/")
    second = client.get("/services/demo/")

    # The page says the platform gave no answer (late, or refused) rather than failing.
    assert first.status_code == second.status_code == 200
    for page in (html(first), html(second)):
        assert (
            "The platform did not answer in time" in page
            or "The platform could not be asked" in page
        )


def test_the_service_page_survives_a_platform_that_cannot_be_asked(
    demo, system, victor, client_for
):
    # localcloud without endpoints: building the adapter fails before platform_state's try.
    env_services.create_environment(system, "bare", order=40)

    response = client_for(victor).get("/services/demo/")

    assert response.status_code == 200
    assert "The platform could not be asked: localcloud platform needs run_endpoint" in html(
        response
    )


def test_pages_say_what_to_do_when_empty(db, alice, victor, client_for):
    assert "Register the first one" in html(client_for(alice).get("/services/"))
    assert "ask one to register your service" in html(client_for(victor).get("/services/"))
    assert "Register a <a" in html(client_for(victor).get("/deployments/"))


def test_an_empty_service_page_asks_for_a_release(envs, system, oscar, client_for):
    services.register_service(system, "empty-svc")
    page = html(client_for(oscar).get("/services/empty-svc/"))
    assert "Nothing to deploy yet: register a release below first." in page
    assert "No releases yet." in page and "has not been deployed yet" in page


def test_unknown_service_and_deployment_are_404(db, victor, client_for):
    client = client_for(victor)
    assert client.get("/services/nope/").status_code == 404
    assert client.get("/deployments/999999/").status_code == 404


# The lists


def test_the_services_list_shows_current_and_active_per_environment(
    running, demo, envs, victor, client_for
):
    succeeded(demo, envs["dev"], "1.0.0", "demo-00001")

    page = html(client_for(victor).get("/services/"))

    assert "team-a" in page and "Canary" in page
    assert "<code>1.0.0</code>" in page
    assert f'href="/deployments/{running.pk}/" class="badge running">running 1.1.0' in page
    assert page.count("not deployed") == 2  # staging and production


def test_the_deployments_list_filters(running, demo, envs, victor, client_for):
    old = succeeded(demo, envs["staging"], "1.0.0", "demo-00001")
    client = client_for(victor)

    everything = html(client.get("/deployments/"))
    by_status = html(client.get("/deployments/?status=succeeded"))
    by_env = html(client.get("/deployments/?environment=dev&service=demo"))
    nothing = html(client.get("/deployments/?service=demo&status=failed"))

    assert f"#{running.pk}<" in everything and f"#{old.pk}<" in everything
    assert everything.index(f"#{running.pk}<") > everything.index(f"#{old.pk}<")  # newest first
    assert f"#{old.pk}<" in by_status and f"#{running.pk}<" not in by_status
    assert f"#{running.pk}<" in by_env and f"#{old.pk}<" not in by_env
    assert "No deployment matches these filters." in nothing


def _count_queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_the_lists_take_the_same_queries_for_3_or_20_rows(envs, system, alice, client_for):
    client = client_for(alice)

    def add(numbers) -> None:
        for i in numbers:
            service = services.register_service(system, f"svc-{i}")
            services.register_release(system, service, "1.0", "cmd", ci_status="passed")
            services.register_release(system, service, "2.0", "cmd", ci_status="passed")
            succeeded(service, envs["dev"], "1.0", "r1")
            succeeded(service, envs["dev"], "2.0", "r2")
            Deployment.objects.create(
                service=service,
                environment=envs["staging"],
                release=release(service, "2.0"),
                strategy="canary",
                status=S.RUNNING,
                requested_by="tests",
            )

    add(range(3))
    few_services = _count_queries(client, "/services/")
    few_deployments = _count_queries(client, "/deployments/")
    add(range(3, 20))
    page = html(client.get("/services/"))
    assert page.count('href="/services/svc-') == 20
    assert page.count("<code>2.0</code>") == 20  # the newer success is the current release
    assert _count_queries(client, "/services/") == few_services
    assert _count_queries(client, "/deployments/") == few_deployments


# Registering services and releases


def test_an_operator_registers_a_service_and_a_release(envs, oscar, client_for):
    client = client_for(oscar)

    response = client.post(
        "/services/",
        {
            "name": "billing",
            "owners": "payments",
            "health_path": "/healthz",
            "default_strategy": "blue_green",
        },
    )
    assert response.status_code == 302 and response["Location"] == "/services/billing/"
    response = client.post(
        "/services/billing/releases/",
        {
            "version": "2.0.0",
            "artifact": "python app.py",
            "ci_status": "running",
            "env": '{"FEATURE": "on"}',
        },
    )
    assert response.status_code == 302
    assert Release.objects.get(service__name="billing", version="2.0.0").env == {"FEATURE": "on"}
    page = html(client.get("/services/billing/"))
    assert "billing 2.0.0 registered." in page
    assert '<span class="badge ci-running">Running</span>' in page

    again = client.post(
        "/services/billing/releases/",
        {"version": "2.0.0", "artifact": "python app.py", "ci_status": "passed"},
    )
    assert again.status_code == 409
    assert "Must be unique per service." in html(again)
    bad_name = client.post(
        "/services/", {"name": "Bad_Name", "health_path": "/", "default_strategy": "canary"}
    )
    assert bad_name.status_code == 400
    assert "Expected lowercase letters, digits and dashes." in html(bad_name)


# Deploying


def test_an_operator_deploys_through_the_form(
    demo, envs, oscar, client_for, django_capture_on_commit_callbacks
):
    client = client_for(oscar)
    page = html(client.get("/services/demo/"))
    assert 'value="deploy">Deploy</button>' in page
    assert "Override reason" not in page  # admins only

    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(
            "/services/demo/deploy/",
            {
                "environment": "dev",
                "version": "1.0.0",
                "strategy": "all_at_once",
                "action": "deploy",
            },
        )

    d = Deployment.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/deployments/{d.pk}/"
    assert (d.status, d.requested_by, d.release.version, d.strategy) == (
        S.RUNNING,
        "oscar",
        "1.0.0",
        "all_at_once",
    )
    assert len(callbacks) == 1  # the first tick, enqueued once the request commits
    page = html(client.get(response["Location"]))
    assert f"Deployment #{d.pk}: demo 1.0.0 to dev (running)." in page
    assert 'hx-trigger="every 2s"' in page


def test_the_dry_run_shows_the_plan_and_every_refusal(running, demo, envs, oscar, client_for):
    client = client_for(oscar)
    params = '{"steps": [{"set_weight": 20}, {"pause": {}}, {"set_weight": 100}]}'

    refused = client.post(
        "/services/demo/deploy/",
        {
            "environment": "staging",
            "version": "1.1.0",
            "strategy": "canary",
            "params": params,
            "action": "check",
        },
    )
    busy = client.post(
        "/services/demo/deploy/",
        {"environment": "dev", "version": "1.0.0", "action": "check"},
    )

    assert refused.status_code == 200
    page = html(refused)
    assert "would be refused" in page
    assert "demo 1.1.0 has not succeeded in dev, which comes before staging." in page
    assert "an admin may override with a reason" in page
    assert "pause until an operator promotes" in page
    assert "shift 20% of traffic to the new revision" in page
    assert f"Deployment #{running.pk} of demo to dev is running" in html(busy)
    assert Deployment.objects.count() == 1  # a dry run creates nothing


def test_a_refused_deployment_comes_back_with_its_reasons(running, demo, envs, oscar, client_for):
    client = client_for(oscar)

    busy = client.post(
        "/services/demo/deploy/", {"environment": "dev", "version": "1.0.0", "action": "deploy"}
    )
    out_of_order = client.post(
        "/services/demo/deploy/",
        {"environment": "staging", "version": "1.1.0", "action": "deploy"},
    )
    bad_json = client.post(
        "/services/demo/deploy/",
        {"environment": "staging", "version": "1.1.0", "params": "{steps", "action": "deploy"},
    )
    bad_step = client.post(
        "/services/demo/deploy/",
        {
            "environment": "staging",
            "version": "1.1.0",
            "strategy": "canary",
            "params": '{"steps": [{"set_weight": 500}]}',
            "action": "check",
        },
    )

    assert busy.status_code == 409 and "wait for it, or abort it" in html(busy)
    assert out_of_order.status_code == 400 and "has not succeeded in dev" in html(out_of_order)
    assert bad_json.status_code == 400 and "Not valid JSON" in html(bad_json)
    assert bad_step.status_code == 400
    assert "params.steps.0.set_weight: Expected a whole percentage from 1 to 100." in html(bad_step)
    assert Deployment.objects.count() == 1


def test_an_admin_overrides_the_promotion_order_and_an_approver_approves(
    demo, envs, alice, april, client_for
):
    admin, approver = client_for(alice), client_for(april)
    assert "Override reason" in html(admin.get("/services/demo/"))

    response = admin.post(
        "/services/demo/deploy/",
        {
            "environment": "production",
            "version": "1.1.0",
            "strategy": "all_at_once",
            "override_reason": "hotfix",
            "action": "deploy",
        },
    )
    d = Deployment.objects.get()
    assert response.status_code == 302
    assert (d.status, d.override_reason) == (S.AWAITING_APPROVAL, "hotfix")

    # The requester is never offered Approve, and is refused if they post it anyway.
    own_page = html(admin.get(f"/deployments/{d.pk}/"))
    assert ">Approve</button>" not in own_page and "awaiting approval" in own_page
    own = admin.post(f"/deployments/{d.pk}/approve/")
    assert own.status_code == 403
    assert "alice requested deployment" in html(own)
    assert "another approver must approve it" in html(own)
    d.refresh_from_db()
    assert d.status == S.AWAITING_APPROVAL

    page = html(approver.get(f"/deployments/{d.pk}/"))
    assert ">Approve</button>" in page and ">Reject</button>" in page
    assert ">Abort</button>" not in page  # an approver does not operate rollouts
    response = approver.post(f"/deployments/{d.pk}/approve/")
    assert response.status_code == 302
    d.refresh_from_db()
    assert (d.status, d.approved_by) == (S.RUNNING, "april")
    assert "approved" in html(approver.get(f"/deployments/{d.pk}/"))


def test_an_approver_rejects_with_a_reason(demo, envs, alice, april, client_for):
    d = services.request_deployment(
        Actor.for_user(alice),
        demo,
        envs["production"],
        release(demo, "1.1.0"),
        "all_at_once",
        override_reason="hotfix",
    )
    response = client_for(april).post(f"/deployments/{d.pk}/reject/", {"reason": "not today"})
    d.refresh_from_db()
    assert response.status_code == 302
    assert (d.status, d.reason) == (S.ABORTED, "rejected by april: not today")


# The deployment page


def test_the_deployment_page_shows_steps_traffic_analysis_and_timeline(running, victor, client_for):
    page = re.sub(r">\s+<", "><", html(client_for(victor).get(f"/deployments/{running.pk}/")))

    assert '<span class="badge running" id="deploy-status">running</span>' in page
    assert 'id="step-1"><td>2</td><td>shift 20% of traffic to the new revision</td>' in page
    assert '<span class="badge step-done">done</span>' in page
    assert '<span class="badge step-current">current</span>' in page
    assert '<span class="badge step-pending">pending</span>' in page
    assert '<progress value="20" max="100"' in page and "80% on stable" in page
    assert "<td>0.0123</td><td>0.0100</td><td>42</td><td><code>&lt;= 0.02</code></td>" in page
    assert "oscar requested 1.1.0 with canary" in page  # the timeline
    assert "<code>demo-00002</code> 20%" in page and "<code>demo-00001</code> 80%" in page


def test_htmx_polls_the_live_part_until_the_deployment_ends(running, victor, client_for):
    client = client_for(victor)

    live = client.get(f"/deployments/{running.pk}/", HTTP_HX_REQUEST="true")
    put(running, S.SUCCEEDED, current_step=len(running.steps), step_state={"weight": 100})
    done = client.get(f"/deployments/{running.pk}/", HTTP_HX_REQUEST="true")

    assert live.status_code == done.status_code == 200
    assert html(live).lstrip().startswith('<div id="deploy-live"')
    assert "<html" not in html(live)
    assert 'hx-trigger="every 2s"' in html(live)
    assert "hx-trigger" not in html(done) and "succeeded" in html(done)


@pytest.mark.parametrize(
    "status, shown, hidden",
    [
        (S.RUNNING, ["Promote", "Promote to 100%", "Pause", "Abort"], ["Resume", "Retry"]),
        (S.PAUSED, ["Promote", "Resume", "Abort"], ["Pause", "Retry", "Roll back"]),
        (S.FAILED, ["Retry"], ["Promote", "Abort", "Roll back", "Approve"]),
        (S.ABORTED, ["Retry"], ["Promote", "Abort"]),
        (S.SUCCEEDED, ["Roll back"], ["Promote", "Abort", "Retry"]),
    ],
)
def test_the_buttons_fit_the_state(status, shown, hidden, running, oscar, client_for):
    put(running, status)
    page = html(client_for(oscar).get(f"/deployments/{running.pk}/"))
    for label in shown:
        assert f">{label}</button>" in page, label
    for label in hidden:
        assert f">{label}</button>" not in page, label


def test_an_operator_pauses_resumes_and_aborts(running, oscar, client_for):
    client = client_for(oscar)

    assert client.post(f"/deployments/{running.pk}/pause/").status_code == 302
    running.refresh_from_db()
    assert running.status == S.PAUSED
    assert client.post(f"/deployments/{running.pk}/pause/").status_code == 409
    assert client.post(f"/deployments/{running.pk}/resume/").status_code == 302
    response = client.post(f"/deployments/{running.pk}/abort/", {"reason": "wrong build"})
    assert response.status_code == 302
    page = html(client.get(response["Location"]))
    assert "abort requested; traffic goes back to stable" in page
    assert "aborted by oscar: wrong build" in page
    assert client.post(f"/deployments/{running.pk}/explode/").status_code == 404


def test_retry_creates_a_new_deployment(running, oscar, client_for):
    put(running, S.FAILED, reason="analysis failed")
    response = client_for(oscar).post(f"/deployments/{running.pk}/retry/")
    again = Deployment.objects.exclude(pk=running.pk).get()
    assert response.status_code == 302 and response["Location"] == f"/deployments/{again.pk}/"
    assert again.steps == running.steps


def test_rollback_puts_the_previous_release_back_or_says_why_not(demo, envs, oscar, client_for):
    client = client_for(oscar)
    first = succeeded(demo, envs["dev"], "1.0.0", "demo-00001")

    nothing = client.post("/services/demo/rollback/", {"environment": "dev"})
    assert nothing.status_code == 409
    assert "demo has no earlier successful release in dev to roll back to." in html(nothing)

    second = succeeded(demo, envs["dev"], "1.1.0", "demo-00002")
    assert ">Roll back</button>" not in html(client.get(f"/deployments/{first.pk}/"))
    assert ">Roll back</button>" in html(client.get(f"/deployments/{second.pk}/"))
    response = client.post("/services/demo/rollback/", {"environment": "dev", "reason": "slow"})
    back = Deployment.objects.get(is_rollback=True)
    assert response.status_code == 302 and response["Location"] == f"/deployments/{back.pk}/"
    assert (back.release.version, back.rollback_of_id) == ("1.0.0", second.pk)
    assert back.steps[0]["revision"] == "demo-00001"


# Who may do what


def test_a_viewer_sees_no_action_and_every_post_is_403(running, demo, envs, victor, client_for):
    client = client_for(victor)
    put(running, S.PAUSED)

    for url in ("/services/", "/services/demo/", f"/deployments/{running.pk}/"):
        page = html(client.get(url))
        assert page.count("<button") == page.count("<form") == 1, url  # Log out only

    posts = [
        ("/services/", {"name": "nope", "health_path": "/", "default_strategy": "canary"}),
        ("/services/demo/releases/", {"version": "9", "artifact": "x", "ci_status": "passed"}),
        ("/services/demo/deploy/", {"environment": "dev", "version": "1.0.0"}),
        ("/services/demo/rollback/", {"environment": "dev"}),
    ] + [
        (f"/deployments/{running.pk}/{action}/", {})
        for action in ("approve", "reject", "promote", "pause", "resume", "abort", "retry")
    ]
    for url, data in posts:
        response = client.post(url, data)
        assert response.status_code == 403, url
        assert "Not allowed" in html(response), url
    running.refresh_from_db()
    assert running.status == S.PAUSED
    assert Deployment.objects.count() == 1 and not Release.objects.filter(version="9").exists()


def test_an_approver_may_not_deploy_and_an_operator_may_not_approve(
    running, april, oscar, client_for
):
    put(running, S.AWAITING_APPROVAL)
    assert client_for(april).post("/services/demo/deploy/", {}).status_code == 403
    operator = client_for(oscar)
    assert ">Approve</button>" not in html(operator.get(f"/deployments/{running.pk}/"))
    assert operator.post(f"/deployments/{running.pk}/approve/").status_code == 403
