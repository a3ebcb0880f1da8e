"""Cloud Run operations a deployment needs: revisions, traffic, tags, state and logs.

The same calls drive Google Cloud Run and localcloud (see platform.py). Revisions are
named by their id (the last segment of the resource name), which must start with
`<service>-` as Cloud Run requires. Long-running operations are polled quickly; UNAVAILABLE
and DEADLINE_EXCEEDED are retried with exponential backoff; any other failure is raised as
CloudRunError naming the service and the revision.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import requests
from google.api_core import exceptions as gexc
from google.api_core import retry as retries
from google.api_core.future.polling import DEFAULT_POLLING
from google.cloud import run_v2

from agents.devops.platform import PlatformConfig, revisions_client, services_client

logger = logging.getLogger(__name__)

T = TypeVar("T")

REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
Condition = run_v2.Condition

# localcloud restarting refuses connections for a moment: as transient as UNAVAILABLE.
TRANSIENT = retries.if_exception_type(
    gexc.ServiceUnavailable, gexc.DeadlineExceeded, requests.exceptions.ConnectionError
)


class CloudRunError(Exception):
    """A Cloud Run call failed; the message names the service and the revision."""

    def __init__(self, message: str, service: str, revision: str | None = None):
        super().__init__(message)
        self.service = service
        self.revision = revision


class RevisionNotReady(CloudRunError):
    """A new revision did not become Ready (crashed, failed its health check, timed out)."""

    def __init__(self, service: str, revision: str, reason: str, message: str):
        super().__init__(
            f"service {service}: revision {revision} is not ready: {reason}: {message}",
            service,
            revision,
        )
        self.reason = reason
        self.detail = message


@dataclass(frozen=True)
class RevisionState:
    name: str  # revision id
    ready: bool
    failed: bool  # the Ready condition failed for good (pending is neither ready nor failed)
    reason: str
    message: str
    create_time: datetime | None
    image: str  # the container image (Google), or "" (localcloud)
    command: tuple[str, ...]  # command + args (localcloud), or () (Google)
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrafficEntry:
    revision: str  # resolved revision id ("" if a LATEST target has no ready revision yet)
    percent: int
    tag: str
    uri: str
    latest: bool  # the target follows the latest ready revision


@dataclass(frozen=True)
class ServiceState:
    service: str
    uri: str
    ready: bool
    latest_ready_revision: str
    latest_created_revision: str
    revisions: tuple[RevisionState, ...]  # newest first
    traffic: tuple[TrafficEntry, ...]  # as served (the service's traffic statuses)
    tag_uris: Mapping[str, str]

    def percent(self, revision: str) -> int:
        """Share of traffic a revision serves."""
        return sum(t.percent for t in self.traffic if t.revision == revision)

    def tags(self, revision: str) -> list[str]:
        return [t.tag for t in self.traffic if t.revision == revision and t.tag]

    def revision(self, name: str) -> RevisionState | None:
        return next((r for r in self.revisions if r.name == name), None)


@dataclass(frozen=True)
class RevisionResult:
    service: str
    revision: str
    created_service: bool  # True when this call created the service (100% traffic)
    service_uri: str
    tag: str
    tag_uri: str  # the tag's own URL, "" without a tag


@dataclass(frozen=True)
class LogEntry:
    timestamp: datetime
    stream: str  # "stdout" or "stderr"
    text: str


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _ready_condition(conditions: Sequence[Any]) -> Any | None:
    return next((c for c in conditions if c.type_ == "Ready"), None)


def _reason(condition: Any) -> str:
    for attr in ("revision_reason", "reason", "execution_reason"):
        value = getattr(condition, attr, 0)
        if value:
            return value.name
    return Condition.State(condition.state).name


def _revision_state(rev: run_v2.Revision) -> RevisionState:
    ready = _ready_condition(rev.conditions)
    state = ready.state if ready is not None else Condition.State.STATE_UNSPECIFIED
    container = rev.containers[0] if rev.containers else None
    return RevisionState(
        name=_short(rev.name),
        ready=state == Condition.State.CONDITION_SUCCEEDED,
        failed=state == Condition.State.CONDITION_FAILED,
        reason=_reason(ready) if ready is not None else "",
        message=ready.message if ready is not None else "",
        create_time=rev.create_time,
        image=container.image if container else "",
        command=tuple(container.command) + tuple(container.args) if container else (),
        env={e.name: e.value for e in container.env} if container else {},
    )


def _copy(message: T) -> T:
    """A deep copy of a proto-plus message (its constructor would share the protobuf)."""
    cls = type(message)
    return cls.deserialize(cls.serialize(message))  # type: ignore[attr-defined]


def _resolve_latest(svc: run_v2.Service, target: run_v2.TrafficTarget) -> str:
    for status in svc.traffic_statuses:
        if status.type_ == LATEST and status.tag == target.tag and status.revision:
            return _short(status.revision)
    return _short(svc.latest_ready_revision)


def _with_tag(svc: run_v2.Service, tag: str | None, revision: str) -> list[run_v2.TrafficTarget]:
    """The service's traffic pinned to revisions, with `tag` (if any) moved to `revision`.

    A LATEST target would move all of its traffic to a new revision as soon as that is
    ready, so it is pinned to the revision it serves now.
    """
    traffic = []
    for target in svc.traffic:
        pinned = _copy(target)
        if pinned.type_ == LATEST:
            pinned.type_ = REVISION
            pinned.revision = _resolve_latest(svc, target)
        if tag and pinned.tag == tag:
            if not pinned.percent:
                continue
            pinned.tag = ""
        traffic.append(pinned)
    if tag:
        traffic.append(run_v2.TrafficTarget(type_=REVISION, revision=revision, tag=tag))
    return traffic


def _polling(timeout_s: float) -> Any:
    return DEFAULT_POLLING.with_delay(initial=0.2, maximum=1.0, multiplier=1.5).with_timeout(
        timeout_s
    )


class CloudRunAdapter:
    """Cloud Run services and revisions of one project and region."""

    def __init__(
        self,
        config: PlatformConfig,
        services: run_v2.ServicesClient | None = None,
        revisions: run_v2.RevisionsClient | None = None,
        retry_timeout_s: float = 60.0,
    ):
        self.config = config
        self.services = services or services_client(config)
        self.revisions = revisions or revisions_client(config)
        self._retry = retries.Retry(
            predicate=TRANSIENT, initial=0.2, maximum=5.0, multiplier=2.0, timeout=retry_timeout_s
        )

    # --- plumbing --------------------------------------------------------------------------

    def _call(self, what: str, service: str, revision: str | None, fn: Callable[[], T]) -> T:
        """Run one API call; any failure but NotFound becomes a CloudRunError."""
        try:
            return fn()
        except gexc.NotFound:
            raise
        except (gexc.GoogleAPICallError, gexc.RetryError, requests.RequestException) as exc:
            target = f"service {service}" + (f" revision {revision}" if revision else "")
            raise CloudRunError(f"{target}: {what} failed: {exc}", service, revision) from exc

    def _wait(self, op: Any, what: str, service: str, revision: str | None, timeout_s: float):
        """Wait for a long-running operation, polling every 0.2-1 s."""
        try:
            return op.result(polling=_polling(timeout_s), retry=self._retry)
        except TimeoutError as exc:
            raise CloudRunError(
                f"service {service}"
                + (f" revision {revision}" if revision else "")
                + f": {what} did not finish within {timeout_s:g}s",
                service,
                revision,
            ) from exc

    def _get_service(self, service: str) -> run_v2.Service:
        name = self.config.service_name(service)
        return self._call(
            "get", service, None, lambda: self.services.get_service(name=name, retry=self._retry)
        )

    def _get_revision(self, service: str, revision: str) -> run_v2.Revision:
        name = self.config.revision_name(service, revision)
        return self._call(
            "get revision",
            service,
            revision,
            lambda: self.revisions.get_revision(name=name, retry=self._retry),
        )

    def _update(self, svc: run_v2.Service, what: str, revision: str | None, timeout_s: float):
        service = _short(svc.name)
        request = run_v2.UpdateServiceRequest(service=svc)
        op = self._call(
            what,
            service,
            revision,
            lambda: self.services.update_service(request=request, retry=self._retry),
        )
        return self._call(
            what, service, revision, lambda: self._wait(op, what, service, revision, timeout_s)
        )

    def _template(
        self,
        base: run_v2.RevisionTemplate | None,
        revision: str,
        artifact: str | Sequence[str],
        env: Mapping[str, str],
        health_path: str | None,
        port: int | None,
        labels: Mapping[str, str] | None,
        timeout_s: float,
    ) -> run_v2.RevisionTemplate:
        """A revision template; settings of `base` (scaling, accounts...) carry over."""
        template = _copy(base) if base is not None else run_v2.RevisionTemplate()
        template.revision = revision
        if labels is not None:
            template.labels = dict(labels)
        container = _copy(base.containers[0]) if base and base.containers else run_v2.Container()
        if self.config.is_local:
            argv = shlex.split(artifact) if isinstance(artifact, str) else list(artifact)
            if not argv:
                raise ValueError(f"revision {revision}: localcloud needs a command to run")
            container.image = ""
            container.command = argv[:1]
            container.args = argv[1:]
        else:
            if not isinstance(artifact, str) or not artifact:
                raise ValueError(f"revision {revision}: Cloud Run needs an image, not {artifact!r}")
            container.image = artifact
            container.command = []
            container.args = []
        container.env = [run_v2.EnvVar(name=k, value=str(v)) for k, v in sorted(env.items())]
        if port:
            container.ports = [run_v2.ContainerPort(container_port=port)]
        if health_path:
            # One probe a second for as long as the caller waits (Cloud Run allows 240 s).
            container.startup_probe = run_v2.Probe(
                http_get=run_v2.HTTPGetAction(path=health_path),
                period_seconds=1,
                failure_threshold=max(1, min(int(timeout_s), 240)),
            )
        else:
            container.startup_probe = None
        template.containers = [container]
        return template

    # --- operations --------------------------------------------------------------------------

    def create_revision(
        self,
        service: str,
        revision_name: str,
        image_or_command: str | Sequence[str],
        env: Mapping[str, str] | None = None,
        tag: str | None = None,
        timeout_s: float = 300,
        health_path: str | None = "/healthz",
        port: int | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> RevisionResult:
        """Deploy a new revision and wait until it is Ready.

        1. A missing service is created; its first revision gets 100% of traffic.
        2. A revision of that name that exists already is not deployed again (so a retried
           step is harmless); only the tag is moved to it when needed.
        3. Otherwise the template is replaced: the new revision gets 0% (behind `tag` when
           given) and every existing traffic target is pinned to the revision it serves,
           so nothing moves.
        4. Wait for the operation, then for the revision's Ready condition; a failed or
           late revision raises RevisionNotReady with its reason and message.
        """
        if not revision_name.startswith(f"{service}-"):
            raise ValueError(
                f"revision name {revision_name!r} must start with {service + '-'!r} (Cloud Run)"
            )
        deadline = time.monotonic() + timeout_s
        spec = (image_or_command, dict(env or {}), health_path, port, labels, timeout_s)

        try:
            svc = self._get_service(service)
        except gexc.NotFound:
            svc = None
        created = svc is None
        if svc is None:
            # 1. A new service.
            template = self._template(None, revision_name, *spec)
            self._create_service(service, revision_name, template, tag, timeout_s)
        elif self._find_revision(service, revision_name) is not None:
            # 2. Deployed before.
            logger.info("service %s: revision %s exists already", service, revision_name)
            if tag and not any(
                t.tag == tag and _short(t.revision) == revision_name for t in svc.traffic
            ):
                svc.traffic = _with_tag(svc, tag, revision_name)
                self._update(svc, f"tag {tag}", revision_name, timeout_s)
        else:
            # 3. A new revision of an existing service.
            svc.template = self._template(svc.template, revision_name, *spec)
            if svc.latest_ready_revision:
                svc.traffic = _with_tag(svc, tag, revision_name)
            else:
                # No revision serves (the first one failed): this one takes all traffic.
                svc.traffic = [
                    run_v2.TrafficTarget(
                        type_=REVISION, revision=revision_name, percent=100, tag=tag or ""
                    )
                ]
            logger.info(
                "service %s: deploying revision %s at 0%%%s",
                service,
                revision_name,
                f" behind tag {tag}" if tag else "",
            )
            try:
                self._update(svc, "deploy", revision_name, timeout_s)
                self.wait_until_ready(service, revision_name, max(deadline - time.monotonic(), 1))
            except CloudRunError as exc:
                # A tag left on a failed revision would make every later traffic change fail.
                self._drop_traffic_to(service, revision_name, timeout_s)
                if not isinstance(exc, RevisionNotReady):
                    self._raise_if_revision_failed(service, revision_name, exc)
                raise

        # 4. Wait until Ready.
        self.wait_until_ready(service, revision_name, max(deadline - time.monotonic(), 1.0))
        state = self._get_service(service)
        tag_uri = next((t.uri for t in state.traffic_statuses if tag and t.tag == tag), "")
        logger.info(
            "service %s: revision %s ready%s",
            service,
            revision_name,
            f" behind tag {tag}" if tag else "",
        )
        return RevisionResult(service, revision_name, created, state.uri, tag or "", tag_uri)

    def _drop_traffic_to(self, service: str, revision: str, timeout_s: float) -> None:
        """Remove the 0% targets (tags) of a failed revision; best effort."""
        try:
            svc = self._get_service(service)
            kept = [t for t in svc.traffic if _short(t.revision) != revision or t.percent]
            if len(kept) == len(svc.traffic):
                return
            svc.traffic = kept
            self._update(svc, "untag failed revision", revision, timeout_s)
            logger.info("service %s: tags of failed revision %s removed", service, revision)
        except CloudRunError as exc:
            logger.warning(
                "service %s: could not remove the tags of failed revision %s: %s",
                service,
                revision,
                exc,
            )

    def _find_revision(self, service: str, revision: str) -> run_v2.Revision | None:
        try:
            return self._get_revision(service, revision)
        except gexc.NotFound:
            return None

    def _create_service(
        self,
        service: str,
        revision: str,
        template: run_v2.RevisionTemplate,
        tag: str | None,
        timeout_s: float,
    ) -> None:
        target = run_v2.TrafficTarget(type_=REVISION, revision=revision, percent=100, tag=tag or "")
        svc = run_v2.Service(template=template, traffic=[target])
        parent = self.config.location_name
        logger.info("service %s: creating it with revision %s", service, revision)
        try:
            op = self._call(
                "create",
                service,
                revision,
                lambda: self.services.create_service(
                    parent=parent, service=svc, service_id=service, retry=self._retry
                ),
            )
            self._call(
                "create",
                service,
                revision,
                lambda: self._wait(op, "create", service, revision, timeout_s),
            )
        except CloudRunError as exc:
            self._raise_if_revision_failed(service, revision, exc)
            raise

    def _raise_if_revision_failed(self, service: str, revision: str, exc: Exception) -> None:
        """Turn a failed deploy into RevisionNotReady when the revision says why."""
        try:
            state = _revision_state(self._get_revision(service, revision))
        except (gexc.NotFound, CloudRunError):
            return
        if state.failed:
            raise RevisionNotReady(service, revision, state.reason, state.message) from exc

    def wait_until_ready(self, service: str, revision: str, timeout_s: float) -> RevisionState:
        """Poll a revision until its Ready condition succeeds; RevisionNotReady otherwise."""
        deadline = time.monotonic() + timeout_s
        delay = 0.2
        while True:
            try:
                state = _revision_state(self._get_revision(service, revision))
            except gexc.NotFound:
                state = None
            if state is not None and state.ready:
                return state
            if state is not None and state.failed:
                logger.warning(
                    "service %s: revision %s failed: %s: %s",
                    service,
                    revision,
                    state.reason,
                    state.message,
                )
                raise RevisionNotReady(service, revision, state.reason, state.message)
            if time.monotonic() >= deadline:
                reason = state.reason if state else "NOT_FOUND"
                message = state.message if state else "the revision does not exist"
                raise RevisionNotReady(
                    service,
                    revision,
                    reason or "TIMEOUT",
                    f"not ready after {timeout_s:g}s" + (f" ({message})" if message else ""),
                )
            time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
            delay = min(delay * 1.5, 1.0)

    def set_traffic(
        self,
        service: str,
        percents: Mapping[str, int],
        tags: Mapping[str, str] | None = None,
        keep_tags: bool = True,
        timeout_s: float = 120,
    ) -> ServiceState:
        """Split traffic by revision ({revision: percent}, summing to 100).

        Existing tags stay unless keep_tags is False; `tags` ({tag: revision}) adds tags or
        moves them to another revision.
        """
        if sum(percents.values()) != 100 or any(p < 0 for p in percents.values()):
            raise ValueError(f"service {service}: traffic {dict(percents)} must sum to 100")
        svc = self._get_service(service)

        wanted_tags: dict[str, run_v2.TrafficTarget] = {}
        if keep_tags:
            for target in svc.traffic:
                if target.tag:
                    kept = _copy(target)
                    kept.percent = 0
                    wanted_tags[target.tag] = kept
        for tag, revision in (tags or {}).items():
            wanted_tags[tag] = run_v2.TrafficTarget(type_=REVISION, revision=revision, tag=tag)

        traffic = [
            run_v2.TrafficTarget(type_=REVISION, revision=rev, percent=pct)
            for rev, pct in percents.items()
            if pct > 0
        ]
        traffic.extend(wanted_tags[t] for t in sorted(wanted_tags))
        svc.traffic = traffic

        revisions = ", ".join(f"{r}={p}%" for r, p in percents.items())
        logger.info("service %s: traffic -> %s (tags %s)", service, revisions, sorted(wanted_tags))
        self._update(svc, "set traffic", None, timeout_s)
        return self.get_service_state(service)

    def remove_tag(self, service: str, tag: str, timeout_s: float = 120) -> ServiceState:
        """Remove a tag (its URL stops answering); traffic percentages do not change."""
        svc = self._get_service(service)
        traffic = []
        found = False
        for target in svc.traffic:
            if target.tag == tag:
                found = True
                if not target.percent:
                    continue
                target = _copy(target)
                target.tag = ""
            traffic.append(target)
        if not found:
            logger.info("service %s: tag %s is not there, nothing to remove", service, tag)
            return self.get_service_state(service)
        svc.traffic = traffic
        logger.info("service %s: removing tag %s", service, tag)
        self._update(svc, f"remove tag {tag}", None, timeout_s)
        return self.get_service_state(service)

    def get_service_state(self, service: str) -> ServiceState:
        """The service as it serves now: revisions, traffic and URLs."""
        svc = self._get_service(service)
        request = run_v2.ListRevisionsRequest(parent=svc.name, page_size=100)
        revisions = self._call(
            "list revisions",
            service,
            None,
            lambda: list(self.revisions.list_revisions(request=request, retry=self._retry)),
        )
        states = sorted(
            (_revision_state(r) for r in revisions),
            key=lambda r: (r.create_time or datetime.min.replace(tzinfo=UTC), r.name),
            reverse=True,
        )
        traffic = tuple(
            TrafficEntry(
                revision=_short(t.revision)
                or (_short(svc.latest_ready_revision) if t.type_ == LATEST else ""),
                percent=t.percent,
                tag=t.tag,
                uri=t.uri,
                latest=t.type_ == LATEST,
            )
            for t in svc.traffic_statuses
        )
        ready = _ready_condition([svc.terminal_condition, *svc.conditions])
        return ServiceState(
            service=service,
            uri=svc.uri,
            ready=ready is not None and ready.state == Condition.State.CONDITION_SUCCEEDED,
            latest_ready_revision=_short(svc.latest_ready_revision),
            latest_created_revision=_short(svc.latest_created_revision),
            revisions=tuple(states),
            traffic=traffic,
            tag_uris={t.tag: t.uri for t in traffic if t.tag},
        )

    def delete_revision(self, service: str, revision: str, timeout_s: float = 120) -> None:
        """Delete a revision that serves no traffic and has no tag; a missing one is fine."""
        state = self.get_service_state(service)
        if state.percent(revision) or state.tags(revision):
            raise CloudRunError(
                f"service {service}: revision {revision} still serves "
                f"{state.percent(revision)}% of traffic and tags {state.tags(revision)}",
                service,
                revision,
            )
        name = self.config.revision_name(service, revision)
        try:
            op = self._call(
                "delete",
                service,
                revision,
                lambda: self.revisions.delete_revision(name=name, retry=self._retry),
            )
            self._call(
                "delete",
                service,
                revision,
                lambda: self._wait(op, "delete", service, revision, timeout_s),
            )
        except gexc.NotFound:
            logger.info("service %s: revision %s was already deleted", service, revision)
            return
        logger.info("service %s: revision %s deleted", service, revision)

    def delete_service(self, service: str, timeout_s: float = 120) -> None:
        """Delete a service and its revisions; a missing one is fine."""
        name = self.config.service_name(service)
        try:
            op = self._call(
                "delete",
                service,
                None,
                lambda: self.services.delete_service(name=name, retry=self._retry),
            )
            self._call(
                "delete", service, None, lambda: self._wait(op, "delete", service, None, timeout_s)
            )
        except gexc.NotFound:
            return
        logger.info("service %s deleted", service)

    def get_revision_logs(
        self,
        service: str,
        revision: str,
        since: datetime | float | None = None,
        query: str | None = None,
        limit: int = 200,
    ) -> list[LogEntry]:
        """The newest `limit` log lines of a revision after `since`, containing `query`."""
        if not self.config.is_local:
            # TODO: read Cloud Logging (google-cloud-logging) for Google; until then the
            # portal shows no revision logs for services on Google Cloud Run.
            raise NotImplementedError(
                f"service {service}: revision logs come from Cloud Logging on Google Cloud Run, "
                "which this adapter does not read yet; open the revision's log_uri instead"
            )
        if isinstance(since, datetime):
            # A datetime holds whole microseconds, rounded: without this nudge the entry
            # whose timestamp was passed back as `since` would be returned again.
            since = since.timestamp() + 1e-6
        params: dict[str, Any] = {"limit": limit}
        if since is not None:
            params["since"] = f"{since:.6f}"
        if query:
            params["q"] = query
        url = f"{self.config.run_http_base}/v2/{self.config.revision_name(service, revision)}:logs"

        def fetch() -> dict:
            response = requests.get(url, params=params, timeout=10)
            if response.status_code == 404:
                raise gexc.NotFound(f"revision {revision} of service {service} not found")
            if response.status_code >= 400:
                raise gexc.from_http_response(response)
            return response.json()

        body = self._call("read logs", service, revision, lambda: self._retry(fetch)())
        return [
            LogEntry(_parse_time(e["timestamp"]), e.get("stream", ""), e.get("text", ""))
            for e in body.get("entries", [])
        ]


def _parse_time(value: Any) -> datetime:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, tz=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
