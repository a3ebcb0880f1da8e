"""The probes: /healthz answers while the process lives, /readyz when its services answer."""

import pytest


@pytest.mark.django_db
def test_readyz_is_503_naming_redis_when_redis_is_down(client, settings):
    # Nothing listens on port 1: the connection is refused at once.
    settings.RQ_QUEUES = {"default": {"URL": "redis://127.0.0.1:1/0", "DEFAULT_TIMEOUT": 5}}

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"postgresql": "ok", "redis": "failed: ConnectionError"},
    }


def test_healthz_needs_no_database(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response["Content-Security-Policy"].startswith("default-src 'self'")
