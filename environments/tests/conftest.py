"""Environments every test here starts from: staging (open) and production (protected)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from environments import services


@pytest.fixture
def staging(db, system_actor):
    return services.create_environment(system_actor, "staging", order=20)


@pytest.fixture
def production(db, system_actor):
    return services.create_environment(system_actor, "production", order=30, protected=True)


@pytest.fixture
def freeze(system_actor):
    """Freezes an environment from an hour ago to an hour from now."""

    def make(environment, reason="launch week"):
        now = timezone.now()
        return services.add_freeze_window(
            system_actor,
            environment,
            reason,
            starts_at=now - timedelta(hours=1),
            ends_at=now + timedelta(hours=1),
        )

    return make
