"""How the apps read the platform (Cloud Run state, metrics, logs) without importing the
agent layer: agents register their reader here in AgentsConfig.ready(), as DESIGN.md asks of
a lower app that must ask a higher one."""

from __future__ import annotations

from typing import Any, Protocol


class PlatformReader(Protocol):
    def service_state(self, service: str, environment) -> Any: ...

    def environment_overview(self, environment) -> dict: ...

    def service_series(self, environment, service: str, range_key: str) -> Any: ...

    def revision_logs(self, environment, service, **kwargs) -> Any: ...

    def revision_series(self, environment, service: str, revisions, since, until) -> Any: ...


_reader: PlatformReader | None = None


def register(reader: PlatformReader) -> None:
    global _reader
    _reader = reader


def reader() -> PlatformReader:
    if _reader is None:
        raise RuntimeError("no platform reader registered: is the agents app installed?")
    return _reader
