"""The permission matrix: who may open each page and call each endpoint.

Personas (conftest.py): alice is an admin (everything, tokens included), oscar an operator
(reads, starts actions), april an approver (reads, approves), victor a viewer (reads only).
Each table row declares a URL and what each persona gets; the tests are generic.
"""

import re
import uuid
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.test import APIClient

from core import tokens
from core.models import AgentToken, Job

pytestmark = pytest.mark.django_db

PERSONAS = ("alice", "oscar", "april", "victor")

# Pages: URL -> the status each persona gets. {job} is replaced by an agent action's job id.
PAGES = {
    "/jobs/": dict.fromkeys(PERSONAS, 200),
    "/jobs/{job}/": dict.fromkeys(PERSONAS, 200),
    "/audit/": dict.fromkeys(PERSONAS, 200),
    "/tokens/": {"alice": 200, "oscar": 403, "april": 403, "victor": 403},
    "/agents/actions/": dict.fromkeys(PERSONAS, 200),
    "/api/v1/docs/": dict.fromkeys(PERSONAS, 200),
}
# API endpoints (GET) -> the scopes a token needs, any one of them.
API = {
    "/api/v1/audit/": {"read"},
    "/api/v1/jobs/": {"read"},
    "/api/v1/jobs/{job}/": {"read"},
    "/api/v1/actions/": {"read"},
    "/api/v1/actions/{job}/": {"read", "actions:run"},
    "/api/v1/schema/": {"read"},
}
# Reachable without a login: the probes, the login page and static files.
PUBLIC = ("/healthz", "/readyz", "/login/", "/static/css/app.css")
PUBLIC_URL_NAMES = {"healthz", "readyz", "login"}
# Under /api/ but a page for a browser: anonymous visitors go to the login page.
API_PAGES = {"api:docs"}


@pytest.fixture
def job(db):
    return Job.objects.create(
        name="devops.configure_environment", func="agents.jobs.run_action", actor="oscar"
    )


@pytest.fixture
def personas(alice, oscar, april, victor):
    return {"alice": alice, "oscar": oscar, "april": april, "victor": victor}


def _url(template: str, job: Job) -> str:
    return template.format(job=job.pk)


def _assert_error_shape(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message", "fields"}
    assert error["message"]
    if code:
        assert error["code"] == code
    return error


def _assert_sent_to_login(response, path: str) -> None:
    assert response.status_code == 302, (path, response.status_code)
    assert response["Location"] == f"/login/?next={quote(path, safe='/')}"


@pytest.mark.parametrize("template", ["/", *PAGES])
def test_anonymous_visitors_are_sent_to_the_login_page(template, job):
    path = _url(template, job)

    _assert_sent_to_login(Client().get(path), path)


def test_the_login_redirect_keeps_the_query_string():
    response = Client().get("/jobs/?status=failed&page=2")

    assert response["Location"] == "/login/?next=/jobs/%3Fstatus%3Dfailed%26page%3D2"


def test_an_htmx_poll_after_logout_redirects_the_whole_page(job):
    response = Client().get(f"/jobs/{job.pk}/", headers={"HX-Request": "true"})

    assert response.status_code == 401
    assert response["HX-Redirect"] == f"/login/?next=/jobs/{job.pk}/"


@pytest.mark.parametrize("template", API)
def test_anonymous_api_calls_are_401_with_a_bearer_challenge(template, job):
    response = APIClient().get(_url(template, job))

    _assert_error_shape(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("path", PUBLIC)
def test_public_urls_answer_without_a_login(path, client):
    response = client.get(path)

    assert response.status_code == 200, path


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("template", PAGES)
def test_pages_by_persona(template, persona, personas, client_for, job):
    expected = PAGES[template][persona]

    response = client_for(personas[persona]).get(_url(template, job))

    assert response.status_code == expected, (template, persona)
    if expected == 403:
        assert b"This page needs the <strong>admin</strong> role" in response.content


@pytest.mark.parametrize("persona", PERSONAS)
def test_home_sends_people_to_a_page(persona, personas, client_for):
    response = client_for(personas[persona]).get("/")

    assert response.status_code == 302
    assert not response["Location"].startswith("/login/")


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("template", API)
def test_every_persona_reads_the_api(template, persona, personas, api_for, job):
    response = api_for(personas[persona]).get(_url(template, job))

    assert response.status_code == 200, (template, persona, response.content[:300])


@pytest.mark.parametrize("template", API)
def test_tokens_need_one_of_the_endpoints_scopes(template, token_client, job):
    path = _url(template, job)
    for scope in API[template]:
        assert token_client(scope, name=f"with-{scope}").get(path).status_code == 200, scope

    response = token_client("approve", name="approver-bot").get(path)

    error = _assert_error_shape(response, 403, "permission_denied")
    needed = " or ".join(sorted(API[template], key=["read", "actions:run"].index))
    assert error["message"] == (
        f"token 'approver-bot' lacks the '{needed}' scope (it has: approve)"
    )


def test_expired_and_revoked_tokens_are_401(token_client, alice, job):
    from core.actors import Actor

    expired = token_client("read", name="expired")
    AgentToken.objects.filter(pk=expired.token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    revoked = token_client("read", name="revoked")
    tokens.revoke_token(Actor.for_user(alice), revoked.token)
    unknown = APIClient()
    unknown.credentials(HTTP_AUTHORIZATION="Bearer opk_not-a-token")

    for api in (expired, revoked, unknown):
        response = api.get("/api/v1/jobs/")
        error = _assert_error_shape(response, 401, "authentication_failed")
        assert error["message"] == "Token is unknown, expired or revoked."
        assert response["WWW-Authenticate"] == "Bearer"


def test_only_admins_create_tokens(personas, client_for):
    form = {"name": "ci", "scopes": ["read"], "expires_days": "7"}
    for persona in ("oscar", "april", "victor"):
        response = client_for(personas[persona]).post("/tokens/", form)
        assert response.status_code == 403, persona
    assert not AgentToken.objects.exists()

    response = client_for(personas["alice"]).post("/tokens/", form)

    assert response.status_code == 200
    assert AgentToken.objects.get().name == "ci"


def test_only_admins_revoke_tokens(personas, client_for, token_client):
    api = token_client("read", name="ci")
    for persona in ("oscar", "april", "victor"):
        response = client_for(personas[persona]).post(f"/tokens/{api.token.pk}/revoke/")
        assert response.status_code == 403, persona
    assert api.get("/api/v1/jobs/").status_code == 200

    response = client_for(personas["alice"]).post(f"/tokens/{api.token.pk}/revoke/")

    assert response.status_code == 302
    assert api.get("/api/v1/jobs/").status_code == 401


# Sample values for path converters, so that every URL pattern can be requested.
SAMPLES = {"uuid": str(uuid.uuid4()), "int": "1", "str": "sample", "slug": "sample", "path": "x/y"}
# Views that serve nothing to anyone: an unknown API path is a 404 in the error shape.
SERVES_NOTHING = {"api_not_found"}


def _all_patterns(resolver: URLResolver | None = None, prefix: str = "", namespace: str = ""):
    """(path with sample arguments, view name, URLPattern) for every pattern of the resolver."""
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        route = str(entry.pattern)
        if route.startswith("^"):
            raise AssertionError(f"regex URL pattern {route!r}: give the matrix a sample path")

        def sample(match: re.Match) -> str:
            converter = match.group(1) or "str"
            assert converter in SAMPLES, f"add a sample for the <{converter}:> converter"
            return SAMPLES[converter]

        path = prefix + re.sub(r"<(?:(\w+):)?\w+>", sample, route)
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from _all_patterns(entry, path, inner)
        elif isinstance(entry, URLPattern):
            yield "/" + path, f"{namespace}{entry.name or ''}", entry


def test_the_matrix_finds_the_known_urls():
    paths = {path for path, _, _ in _all_patterns()}

    for known in ("/jobs/", "/audit/", "/tokens/", "/agents/actions/", "/api/v1/schema/"):
        assert known in paths
    assert f"/jobs/{SAMPLES['uuid']}/" in paths
    assert "/tokens/1/revoke/" in paths


def test_every_url_except_the_public_ones_refuses_anonymous_visitors(db):
    checked = []
    for path, view_name, pattern in _all_patterns():
        if view_name in PUBLIC_URL_NAMES:
            continue
        for method in ("get", "post"):
            response = getattr(Client(), method)(path)
            view = getattr(pattern.callback, "__name__", "")
            if view in SERVES_NOTHING:
                _assert_error_shape(response, 404, "not_found")
            elif path.startswith("/api/") and view_name not in API_PAGES:
                _assert_error_shape(response, 401)
            else:
                _assert_sent_to_login(response, path)
            checked.append((method, path))
    assert len(checked) >= 2 * 14
