"""BaseAgent and the registry of agent actions.

An agent is a class with methods marked by @action. Each action declares its parameters;
they are validated before anything is enqueued, the action runs in an RQ worker inside a Job,
logs into that Job through `self.log`, and returns a JSON-serialisable result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from core.actors import Actor
from core.crypto import seal, unseal
from core.errors import ValidationFailed
from core.jobs import JobContext

_MISSING = object()

_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    dict: "an object",
    list: "a list",
}


@dataclass(frozen=True)
class Param:
    name: str
    type: type = str
    required: bool = True
    default: Any = None
    help: str = ""
    choices: tuple | None = None
    # Values of a secret parameter are sealed in the Job's params and never shown.
    secret: bool = False
    # An extra check: returns an error message, or None when the value is fine.
    check: Callable[[Any], str | None] | None = None

    def clean(self, value: Any) -> Any:
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, self.type) and not (
            self.type in (int, float) and isinstance(value, bool)
        )
        if not ok:
            raise ValueError(f"expected {_TYPE_NAMES.get(self.type, self.type.__name__)}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"expected one of: {', '.join(map(str, self.choices))}")
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise ValueError(problem)
        return value


@dataclass(frozen=True)
class ActionSpec:
    agent: str
    name: str
    method: str
    params: tuple[Param, ...]
    description: str
    queue: str = "default"
    # The scope needed beyond actions:run (e.g. environments:write for a config change).
    scope: str | None = None

    def validate(self, raw: Any) -> dict:
        """Cleaned params, or ValidationFailed naming every bad field as params.<name>."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ValidationFailed(
                "params must be an object", fields={"params": ["Expected an object."]}
            )
        errors: dict[str, list[str]] = {}
        known = {p.name for p in self.params}
        for name in raw:
            if name not in known:
                errors[f"params.{name}"] = [
                    f"Unknown parameter; {self.agent}.{self.name} takes: "
                    f"{', '.join(sorted(known)) or 'no parameters'}."
                ]
        cleaned = {}
        for param in self.params:
            value = raw.get(param.name, _MISSING)
            if value is _MISSING or value is None:
                if param.required:
                    errors[f"params.{param.name}"] = ["This parameter is required."]
                else:
                    cleaned[param.name] = param.default
                continue
            try:
                cleaned[param.name] = param.clean(value)
            except ValueError as exc:
                errors[f"params.{param.name}"] = [str(exc)[:1].upper() + str(exc)[1:] + "."]
        if errors:
            raise ValidationFailed(
                f"Invalid params for {self.agent}.{self.name}: {', '.join(errors)}.", fields=errors
            )
        return cleaned

    def seal(self, cleaned: dict) -> dict:
        out = dict(cleaned)
        for param in self.params:
            if param.secret and out.get(param.name) is not None:
                value = out[param.name]
                if isinstance(value, dict):
                    out[param.name] = {
                        k: (seal(v) if isinstance(v, str) else v) for k, v in value.items()
                    }
                else:
                    out[param.name] = seal(value)
        return out

    @staticmethod
    def unseal(params: dict) -> dict:
        out = {}
        for key, value in params.items():
            if isinstance(value, dict) and "__sealed__" not in value:
                out[key] = {k: unseal(v) for k, v in value.items()}
            else:
                out[key] = unseal(value)
        return out


def action(
    *,
    params: tuple[Param, ...] | list[Param] = (),
    description: str = "",
    queue: str = "default",
    scope: str | None = None,
):
    """Marks an agent method as an action that can be started through the API."""

    def mark(method):
        method._action = {
            "params": tuple(params),
            "description": description or (method.__doc__ or "").strip().splitlines()[0],
            "queue": queue,
            "scope": scope,
        }
        return method

    return mark


REGISTRY: dict[str, type[BaseAgent]] = {}


def register(cls: type[BaseAgent]) -> type[BaseAgent]:
    cls.actions = {}
    for attr in dir(cls):
        meta = getattr(getattr(cls, attr), "_action", None)
        if meta:
            cls.actions[attr] = ActionSpec(agent=cls.name, name=attr, method=attr, **meta)
    REGISTRY[cls.name] = cls
    return cls


def get_action(agent: str, name: str) -> ActionSpec:
    if not isinstance(agent, str) or agent not in REGISTRY:
        raise ValidationFailed(
            f"Unknown agent {agent!r}.",
            fields={"agent": [f"Expected one of: {', '.join(sorted(REGISTRY))}."]},
        )
    actions = REGISTRY[agent].actions
    if not isinstance(name, str) or name not in actions:
        raise ValidationFailed(
            f"Unknown action {name!r} of agent {agent}.",
            fields={"action": [f"Expected one of: {', '.join(sorted(actions))}."]},
        )
    return actions[name]


class BaseAgent:
    name: ClassVar[str] = ""
    actions: ClassVar[dict[str, ActionSpec]] = {}

    def __init__(self, actor: Actor, job_context: JobContext | None = None):
        self.actor = actor
        self.job_context = job_context
        self.log = logging.getLogger(f"agents.{self.name}")


@dataclass
class ActionOutcome:
    """What an action returns when it wants to say more than a dict."""

    summary: str
    details: dict = field(default_factory=dict)
