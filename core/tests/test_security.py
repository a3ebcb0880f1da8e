"""Web security: CSRF, cookies, the Content-Security-Policy and failed-login throttling."""

import re

import pytest
from django.conf import settings
from django.test import Client

from conftest import PASSWORD
from core.models import AgentToken, Job

pytestmark = pytest.mark.django_db

# The pages of the permission matrix, as their persona sees them.
PAGES = [
    "/login/",
    "/jobs/",
    "/jobs/{job}/",
    "/audit/",
    "/tokens/",
    "/agents/actions/",
    "/api/v1/docs/",
]


@pytest.fixture
def job(db):
    return Job.objects.create(
        name="devops.configure_environment",
        func="agents.jobs.run_action",
        actor="oscar",
        error="something <b>bad</b>",
    )


def _csrf_client(user=None) -> Client:
    c = Client(enforce_csrf_checks=True)
    if user is not None:
        c.force_login(user)
    return c


def _login(c: Client, username: str, password: str, ip: str = "127.0.0.1"):
    c.get("/login/")
    return c.post(
        "/login/",
        {
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": c.cookies["csrftoken"].value,
        },
        REMOTE_ADDR=ip,
    )


def test_forms_refuse_a_post_without_the_csrf_token(alice, oscar):
    response = _csrf_client(alice).post("/tokens/", {"name": "ci", "scopes": ["read"]})
    assert response.status_code == 403
    assert not AgentToken.objects.exists()

    response = _csrf_client(oscar).post("/agents/actions/", {"action": "devops.x", "params": "{}"})
    assert response.status_code == 403
    assert not Job.objects.exists()

    response = _csrf_client().post("/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 403


def test_forms_accept_a_post_with_the_csrf_token(alice):
    c = _csrf_client(alice)
    page = c.get("/tokens/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)

    response = c.post("/tokens/", {"name": "ci", "scopes": ["read"], "csrfmiddlewaretoken": token})

    assert response.status_code == 200
    assert AgentToken.objects.filter(name="ci").exists()


def test_session_api_posts_need_the_csrf_token(oscar):
    c = _csrf_client(oscar)

    refused = c.post(
        "/api/v1/actions/", {"agent": "nobody", "action": "x"}, content_type="application/json"
    )

    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == "CSRF Failed: CSRF cookie not set."
    c.get("/jobs/")  # the page sets the CSRF cookie; app.js sends it as X-CSRFToken
    accepted = c.post(
        "/api/v1/actions/",
        {"agent": "nobody", "action": "x"},
        content_type="application/json",
        headers={"X-CSRFToken": c.cookies["csrftoken"].value},
    )
    assert accepted.status_code == 400  # past CSRF and permissions, to the validation


def test_token_api_posts_need_no_csrf_token(token_client):
    response = token_client("actions:run").post(
        "/api/v1/actions/", {"agent": "nobody", "action": "x"}, format="json"
    )

    assert response.status_code == 400


def test_login_sets_httponly_samesite_cookies(alice):
    response = _login(Client(), "alice", PASSWORD)

    assert response.status_code == 302
    session = response.cookies[settings.SESSION_COOKIE_NAME]
    assert session["httponly"] is True
    assert session["samesite"] == "Lax"
    csrf = response.cookies["csrftoken"]
    assert csrf["samesite"] == "Strict"


@pytest.mark.parametrize("template", PAGES)
def test_pages_have_a_strict_csp_and_no_inline_script(template, alice, client_for, job):
    c = Client() if template == "/login/" else client_for(alice)

    response = c.get(template.format(job=job.pk))

    assert response.status_code == 200
    csp = response["Content-Security-Policy"]
    assert "script-src 'self';" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    html = response.content.decode()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S | re.I)
    assert scripts, "expected the page's own scripts"
    for attrs, body in scripts:
        assert body.strip() == "", f"inline script on {template}: {body[:80]!r}"
        assert "src=" in attrs
    # Inline event handlers and style attributes are blocked by the CSP as well.
    assert not re.search(r"<[^>]+\son[a-z]+\s*=", html, re.I), template
    assert not re.search(r"<[^>]+\sstyle\s*=", html, re.I), template


def test_the_job_page_escapes_what_a_job_recorded(alice, client_for, job):
    html = client_for(alice).get(f"/jobs/{job.pk}/").content.decode()

    assert "something &lt;b&gt;bad&lt;/b&gt;" in html


def test_failed_logins_are_throttled(alice, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    c = Client()
    for _ in range(3):
        response = _login(c, "alice", "wrong password")
        assert response.status_code == 200
        assert b"Please enter a correct username and password" in response.content

    response = _login(c, "alice", PASSWORD)

    assert response.status_code == 200
    assert b"Too many failed attempts. Wait a few minutes before trying again." in response.content
    assert "_auth_user_id" not in c.session


def test_a_successful_login_before_the_limit_clears_the_users_count(alice, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    # From several addresses, so that only the per-user count is at stake.
    for n in range(2):
        _login(Client(), "alice", "wrong password", ip=f"10.0.0.{n}")
    assert _login(Client(), "alice", PASSWORD, ip="10.0.0.9").status_code == 302

    for n in range(2):
        _login(Client(), "alice", "wrong password", ip=f"10.0.1.{n}")

    assert _login(Client(), "alice", PASSWORD, ip="10.0.1.9").status_code == 302


def test_one_address_guessing_many_usernames_is_throttled(alice, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    for username in ("bob", "carol", "dave"):
        _login(Client(), username, "wrong password", ip="203.0.113.5")

    response = _login(Client(), "alice", PASSWORD, ip="203.0.113.5")

    assert b"Too many failed attempts" in response.content
    assert _login(Client(), "alice", PASSWORD, ip="203.0.113.6").status_code == 302
