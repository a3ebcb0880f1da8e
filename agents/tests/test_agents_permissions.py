"""Who may start agent actions, through the API and the actions page.

Personas (conftest.py): alice admin and oscar operator may start actions; april approver and
victor viewer may not. Tokens need actions:run, plus the action's own scope if it has one.
"""

import pytest

from agents.base import REGISTRY, BaseAgent, Param, action, register
from core.models import AuditEvent, Job
from core.roles import ENVIRONMENTS_WRITE

pytestmark = pytest.mark.django_db


class EchoAgent(BaseAgent):
    name = "echo"

    @action(params=(Param("text", str),), description="Say the text back.")
    def say(self, text: str) -> dict:
        self.log.info("echo: %s", text)
        return {"said": text}

    @action(
        params=(), description="A change that needs environments:write.", scope=ENVIRONMENTS_WRITE
    )
    def change(self) -> dict:
        return {}


@pytest.fixture(autouse=True)
def echo_agent(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    register(EchoAgent)
    yield EchoAgent
    REGISTRY.pop("echo", None)


@pytest.fixture
def personas(alice, oscar, april, victor):
    return {"alice": alice, "oscar": oscar, "april": april, "victor": victor}


SAY = {"agent": "echo", "action": "say", "params": {"text": "hi"}}

# persona -> (status, error message) for POST /api/v1/actions/ with echo.say.
API_MATRIX = {
    "alice": (202, None),
    "oscar": (202, None),
    "april": (403, "this needs the operator role ('actions:run')"),
    "victor": (403, "this needs the operator role ('actions:run')"),
}


@pytest.mark.parametrize("persona", API_MATRIX)
def test_starting_an_action_by_persona(persona, personas, api_for):
    status, message = API_MATRIX[persona]

    response = api_for(personas[persona]).post("/api/v1/actions/", SAY, format="json")

    assert response.status_code == status, response.content
    if message:
        assert response.json()["error"] == {
            "code": "permission_denied",
            "message": message,
            "fields": {},
        }
        assert not Job.objects.exists()
    else:
        job = Job.objects.get(pk=response.json()["id"])
        assert job.actor == persona and job.name == "echo.say"


# token scopes -> (status, error message) for echo.say and echo.change.
TOKEN_MATRIX = [
    (("actions:run",), "say", 202, None),
    (("read",), "say", 403, "token 'bot' lacks the 'actions:run' scope (it has: read)"),
    (
        ("actions:run",),
        "change",
        403,
        "token 'bot' lacks the 'environments:write' scope (it has: actions:run)",
    ),
    (("actions:run", "environments:write"), "change", 202, None),
    (("admin",), "change", 202, None),
]


@pytest.mark.parametrize(("scopes", "name", "status", "message"), TOKEN_MATRIX)
def test_starting_an_action_by_token_scope(scopes, name, status, message, token_client):
    body = {"agent": "echo", "action": name, "params": {"text": "hi"} if name == "say" else {}}

    response = token_client(*scopes, name="bot").post("/api/v1/actions/", body, format="json")

    assert response.status_code == status, response.content
    if message:
        assert response.json()["error"]["message"] == message


def test_a_token_follows_its_action_with_actions_run_only(token_client):
    api = token_client("actions:run")
    job_id = api.post("/api/v1/actions/", SAY, format="json").json()["id"]

    assert api.get(f"/api/v1/actions/{job_id}/").json()["status"] == "queued"
    assert api.get("/api/v1/jobs/").status_code == 403


def test_action_detail_is_only_for_agent_actions(token_client, system_actor):
    from core import jobs

    other = jobs.enqueue("core.tests.jobfuncs.succeed", name="not an action", actor=system_actor)

    response = token_client("read").get(f"/api/v1/actions/{other.pk}/")

    assert response.status_code == 404


def test_the_page_refuses_a_viewer_with_a_403_naming_the_role(victor, client_for):
    response = client_for(victor).post(
        "/agents/actions/", {"action": "echo.say", "params": '{"text": "hi"}'}
    )

    assert response.status_code == 403
    assert b"this needs the operator role (&#x27;actions:run&#x27;)" in response.content
    assert b"Starting actions needs the operator role." in response.content
    assert not Job.objects.exists()


def test_the_page_lets_an_operator_start_an_action(oscar, client_for):
    response = client_for(oscar).post(
        "/agents/actions/", {"action": "echo.say", "params": '{"text": "hi"}'}
    )

    job = Job.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/jobs/{job.pk}/"
    assert (job.name, job.actor) == ("echo.say", "oscar")
    assert AuditEvent.objects.get(action="action.start").actor == "oscar"


def test_the_page_names_bad_params(oscar, client_for):
    c = client_for(oscar)

    bad_json = c.post("/agents/actions/", {"action": "echo.say", "params": "{text: hi}"})
    assert bad_json.status_code == 400
    assert b"Params are not valid JSON." in bad_json.content

    missing = c.post("/agents/actions/", {"action": "echo.say", "params": "{}"})
    assert missing.status_code == 400
    assert b"params.text: This parameter is required." in missing.content
    assert not Job.objects.exists()


def test_viewers_see_the_catalog_without_the_form(victor, client_for):
    html = client_for(victor).get("/agents/actions/").content.decode()

    assert "<code>echo.say</code>" in html
    assert "Starting actions needs the operator role." in html
    assert 'name="params"' not in html
