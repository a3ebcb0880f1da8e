"""Checks that higher apps add to deployments without releases importing them (monitoring
registers "an open SEV1/SEV2 incident blocks deployments" here in its AppConfig.ready)."""

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Hold:
    code: str  # e.g. "incident_open"
    message: str
    overridable: bool = True  # an admin may override with a reason


# A gate gets (service, environment, is_rollback) and returns a Hold, or None to let it pass.
Gate = Callable[..., Hold | None]
_GATES: list[Gate] = []


def register(gate: Gate) -> None:
    if gate not in _GATES:
        _GATES.append(gate)


def holds(service, environment, is_rollback: bool) -> list[Hold]:
    return [h for h in (gate(service, environment, is_rollback) for gate in _GATES) if h]
