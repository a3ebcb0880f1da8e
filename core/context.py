"""Per-request facts (source IP, request id) that the audit log records."""

import contextvars
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestInfo:
    request_id: str = ""
    source_ip: str | None = None


_current: contextvars.ContextVar[RequestInfo] = contextvars.ContextVar(
    "ops_portal_request",
    default=RequestInfo(),  # noqa: B039 - a frozen dataclass, never mutated
)


def current() -> RequestInfo:
    return _current.get()


def set_current(info: RequestInfo) -> contextvars.Token:
    return _current.set(info)


def reset(token: contextvars.Token) -> None:
    _current.reset(token)
