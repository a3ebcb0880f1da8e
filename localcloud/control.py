"""The control plane: services, revisions, traffic and operations, as Cloud Run keeps them.

A request changes the spec (the service's template and traffic) at once and answers with a
long-running operation; a reconcile per service then brings the world to the spec, like
Cloud Run's own controllers:

1. start the revisions created by the spec and wait for their startup probe (Ready or not),
2. resolve the traffic targets (LATEST is the latest Ready revision) into routes,
3. apply the routes to HAProxy: new proxies or servers by a seamless reload, cold starts of
   revisions that get traffic while stopped, then weights, raised before lowered,
4. record the observed generation and finish the operations waiting for it.

A background loop stops revisions that have had neither traffic nor a tag for the grace
period (draining them first) and restarts serving revisions whose process died.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import string
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from google.api import launch_stage_pb2
from google.cloud import run_v2
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, field_mask_pb2, json_format, timestamp_pb2
from google.rpc import status_pb2

from localcloud import errors
from localcloud.haproxy import HAProxy, HAProxyError, ProxySpec
from localcloud.processes import (
    ChildRegistry,
    LogWriter,
    ProcessSpec,
    RevisionProcess,
    StartupError,
    free_port,
    port_is_free,
    read_log_entries,
)

logger = logging.getLogger(__name__)

LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
State = run_v2.Condition.State
Severity = run_v2.Condition.Severity

# The fields of a Service a client sets; the others are output only and ours to fill.
SPEC_FIELDS = frozenset(
    {
        "description",
        "labels",
        "annotations",
        "client",
        "client_version",
        "ingress",
        "launch_stage",
        "binary_authorization",
        "template",
        "traffic",
        "scaling",
        "invoker_iam_disabled",
        "default_uri_disabled",
        "iap_enabled",
        "custom_audiences",
        "build_config",
        "threat_detection_enabled",
    }
)
SERVICE_ID = re.compile(r"^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$")
TAG = re.compile(r"^[a-z]([-a-z0-9]{0,44}[a-z0-9])?$")


@dataclass
class Settings:
    """Timings of the control plane; tests make them short."""

    idle_grace_s: float = 60  # how long a revision without traffic or tag keeps running
    startup_timeout_s: float = 60  # default startup probe budget
    drain_timeout_s: float = 30
    stop_timeout_s: float = 10  # SIGTERM to SIGKILL
    loop_interval_s: float = 0.2


@dataclass
class Route:
    """One applied traffic target, its revision resolved."""

    type: int
    revision: str  # revision id
    percent: int
    tag: str = ""


@dataclass
class ServiceState:
    service: run_v2.Service
    port: int
    tag_ports: dict[str, int] = field(default_factory=dict)
    revision_counter: int = 0
    routes: list[Route] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one reconcile at a time
    deleted: bool = False

    @property
    def service_id(self) -> str:
        return self.service.name.rsplit("/", 1)[1]


@dataclass
class RevisionState:
    revision: run_v2.Revision
    log: LogWriter
    process: RevisionProcess | None = None
    idle_since: float | None = None
    crashes: int = 0
    restart_after: float | None = None  # set when the process died while it should serve

    @property
    def revision_id(self) -> str:
        return self.revision.name.rsplit("/", 1)[1]

    @property
    def service_name(self) -> str:
        return self.revision.service

    def ready_condition(self) -> run_v2.Condition | None:
        return next((c for c in self.revision.conditions if c.type_ == "Ready"), None)

    @property
    def is_ready(self) -> bool:
        cond = self.ready_condition()
        return cond is not None and cond.state == State.CONDITION_SUCCEEDED

    @property
    def is_failed(self) -> bool:
        cond = self.ready_condition()
        return cond is not None and cond.state == State.CONDITION_FAILED

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running


@dataclass
class _Operation:
    pb: operations_pb2.Operation
    service: str | None = None
    generation: int = 0  # the service generation whose reconcile finishes this operation


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def _copy(message):
    return type(message).deserialize(type(message).serialize(message))


def _condition(
    type_: str, state: int, message: str = "", severity: int = 0, **reason
) -> run_v2.Condition:
    return run_v2.Condition(
        type_=type_,
        state=state,
        message=message,
        severity=severity,
        last_transition_time=_now(),
        **reason,
    )


def _set_condition(conditions, new: run_v2.Condition) -> None:
    """Replace the condition of the same type, keeping its transition time if unchanged."""
    for i, old in enumerate(conditions):
        if old.type_ == new.type_:
            if old.state == new.state and old.message == new.message:
                return
            conditions[i] = new
            return
    conditions.append(new)


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(type(message).pb(message))
    return packed


class ControlPlane:
    """Holds and persists the resources; every public method may raise errors.ApiError."""

    def __init__(
        self,
        state_dir: Path,
        haproxy: HAProxy,
        proxy_ports: tuple[int, int],
        settings: Settings | None = None,
        registry: ChildRegistry | None = None,
    ):
        self._state_dir = state_dir
        self._state_path = state_dir / "state.json"
        self._logs_dir = state_dir / "logs"
        self._logs_dir.mkdir(parents=True, exist_ok=True)
        self._haproxy = haproxy
        self._proxy_ports = proxy_ports
        self.settings = settings or Settings()
        self._registry = registry
        self._lock = threading.RLock()  # guards the dicts and messages below; held briefly
        self._topology_lock = threading.Lock()
        self._services: dict[str, ServiceState] = {}
        self._revisions: dict[str, RevisionState] = {}
        # TODO: operations live in memory only; after a restart GetOperation answers NOT_FOUND
        # for an operation started before it.
        self._operations: dict[str, _Operation] = {}
        self._stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loop: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Load the state, bring serving revisions and HAProxy up, start the background loop."""
        self._load()
        with self._topology_lock:
            self._sync_topology_locked()
        services = list(self._services.values())
        starters = [
            threading.Thread(target=self._restore_service, args=(s,), daemon=True) for s in services
        ]
        for thread in starters:
            thread.start()
        for thread in starters:
            thread.join()
        self._loop = threading.Thread(target=self._run_loop, name="localcloud-loop", daemon=True)
        self._loop.start()

    def _restore_service(self, state: ServiceState) -> None:
        with state.lock:
            try:
                self._apply_routes(state, state.routes)
            except _RouteError as exc:
                logger.warning("service %s: cannot restore its traffic: %s", state.service_id, exc)
        self._reconcile(state.service.name)

    def stop(self) -> None:
        """Stop the loop and every revision process; the state stays on disk."""
        self._stop_event.set()
        if self._loop is not None:
            self._loop.join(timeout=5)
        for thread in list(self._threads):
            thread.join(timeout=self.settings.startup_timeout_s)
        with self._lock:
            running = [r for r in self._revisions.values() if r.process is not None]
            self._save()
        stoppers = [
            threading.Thread(target=r.process.stop, args=(self.settings.stop_timeout_s,))
            for r in running
        ]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()

    # -- services ------------------------------------------------------------------------

    def create_service(
        self, parent: str, service_id: str, body: str, validate_only: bool = False
    ) -> operations_pb2.Operation:
        requested = _parse(run_v2.Service, body)
        with self._lock:
            return self._create_locked(parent, service_id, requested, validate_only)

    def _create_locked(
        self, parent: str, service_id: str, requested: run_v2.Service, validate_only: bool
    ) -> operations_pb2.Operation:
        if not SERVICE_ID.match(service_id or ""):
            raise errors.invalid_argument(
                f"service_id {service_id!r} must be 1-49 lowercase letters, digits or hyphens, "
                "starting with a letter and not ending with a hyphen"
            )
        name = f"{parent}/services/{service_id}"
        if name in self._services:
            raise errors.already_exists(f"Resource '{service_id}' already exists.")
        spec = _spec_only(requested)
        spec.name = name
        revision_id = self._new_revision_id_locked(None, service_id, spec.template, counter=1)
        if not spec.traffic:
            spec.traffic = [run_v2.TrafficTarget(type_=LATEST, percent=100)]
        self._validate_traffic_locked(None, spec.traffic, revision_id)
        if validate_only:
            return self._done_operation(spec)

        now = _now()
        spec.uid = str(uuid.uuid4())
        spec.generation = 1
        spec.create_time = now
        spec.update_time = now
        spec.creator = spec.last_modifier = "localcloud"
        spec.launch_stage = spec.launch_stage or launch_stage_pb2.LaunchStage.GA
        state = ServiceState(service=spec, port=self._allocate_port_locked(), revision_counter=1)
        self._services[name] = state
        self._create_revision_locked(state, revision_id)
        self._refresh_service_locked(state)
        op = self._new_operation_locked(state)
        self._save()
        logger.info("service %s: created, port %s, revision %s", name, state.port, revision_id)
        self._kick(name)
        return op

    def update_service(
        self,
        name: str,
        body: str,
        update_mask: str = "",
        allow_missing: bool = False,
        validate_only: bool = False,
    ) -> operations_pb2.Operation:
        requested = _parse(run_v2.Service, body)
        with self._lock:
            state = self._services.get(name)
            if state is None:
                if not allow_missing:
                    raise errors.not_found(f"Resource '{name}' was not found")
                parent, service_id = name.rsplit("/services/", 1)
                return self._create_locked(parent, service_id, requested, validate_only)

            current = _spec_only(state.service)
            if update_mask:
                mask = field_mask_pb2.FieldMask()
                try:
                    mask.FromJsonString(update_mask)
                    merged_pb = run_v2.Service.pb(current)
                    mask.MergeMessage(
                        run_v2.Service.pb(requested),
                        merged_pb,
                        replace_message_field=True,
                        replace_repeated_field=True,
                    )
                except ValueError as exc:
                    raise errors.invalid_argument(f"update_mask: {exc}") from exc
                spec = _spec_only(run_v2.Service.wrap(merged_pb))
            else:
                spec = _spec_only(requested)
            if not spec.traffic:
                spec.traffic = [run_v2.TrafficTarget(type_=LATEST, percent=100)]

            template_changed = run_v2.RevisionTemplate.pb(spec.template) != (
                run_v2.RevisionTemplate.pb(current.template)
            )
            revision_id = None
            if template_changed:
                revision_id = self._new_revision_id_locked(
                    state, state.service_id, spec.template, state.revision_counter + 1
                )
            self._validate_traffic_locked(state, spec.traffic, revision_id)
            if validate_only:
                preview = _copy(state.service)
                _replace_spec(preview, spec)
                return self._done_operation(preview)

            svc = state.service
            _replace_spec(svc, spec)
            svc.generation += 1
            svc.update_time = _now()
            svc.last_modifier = "localcloud"
            if revision_id is not None:
                state.revision_counter += 1
                self._create_revision_locked(state, revision_id)
            self._refresh_service_locked(state)
            op = self._new_operation_locked(state)
            self._save()
            logger.info(
                "service %s: generation %s%s",
                name,
                svc.generation,
                f", new revision {revision_id}" if revision_id else ", traffic or settings",
            )
        self._kick(name)
        return op

    def get_service(self, name: str) -> run_v2.Service:
        with self._lock:
            return _copy(self._service_locked(name).service)

    def list_services(self, parent: str) -> list[run_v2.Service]:
        with self._lock:
            return [
                _copy(s.service)
                for n, s in sorted(self._services.items())
                if n.startswith(parent + "/services/")
            ]

    def delete_service(self, name: str) -> operations_pb2.Operation:
        with self._lock:
            state = self._service_locked(name)
            state.deleted = True
            del self._services[name]
            revisions = [r for r in self._revisions.values() if r.service_name == name]
            for rev in revisions:
                del self._revisions[rev.revision.name]
            snapshot = _copy(state.service)
            snapshot.delete_time = _now()
            op = self._new_operation_locked(None, snapshot)
            self._save()
        logger.info("service %s: deleted with %s revisions", name, len(revisions))

        def teardown() -> None:
            with state.lock:
                for rev in revisions:
                    if rev.process is not None:
                        rev.process.stop(self.settings.stop_timeout_s)
                        rev.process = None
                self._sync_topology()
            self._finish(op.name, response=snapshot)

        self._background(teardown, f"delete-{state.service_id}")
        return op

    # -- revisions -----------------------------------------------------------------------

    def list_revisions(self, service_name: str) -> list[run_v2.Revision]:
        with self._lock:
            self._service_locked(service_name)
            revisions = [
                _copy(r.revision)
                for r in self._revisions.values()
                if r.service_name == service_name
            ]
        # Newest first, as Cloud Run lists them.
        return sorted(revisions, key=lambda r: r.create_time, reverse=True)

    def get_revision(self, name: str) -> run_v2.Revision:
        with self._lock:
            return _copy(self._revision_locked(name).revision)

    def delete_revision(self, name: str) -> operations_pb2.Operation:
        with self._lock:
            rev = self._revision_locked(name)
            state = self._services[rev.service_name]
            if self._serving_locked(state, rev.revision_id):
                raise errors.failed_precondition(
                    f"Revision {rev.revision_id} is receiving traffic or has a tag and cannot "
                    "be deleted; move its traffic and tags first."
                )
            if state.service.latest_created_revision == name:
                raise errors.failed_precondition(
                    f"Revision {rev.revision_id} is the latest created revision of its service "
                    "and cannot be deleted."
                )
            del self._revisions[name]
            snapshot = _copy(rev.revision)
            snapshot.delete_time = _now()
            op = self._new_operation_locked(None, snapshot)
            self._save()
        logger.info("revision %s: deleted", name)

        def teardown() -> None:
            with state.lock:
                if rev.process is not None:
                    self._haproxy.drain(rev.revision_id, self.settings.drain_timeout_s)
                    rev.process.stop(self.settings.stop_timeout_s)
                    rev.process = None
                self._sync_topology()
            self._finish(op.name, response=snapshot)

        self._background(teardown, f"delete-{rev.revision_id}")
        return op

    def revision_logs(
        self, name: str, since: float | None, query: str | None, limit: int
    ) -> list[dict]:
        with self._lock:
            rev = self._revision_locked(name)
            path = rev.log.path
        return [asdict(e) for e in read_log_entries(path, since, query, limit)]

    # -- operations ----------------------------------------------------------------------

    def get_operation(self, name: str) -> operations_pb2.Operation:
        with self._lock:
            op = self._operations.get(name)
            if op is None:
                raise errors.not_found(f"Operation '{name}' was not found")
            copied = operations_pb2.Operation()
            copied.CopyFrom(op.pb)
            return copied

    def _new_operation_locked(
        self, state: ServiceState | None, resource=None
    ) -> operations_pb2.Operation:
        location = (state.service.name if state else resource.name).split("/services/")[0]
        done = [name for name, o in self._operations.items() if o.pb.done]
        for name in done[: max(0, len(done) - 1000)]:
            del self._operations[name]  # the oldest finished ones: nobody polls them any more
        op = operations_pb2.Operation(name=f"{location}/operations/{uuid.uuid4()}")
        op.metadata.CopyFrom(_pack(state.service if state else resource))
        self._operations[op.name] = _Operation(
            op, state.service.name if state else None, state.service.generation if state else 0
        )
        return op

    def _done_operation(self, resource) -> operations_pb2.Operation:
        op = operations_pb2.Operation(name="validate-only", done=True)
        op.metadata.CopyFrom(_pack(resource))
        op.response.CopyFrom(_pack(resource))
        return op

    def _finish(self, op_name: str, response=None, error: errors.ApiError | None = None) -> None:
        with self._lock:
            op = self._operations.get(op_name)
            if op is None or op.pb.done:
                return
            op.pb.done = True
            if response is not None:
                op.pb.metadata.CopyFrom(_pack(response))
            if error is not None:
                op.pb.error.CopyFrom(status_pb2.Status(code=error.rpc_code, message=error.message))
            else:
                op.pb.response.CopyFrom(_pack(response))

    # -- reconcile -----------------------------------------------------------------------

    def _kick(self, name: str) -> None:
        self._background(lambda: self._reconcile(name), "reconcile")

    def _background(self, fn: Callable[[], None], name: str) -> None:
        def run() -> None:
            try:
                fn()
            except Exception:
                logger.exception("background task %s failed", name)

        thread = threading.Thread(target=run, name=name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _reconcile(self, name: str) -> None:
        """Bring one service to its latest generation (the steps in the module docstring)."""
        with self._lock:
            state = self._services.get(name)
        if state is None:
            return
        with state.lock:
            if state.deleted or self._stop_event.is_set():
                return
            with self._lock:
                generation = state.service.generation
                pending = [
                    r
                    for r in self._revisions.values()
                    if r.service_name == name
                    and r.ready_condition() is not None
                    and r.ready_condition().state == State.CONDITION_RECONCILING
                ]

            route_error = None
            try:
                # 1. New revisions start in parallel, each waiting for its startup probe. Their
                # servers are added first (disabled), so each is enabled once it is healthy.
                if pending:
                    self._sync_topology()
                self._start_revisions(pending)

                # 2-3. Routes from the spec, applied only when all their revisions are Ready.
                with self._lock:
                    routes = self._resolve_routes_locked(state)
                self._apply_routes(state, routes)
            except _RouteError as exc:
                route_error = str(exc)
                logger.warning("service %s: traffic not applied: %s", name, route_error)
            except Exception as exc:
                # Whatever went wrong, the operations waiting for this reconcile must end.
                logger.exception("service %s: reconcile failed", name)
                route_error = f"localcloud could not apply the service: {exc}"
            failed_new = [r for r in pending if r.is_failed]

            # 4. Observed generation, conditions, operations.
            with self._lock:
                svc = state.service
                svc.observed_generation = generation
                config_error = None
                if failed_new:
                    rev = failed_new[-1]
                    config_error = (
                        f"Revision '{rev.revision_id}' is not ready and cannot serve traffic. "
                        f"{rev.ready_condition().message}"
                    )
                # A revision that failed says more than the traffic that could not move to it.
                error = config_error or route_error
                self._refresh_service_locked(state, route_error, config_error)
                self._save()
                waiting = [
                    op
                    for op in self._operations.values()
                    if op.service == name and op.generation <= generation and not op.pb.done
                ]
                snapshot = _copy(svc)
            for op in waiting:
                self._finish(
                    op.pb.name,
                    response=snapshot,
                    error=errors.failed_precondition(error) if error else None,
                )
            logger.info(
                "service %s: reconciled generation %s%s",
                name,
                generation,
                f" with error: {error}" if error else "",
            )

    def _resolve_routes_locked(self, state: ServiceState) -> list[Route]:
        revisions = self._service_revisions_locked(state.service.name)
        latest_ready = next((r for r in reversed(revisions) if r.is_ready), None)
        by_id = {r.revision_id: r for r in revisions}
        routes = []
        for target in state.service.traffic:
            if target.type_ == LATEST:
                if latest_ready is None:
                    raise _RouteError(
                        f"Service '{state.service_id}' has no Ready revision to send traffic to."
                    )
                rev = latest_ready
            else:
                rev = by_id.get(target.revision)
                if rev is None:
                    raise _RouteError(f"Revision '{target.revision}' does not exist.")
                if not rev.is_ready:
                    reason = rev.ready_condition().message if rev.is_failed else "not ready yet"
                    raise _RouteError(
                        f"Revision '{rev.revision_id}' is not ready and cannot serve traffic. "
                        f"{reason}"
                    )
            routes.append(Route(int(target.type_), rev.revision_id, target.percent, target.tag))
        return routes

    def _apply_routes(self, state: ServiceState, routes: list[Route]) -> None:
        """Make HAProxy send the service's traffic as routes say; caller holds state.lock."""
        with self._lock:
            for tag in [t for t in state.tag_ports if t not in {r.tag for r in routes}]:
                del state.tag_ports[tag]
            for route in routes:
                if route.tag and route.tag not in state.tag_ports:
                    state.tag_ports[route.tag] = self._allocate_port_locked()
            needed = {r.revision for r in routes if r.percent > 0 or r.tag}
            revisions = {
                r.revision_id: r for r in self._service_revisions_locked(state.service.name)
            }
        try:
            self._sync_topology()
        except HAProxyError as exc:
            raise _RouteError(f"HAProxy could not take the new configuration: {exc}") from exc

        # Cold starts: a revision must be up (and its server UP) before it gets weight.
        cold = [revisions[r] for r in needed if r in revisions and not revisions[r].running]
        self._start_revisions(cold, cold_start=True)
        failed = [r for r in cold if not r.running]
        if failed:
            rev = failed[0]
            cond = rev.ready_condition()
            raise _RouteError(
                f"Revision '{rev.revision_id}' could not be started: "
                f"{cond.message if cond else 'unknown error'}"
            )

        weights: dict[tuple[str, str], int] = {}
        main = _proxy_name(state.service.name)
        for rev_id in revisions:
            weights[(main, rev_id)] = sum(r.percent for r in routes if r.revision == rev_id)
            for tag in state.tag_ports:
                tagged = any(r.tag == tag and r.revision == rev_id for r in routes)
                weights[(_proxy_name(state.service.name, tag), rev_id)] = 100 if tagged else 0
        try:
            self._haproxy.set_weights(weights)
        except HAProxyError as exc:
            raise _RouteError(f"HAProxy refused the weights: {exc}") from exc

        with self._lock:
            state.routes = routes
            now = time.time()
            for rev_id, rev in revisions.items():
                if rev_id in needed:
                    rev.idle_since = None
                elif rev.idle_since is None:
                    rev.idle_since = now
            self._save()
        logger.info(
            "service %s: traffic %s",
            state.service_id,
            ", ".join(f"{r.revision} {r.percent}%{' #' + r.tag if r.tag else ''}" for r in routes),
        )

    def _start_revisions(self, revisions: list[RevisionState], cold_start: bool = False) -> None:
        threads = [
            threading.Thread(target=self._start_revision, args=(r, cold_start), daemon=True)
            for r in revisions
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _start_revision(self, rev: RevisionState, cold_start: bool) -> None:
        """Start the process, wait for its probe, enable its server; record Ready either way."""
        with self._lock:
            spec = self._process_spec(rev.revision)
        process = RevisionProcess(rev.revision_id, spec, free_port(), rev.log, self._registry)
        started = time.monotonic()
        try:
            process.start()
            process.wait_healthy()
        except StartupError as exc:
            process.stop(timeout_s=2)
            self._mark_revision(rev, ready=False, message=str(exc))
            logger.warning("revision %s: failed to start: %s", rev.revision_id, exc)
            return
        rev.process = process
        try:
            self._haproxy.enable_server(rev.revision_id, process.port)
        except (HAProxyError, OSError) as exc:
            logger.warning("revision %s: server not enabled in HAProxy: %s", rev.revision_id, exc)
        self._mark_revision(rev, ready=True, message="")
        logger.info(
            "revision %s: %s in %.2f s",
            rev.revision_id,
            "cold start" if cold_start else "ready",
            time.monotonic() - started,
        )

    def _stop_revision(self, rev: RevisionState, why: str) -> None:
        """Drain the revision's servers, then SIGTERM it; caller holds its service's lock."""
        process = rev.process
        if process is None:
            return
        drained = self._haproxy.drain(rev.revision_id, self.settings.drain_timeout_s)
        rev.log.write("localcloud", f"stopping: {why}")
        process.stop(self.settings.stop_timeout_s)
        self._haproxy.disable_server(rev.revision_id)
        rev.process = None
        with self._lock:
            _set_condition(
                rev.revision.conditions,
                _condition(
                    "Active",
                    State.CONDITION_FAILED,
                    "Revision is stopped: it has no traffic; it starts again when it gets some.",
                    Severity.INFO,
                    revision_reason=run_v2.Condition.RevisionReason.RESERVE,
                ),
            )
            self._save()
        logger.info(
            "revision %s: stopped (%s)%s", rev.revision_id, why, "" if drained else ", not drained"
        )

    def _mark_revision(self, rev: RevisionState, ready: bool, message: str) -> None:
        with self._lock:
            conditions = rev.revision.conditions
            if ready:
                _set_condition(conditions, _condition("Ready", State.CONDITION_SUCCEEDED))
                _set_condition(
                    conditions, _condition("ContainerHealthy", State.CONDITION_SUCCEEDED)
                )
                _set_condition(conditions, _condition("Active", State.CONDITION_SUCCEEDED))
            else:
                reason = run_v2.Condition.RevisionReason.HEALTH_CHECK_CONTAINER_ERROR
                for type_ in ("Ready", "ContainerHealthy"):
                    _set_condition(
                        conditions,
                        _condition(
                            type_,
                            State.CONDITION_FAILED,
                            message,
                            Severity.ERROR,
                            revision_reason=reason,
                        ),
                    )
            rev.revision.reconciling = False
            rev.revision.update_time = _now()
            self._save()

    def _process_spec(self, revision: run_v2.Revision) -> ProcessSpec:
        container = revision.containers[0]
        # TODO: env values from Secret Manager (value_source) are not resolved; such variables
        # are left unset in the revision's process.
        env = {e.name: e.value for e in container.env if "value" in e}
        service_id = revision.service.rsplit("/", 1)[1]
        env.update(
            K_SERVICE=service_id,
            K_REVISION=revision.name.rsplit("/", 1)[1],
            K_CONFIGURATION=service_id,
        )
        probe = container.startup_probe
        http_path = (probe.http_get.path or "/") if "http_get" in probe else None
        timeout = self.settings.startup_timeout_s
        if probe.period_seconds and probe.failure_threshold:
            timeout = probe.initial_delay_seconds + probe.period_seconds * probe.failure_threshold
        return ProcessSpec(
            argv=list(container.command) + list(container.args),
            env=env,
            cwd=container.working_dir or None,
            http_probe_path=http_path,
            startup_timeout_s=timeout,
        )

    # -- background loop -----------------------------------------------------------------

    def _run_loop(self) -> None:
        while not self._stop_event.wait(self.settings.loop_interval_s):
            try:
                self._tick()
            except Exception:
                logger.exception("localcloud loop: tick failed")

    def _tick(self) -> None:
        with self._lock:
            services = list(self._services.values())
        now = time.time()
        for state in services:
            # A busy service is reconciling; it is looked at again on the next tick.
            if not state.lock.acquire(blocking=False):
                continue
            try:
                self._tick_service(state, now)
            finally:
                state.lock.release()

    def _tick_service(self, state: ServiceState, now: float) -> None:
        with self._lock:
            revisions = self._service_revisions_locked(state.service.name)
        for rev in revisions:
            process = rev.process
            serving = self._serving_locked(state, rev.revision_id)
            if process is not None and not process.running and not process.stopping:
                code = process.exit_code
                rev.log.write("localcloud", f"exited with code {code} while serving")
                process.stop()
                self._haproxy.disable_server(rev.revision_id)
                rev.process = None
                rev.crashes += 1
                # Restart at once the first time, then back off so a crash loop stays cheap.
                backoff = min(30.0, 0.5 * 2 ** (rev.crashes - 2)) if rev.crashes > 1 else 0.0
                rev.restart_after = now + backoff
                logger.warning(
                    "revision %s: exited with code %s (crash %s), restart in %.1f s",
                    rev.revision_id,
                    code,
                    rev.crashes,
                    backoff,
                )
            elif process is None and serving and rev.restart_after is not None:
                if now >= rev.restart_after and not self._stop_event.is_set():
                    rev.restart_after = None
                    try:
                        self._apply_routes(state, state.routes)
                    except _RouteError as exc:
                        logger.warning("revision %s: restart failed: %s", rev.revision_id, exc)
            elif process is not None and not serving and rev.idle_since is not None:
                if now - rev.idle_since >= self.settings.idle_grace_s:
                    self._stop_revision(rev, f"no traffic for {self.settings.idle_grace_s:g} s")

    # -- HAProxy topology ----------------------------------------------------------------

    def _sync_topology(self) -> None:
        with self._topology_lock:
            self._sync_topology_locked()

    def _sync_topology_locked(self) -> None:
        """Give HAProxy every service's proxies; a port someone else took is replaced."""
        for _ in range(3):
            try:
                self._haproxy.set_topology(self._proxy_specs())
                return
            except HAProxyError:
                if not self._move_taken_ports():
                    raise

    def _move_taken_ports(self) -> bool:
        """Give a new port to each proxy whose port another process listens on."""
        serving = self._haproxy.serving_ports()
        moved = False
        with self._lock:
            for state in self._services.values():
                if state.port not in serving and not port_is_free(state.port):
                    old, state.port = state.port, self._allocate_port_locked()
                    logger.warning(
                        "service %s: port %s taken, now %s", state.service_id, old, state.port
                    )
                    moved = True
                for tag, port in list(state.tag_ports.items()):
                    if port not in serving and not port_is_free(port):
                        state.tag_ports[tag] = self._allocate_port_locked()
                        logger.warning(
                            "service %s: tag %s port %s taken, now %s",
                            state.service_id,
                            tag,
                            port,
                            state.tag_ports[tag],
                        )
                        moved = True
                if moved:
                    self._refresh_service_locked(state)
            self._save()
        return moved

    def _proxy_specs(self) -> list[ProxySpec]:
        with self._lock:
            specs = []
            for state in self._services.values():
                servers = [
                    r.revision_id for r in self._service_revisions_locked(state.service.name)
                ]
                sid = state.service_id
                project = state.service.name.split("/")[1]
                specs.append(
                    ProxySpec(
                        _proxy_name(state.service.name), state.port, sid, None, servers, project
                    )
                )
                for tag, port in state.tag_ports.items():
                    specs.append(
                        ProxySpec(
                            _proxy_name(state.service.name, tag), port, sid, tag, servers, project
                        )
                    )
        return specs

    # -- helpers -------------------------------------------------------------------------

    def _service_locked(self, name: str) -> ServiceState:
        state = self._services.get(name)
        if state is None:
            raise errors.not_found(f"Resource '{name}' was not found")
        return state

    def _revision_locked(self, name: str) -> RevisionState:
        rev = self._revisions.get(name)
        if rev is None:
            raise errors.not_found(f"Resource '{name}' was not found")
        return rev

    def _service_revisions_locked(self, service_name: str) -> list[RevisionState]:
        """The service's revisions, oldest first."""
        revisions = [r for r in self._revisions.values() if r.service_name == service_name]
        return sorted(revisions, key=lambda r: (r.revision.create_time, r.revision_id))

    def _serving_locked(self, state: ServiceState, revision_id: str) -> bool:
        return any(r.revision == revision_id and (r.percent > 0 or r.tag) for r in state.routes)

    def _new_revision_id_locked(
        self,
        state: ServiceState | None,
        service_id: str,
        template: run_v2.RevisionTemplate,
        counter: int,
    ) -> str:
        if not template.containers:
            raise errors.invalid_argument("template.containers: a container is required")
        if len(template.containers) > 1:
            raise errors.invalid_argument(
                "template.containers: localcloud runs one container per revision"
            )
        if not template.containers[0].command:
            raise errors.invalid_argument(
                "template.containers[0].command: localcloud runs a local command, so the "
                "container must name one (the image is not run)"
            )
        if template.revision:
            if not template.revision.startswith(service_id + "-"):
                raise errors.invalid_argument(
                    f"template.revision {template.revision!r} must start with '{service_id}-'"
                )
            if state is not None and any(
                r.revision_id == template.revision
                for r in self._service_revisions_locked(state.service.name)
            ):
                raise errors.already_exists(
                    f"Revision named '{template.revision}' with different configuration "
                    "already exists."
                )
            return template.revision
        suffix = "".join(random.choices(string.ascii_lowercase, k=3))
        return f"{service_id}-{counter:05d}-{suffix}"

    def _validate_traffic_locked(
        self, state: ServiceState | None, traffic, new_revision: str | None
    ) -> None:
        known = {new_revision} if new_revision else set()
        if state is not None:
            known |= {r.revision_id for r in self._service_revisions_locked(state.service.name)}
        total = 0
        tags: set[str] = set()
        for i, target in enumerate(traffic):
            if not target.type_:
                target.type_ = REVISION if target.revision else LATEST
            if target.type_ == LATEST and target.revision:
                raise errors.invalid_argument(
                    f"traffic[{i}]: a target of type LATEST must not name a revision"
                )
            if target.type_ == REVISION and not target.revision:
                raise errors.invalid_argument(f"traffic[{i}]: a target of type REVISION needs one")
            if target.revision and target.revision not in known:
                raise errors.invalid_argument(
                    f"traffic[{i}]: Revision '{target.revision}' referenced in traffic not found."
                )
            if not 0 <= target.percent <= 100:
                raise errors.invalid_argument(f"traffic[{i}]: percent must be between 0 and 100")
            if target.tag:
                if not TAG.match(target.tag):
                    raise errors.invalid_argument(
                        f"traffic[{i}]: tag {target.tag!r} must be lowercase letters, digits "
                        "or hyphens, starting with a letter"
                    )
                if target.tag in tags:
                    raise errors.invalid_argument(
                        f"traffic[{i}]: tag '{target.tag}' is used more than once"
                    )
                tags.add(target.tag)
            total += target.percent
        if total != 100:
            raise errors.invalid_argument(
                f"Traffic percentages must add up to 100, but they add up to {total}."
            )

    def _create_revision_locked(self, state: ServiceState, revision_id: str) -> RevisionState:
        svc = state.service
        template = svc.template
        now = _now()
        revision = run_v2.Revision(
            name=f"{svc.name}/revisions/{revision_id}",
            uid=str(uuid.uuid4()),
            generation=1,
            labels=template.labels,
            annotations=template.annotations,
            create_time=now,
            update_time=now,
            launch_stage=svc.launch_stage,
            service=svc.name,
            scaling=template.scaling,
            timeout=template.timeout,
            service_account=template.service_account,
            containers=template.containers,
            volumes=template.volumes,
            execution_environment=template.execution_environment,
            max_instance_request_concurrency=template.max_instance_request_concurrency,
            session_affinity=template.session_affinity,
            reconciling=True,
            observed_generation=1,
            log_uri=(self._logs_dir / f"{revision_id}.log").resolve().as_uri(),
            creator="localcloud",
            etag=f'"{uuid.uuid4().hex[:12]}"',
            conditions=[_condition("Ready", State.CONDITION_RECONCILING, "Deploying revision.")],
        )
        rev = RevisionState(revision, LogWriter(self._logs_dir / f"{revision_id}.log"))
        self._revisions[revision.name] = rev
        svc.latest_created_revision = revision.name
        return rev

    def _refresh_service_locked(
        self,
        state: ServiceState,
        route_error: str | None = None,
        config_error: str | None = None,
    ) -> None:
        """Fill the service's output fields from its revisions and applied routes."""
        svc = state.service
        revisions = self._service_revisions_locked(svc.name)
        ready = [r for r in revisions if r.is_ready]
        svc.latest_ready_revision = ready[-1].revision.name if ready else ""
        svc.uri = f"http://127.0.0.1:{state.port}"
        svc.urls = [svc.uri]
        svc.traffic_statuses = [
            run_v2.TrafficTargetStatus(
                type_=route.type,
                revision=route.revision,
                percent=route.percent,
                tag=route.tag,
                uri=f"http://127.0.0.1:{state.tag_ports[route.tag]}"
                if route.tag in state.tag_ports
                else "",
            )
            for route in state.routes
        ]
        svc.reconciling = svc.observed_generation < svc.generation
        svc.etag = f'"{svc.generation}-{svc.observed_generation}"'
        error = config_error or route_error
        if svc.reconciling:
            ready_cond = _condition("Ready", State.CONDITION_RECONCILING, "Deploying.")
        elif error:
            ready_cond = _condition(
                "Ready",
                State.CONDITION_FAILED,
                error,
                Severity.ERROR,
                reason=run_v2.Condition.CommonReason.REVISION_FAILED,
            )
        else:
            ready_cond = _condition("Ready", State.CONDITION_SUCCEEDED)
        if svc.terminal_condition.state != ready_cond.state or (
            svc.terminal_condition.message != ready_cond.message
        ):
            svc.terminal_condition = ready_cond
        if not svc.reconciling:
            _set_condition(
                svc.conditions,
                _condition(
                    "RoutesReady",
                    State.CONDITION_FAILED if route_error else State.CONDITION_SUCCEEDED,
                    route_error or "",
                ),
            )
            latest = revisions[-1] if revisions else None
            config_ok = latest is not None and latest.is_ready
            _set_condition(
                svc.conditions,
                _condition(
                    "ConfigurationsReady",
                    State.CONDITION_SUCCEEDED if config_ok else State.CONDITION_FAILED,
                    "" if config_ok or latest is None else latest.ready_condition().message,
                ),
            )

    def _allocate_port_locked(self) -> int:
        used = set()
        for state in self._services.values():
            used.add(state.port)
            used.update(state.tag_ports.values())
        lo, hi = self._proxy_ports
        for port in range(lo, hi + 1):
            if port not in used and port_is_free(port):
                return port
        raise errors.ApiError(
            "RESOURCE_EXHAUSTED", f"No free port left in the proxy port range {lo}-{hi}."
        )

    # -- persistence ---------------------------------------------------------------------

    def _save(self) -> None:
        with self._lock:
            data = {
                "services": [
                    {
                        "service": json.loads(run_v2.Service.to_json(s.service)),
                        "port": s.port,
                        "tag_ports": s.tag_ports,
                        "revision_counter": s.revision_counter,
                        "routes": [asdict(r) for r in s.routes],
                    }
                    for s in self._services.values()
                ],
                "revisions": [
                    json.loads(run_v2.Revision.to_json(r.revision))
                    for r in self._revisions.values()
                ],
            }
            tmp = self._state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self._state_path)

    def _load(self) -> None:
        if not self._state_path.exists():
            return
        data = json.loads(self._state_path.read_text())
        with self._lock:
            for item in data.get("services", []):
                svc = run_v2.Service.from_json(
                    json.dumps(item["service"]), ignore_unknown_fields=True
                )
                self._services[svc.name] = ServiceState(
                    service=svc,
                    port=item["port"],
                    tag_ports=item.get("tag_ports", {}),
                    revision_counter=item.get("revision_counter", 0),
                    routes=[Route(**r) for r in item.get("routes", [])],
                )
            for item in data.get("revisions", []):
                revision = run_v2.Revision.from_json(json.dumps(item), ignore_unknown_fields=True)
                if revision.service not in self._services:
                    continue
                revision_id = revision.name.rsplit("/", 1)[1]
                log = LogWriter(self._logs_dir / f"{revision_id}.log")
                self._revisions[revision.name] = RevisionState(revision, log)
        logger.info(
            "localcloud state: %s services, %s revisions loaded from %s",
            len(self._services),
            len(self._revisions),
            self._state_path,
        )


class _RouteError(Exception):
    """Traffic cannot be applied; the message goes to the service's Ready condition."""


def _parse(message_type, body: str):
    try:
        return message_type.from_json(body or "{}", ignore_unknown_fields=True)
    except (ValueError, json_format.ParseError) as exc:
        raise errors.invalid_argument(f"Invalid JSON payload: {exc}") from exc


def _spec_only(service: run_v2.Service) -> run_v2.Service:
    pb = run_v2.Service.pb(_copy(service))
    for fd in pb.DESCRIPTOR.fields:
        if fd.name not in SPEC_FIELDS:
            pb.ClearField(fd.name)
    return run_v2.Service.wrap(pb)


def _replace_spec(service: run_v2.Service, spec: run_v2.Service) -> None:
    """Give service the spec fields of spec (which has no others), keeping its status."""
    target = run_v2.Service.pb(service)
    for name in SPEC_FIELDS:
        target.ClearField(name)
    target.MergeFrom(run_v2.Service.pb(spec))


def _proxy_name(service_name: str, tag: str | None = None) -> str:
    """projects/p/locations/l/services/s -> p.l.s (and p.l.s.tag): unique, and readable."""
    parts = service_name.split("/")
    name = f"{parts[1]}.{parts[3]}.{parts[5]}"
    return f"{name}.{tag}" if tag else name
