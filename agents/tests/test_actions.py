import pytest

from environments import services as env_services
from environments.models import ConfigVar, Secret


@pytest.fixture
def staging(db, system_actor):
    return env_services.create_environment(system_actor, "staging", order=20)


def test_configure_environment_runs_in_a_worker_and_reports(
    staging, token_client, run_worker, django_capture_on_commit_callbacks
):
    api = token_client("actions:run", "environments:write", "secrets:write")
    body = {
        "agent": "devops",
        "action": "configure_environment",
        "params": {
            "environment": "staging",
            "variables": {"LOG_LEVEL": "info"},
            "secrets": {"DB_PASSWORD": "hunter2-very-secret"},
        },
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/v1/actions/", body, format="json")
    assert response.status_code == 202, response.json()
    job_id = response.json()["id"]

    queued = api.get(f"/api/v1/actions/{job_id}/").json()
    assert queued["status"] == "queued"
    assert "hunter2-very-secret" not in str(queued)

    run_worker()

    done = api.get(f"/api/v1/actions/{job_id}/").json()
    assert done["status"] == "succeeded", done
    assert done["result"] == {
        "environment": "staging",
        "config_changed": ["LOG_LEVEL"],
        "secrets_changed": [{"name": "DB_PASSWORD", "version": 1}],
    }
    assert any("1 config change(s), 1 secret change(s)" in line["message"] for line in done["log"])
    assert "hunter2-very-secret" not in str(done)
    assert ConfigVar.objects.get(environment=staging, key="LOG_LEVEL").value == "info"
    assert Secret.objects.filter(environment=staging, name="DB_PASSWORD").exists()


def test_unknown_agent_action_and_bad_params_are_400_naming_the_field(staging, token_client):
    api = token_client("actions:run", "environments:write")

    response = api.post("/api/v1/actions/", {"agent": "nope", "action": "x"}, format="json")
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["agent"]

    response = api.post("/api/v1/actions/", {"agent": "devops", "action": "x"}, format="json")
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["action"]

    response = api.post(
        "/api/v1/actions/",
        {
            "agent": "devops",
            "action": "configure_environment",
            "params": {"environment": "nowhere", "variables": {"A": 1}, "color": "red"},
        },
        format="json",
    )
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert set(fields) == {"params.environment", "params.variables", "params.color"}
    assert "No environment named 'nowhere'" in fields["params.environment"][0]


def test_a_batch_with_one_bad_key_changes_nothing(staging, system_actor, run_worker):
    from agents.specialized.devops_agent import DevOpsAgent
    from core.errors import ValidationFailed

    agent = DevOpsAgent(system_actor)
    with pytest.raises(ValidationFailed) as caught:
        agent.configure_environment(
            "staging", {"GOOD": "1"}, {"bad-name": "x"}, service="", override_reason=""
        )
    assert "secrets.bad-name" in caught.value.fields
    assert not ConfigVar.objects.filter(environment=staging).exists()


def test_action_needs_the_scope_of_its_change(staging, token_client):
    api = token_client("actions:run")
    response = api.post(
        "/api/v1/actions/",
        {
            "agent": "devops",
            "action": "configure_environment",
            "params": {"environment": "staging"},
        },
        format="json",
    )
    assert response.status_code == 403
    assert "environments:write" in response.json()["error"]["message"]


def test_deploy_application_requests_a_deployment_through_the_same_checks(
    staging, system_actor, token_client, run_worker, django_capture_on_commit_callbacks
):
    from releases import services as release_services
    from releases.models import Deployment

    service = release_services.register_service(system_actor, "shop")
    release_services.register_release(
        system_actor, service, "2.0.0", "python app.py", ci_status="passed"
    )
    release_services.register_release(
        system_actor,
        service,
        "2.0.1",
        "python app.py",
        ci_status="failed",
        ci_url="https://ci.example.test/9",
    )
    api = token_client("actions:run", "deployments:write", "read")

    def start(version):
        with django_capture_on_commit_callbacks(execute=True):
            response = api.post(
                "/api/v1/actions/",
                {
                    "agent": "devops",
                    "action": "deploy_application",
                    "params": {
                        "service": "shop",
                        "environment": "staging",
                        "version": version,
                        "strategy": "canary",
                    },
                },
                format="json",
            )
        assert response.status_code == 202, response.json()
        run_worker("deploy")
        return api.get(f"/api/v1/actions/{response.json()['id']}/").json()

    refused = start("2.0.1")
    assert refused["status"] == "failed"
    assert "https://ci.example.test/9" in refused["error"]
    assert not Deployment.objects.exists()

    done = start("2.0.0")
    assert done["status"] == "succeeded", done
    deployment = Deployment.objects.get(pk=done["result"]["deployment"])
    assert (deployment.service.name, deployment.environment.name, deployment.strategy) == (
        "shop",
        "staging",
        "canary",
    )
    assert deployment.status == "running"
    assert deployment.requested_by == "token:test-agent"
