"""Shared fixtures. Personas, one per role:

- alice: admin (everything: users, tokens, protected environments, overrides)
- oscar: operator (deploys to unprotected environments, edits their config, runs actions)
- april: approver (approves protected changes; read otherwise)
- victor: viewer (reads, changes nothing)
"""

import django_rq
import pytest
from django.contrib.auth.models import Group, User
from django.core.cache import cache
from rest_framework.test import APIClient
from rq import SimpleWorker

from core import tokens
from core.actors import Actor
from core.roles import ROLES

PASSWORD = "correct-horse-battery-staple"
QUEUES = ("deploy", "default", "infra", "db")


def _user(username: str, role: str) -> User:
    Group.objects.get_or_create(name=role)
    user = User.objects.create_user(username, f"{username}@example.test", PASSWORD)
    user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def groups(db):
    for role in ROLES:
        Group.objects.get_or_create(name=role)


@pytest.fixture
def alice(groups):
    return _user("alice", "admin")


@pytest.fixture
def oscar(groups):
    return _user("oscar", "operator")


@pytest.fixture
def april(groups):
    return _user("april", "approver")


@pytest.fixture
def victor(groups):
    return _user("victor", "viewer")


@pytest.fixture
def system_actor():
    return Actor.system("tests")


@pytest.fixture
def client_for(client):
    """A Django test client logged in as the given user."""

    def make(user):
        from django.test import Client

        c = Client()
        c.force_login(user)
        return c

    return make


@pytest.fixture
def token_client(db, system_actor):
    """An API client authenticated by a fresh agent token with the given scopes."""

    def make(*scopes: str, name: str = "test-agent"):
        created = tokens.create_token(system_actor, name, list(scopes))
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {created.raw}")
        api.token = created.token
        return api

    return make


@pytest.fixture
def api_for():
    """An API client with a logged-in session for the given user."""

    def make(user):
        api = APIClient()
        api.force_login(user)
        return api

    return make


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    """Password hashing is slow by design; tests hash many persona passwords."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _clean_redis():
    """Every test starts with empty queues and an empty cache (throttle counters)."""
    try:
        for name in QUEUES:
            django_rq.get_queue(name).empty()
        cache.clear()
    except Exception:  # tests that need no Redis still run when it is down
        pass
    yield


@pytest.fixture
def run_worker():
    """Runs queued RQ jobs in a real RQ worker, in burst mode, in this process (so it shares
    the test's database transaction); returns how many jobs it ran."""

    def run(*queues: str) -> None:
        names = queues or QUEUES
        conn = django_rq.get_connection("default")
        worker = SimpleWorker([django_rq.get_queue(n) for n in names], connection=conn)
        worker.work(burst=True, with_scheduler=False)

    return run
