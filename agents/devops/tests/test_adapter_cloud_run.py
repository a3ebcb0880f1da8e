"""CloudRunAdapter through the real google-cloud-run REST client, against a small stand-in.

The stand-in keeps the Cloud Run Admin API v2 contract the adapter relies on (routes,
long-running operations that finish on the next poll, Ready conditions, traffic statuses,
error bodies) without starting processes; test_adapter_localcloud.py runs the same
operations against the real localcloud.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from google.cloud import run_v2
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, json_format

from agents.devops.cloud_run import CloudRunAdapter, CloudRunError, RevisionNotReady
from agents.devops.platform import PlatformConfig

PARENT = "projects/demo/locations/local"
READY = run_v2.Condition.State.CONDITION_SUCCEEDED
FAILED = run_v2.Condition.State.CONDITION_FAILED
PENDING = run_v2.Condition.State.CONDITION_PENDING
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST


class FakeCloudRun:
    """In-memory Cloud Run: a revision is Ready 0.3 s after it is created, unless its
    environment has EXIT_ON_START, in which case it fails as a crashing container would."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.services: dict[str, run_v2.Service] = {}
        self.revisions: dict[str, run_v2.Revision] = {}
        self.born: dict[str, float] = {}
        self.operations: dict[str, tuple[object, dict | None]] = {}
        self.unavailable_left = 0  # answer this many next requests with 503
        self.requests: list[str] = []

    # --- model ---------------------------------------------------------------------------

    def refresh(self, rev: run_v2.Revision) -> run_v2.Revision:
        env = {e.name: e.value for e in rev.containers[0].env}
        ready = rev.conditions[0]
        if ready.state == PENDING:
            if "EXIT_ON_START" in env:
                ready.state = FAILED
                ready.revision_reason = run_v2.Condition.RevisionReason.HEALTH_CHECK_CONTAINER_ERROR
                ready.message = f"container exited with code {env['EXIT_ON_START']} during startup"
            elif time.time() - self.born[rev.name] >= 0.3:
                ready.state = READY
        return rev

    def add_revision(self, svc: run_v2.Service) -> str:
        rev_id = svc.template.revision or f"{svc.name.rsplit('/', 1)[1]}-{uuid.uuid4().hex[:5]}"
        name = f"{svc.name}/revisions/{rev_id}"
        if name in self.revisions:
            raise ApiFailure(409, "ALREADY_EXISTS", f"revision {rev_id} already exists")
        self.revisions[name] = run_v2.Revision(
            name=name,
            service=svc.name,
            containers=list(svc.template.containers),
            create_time={"seconds": int(time.time()), "nanos": len(self.revisions)},
            conditions=[run_v2.Condition(type_="Ready", state=PENDING)],
        )
        self.born[name] = time.time()
        svc.latest_created_revision = name
        return name

    def resolve(self, svc: run_v2.Service) -> None:
        if sum(t.percent for t in svc.traffic) != 100:
            raise ApiFailure(400, "INVALID_ARGUMENT", "traffic percents must sum to 100")
        ready = [
            n
            for n, r in self.revisions.items()
            if r.service == svc.name and self.refresh(r).conditions[0].state == READY
        ]
        svc.latest_ready_revision = ready[-1] if ready else ""
        statuses = []
        for t in svc.traffic:
            if t.type_ == REVISION and f"{svc.name}/revisions/{t.revision}" not in self.revisions:
                raise ApiFailure(400, "INVALID_ARGUMENT", f"revision {t.revision} not found")
            rev = t.revision if t.type_ == REVISION else svc.latest_ready_revision
            short = svc.name.rsplit("/", 1)[1]
            statuses.append(
                run_v2.TrafficTargetStatus(
                    type_=t.type_,
                    revision=rev.rsplit("/", 1)[-1],
                    percent=t.percent,
                    tag=t.tag,
                    uri=f"http://{t.tag}---{short}.fake" if t.tag else "",
                )
            )
        svc.traffic_statuses = statuses
        svc.uri = f"http://{svc.name.rsplit('/', 1)[1]}.fake"
        svc.terminal_condition = run_v2.Condition(type_="Ready", state=READY)

    def operation(self, result: object, error: dict | None = None) -> dict:
        """A long-running operation that is done when first polled, like a quick deploy."""
        name = f"{PARENT}/operations/{uuid.uuid4().hex}"
        self.operations[name] = (result, error)
        return {"name": name, "done": False}

    def finish(self, name: str) -> dict:
        result, error = self.operations[name]
        op = operations_pb2.Operation(name=name, done=True)
        if error is not None:
            op.error.code, op.error.message = error["code"], error["message"]
        else:
            packed = any_pb2.Any()
            packed.Pack(type(result).pb(result))  # type: ignore[attr-defined]
            op.response.CopyFrom(packed)
        return json_format.MessageToDict(op)

    def failed_revision_error(self, name: str) -> dict | None:
        ready = self.refresh(self.revisions[name]).conditions[0]
        if ready.state == FAILED:
            return {"code": 9, "message": f"Revision {name} is not ready: {ready.message}"}
        return None

    # --- routes --------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, body: dict | None) -> dict:
        self.requests.append(f"{method} {path}")
        if self.unavailable_left > 0:
            self.unavailable_left -= 1
            raise ApiFailure(503, "UNAVAILABLE", "try again")
        m = re.fullmatch(r"/v2/(projects/[^/]+/locations/[^/]+)/services", path)
        if m and method == "POST":
            name = f"{m.group(1)}/services/{query['serviceId'][0]}"
            if name in self.services:
                raise ApiFailure(409, "ALREADY_EXISTS", f"service {name} exists")
            svc = run_v2.Service.from_json(json.dumps(body), ignore_unknown_fields=True)
            svc.name = name
            rev = self.add_revision(svc)
            self.resolve(svc)
            self.services[name] = svc
            return self.operation(svc, self.failed_revision_error(rev))
        m = re.fullmatch(r"/v2/(projects/[^/]+/locations/[^/]+/operations/[^/]+)", path)
        if m and method == "GET":
            return self.finish(m.group(1))
        m = re.fullmatch(r"/v2/(projects/[^/]+/locations/[^/]+/services/[^/]+)", path)
        if m:
            name = m.group(1)
            if name not in self.services:
                raise ApiFailure(404, "NOT_FOUND", f"service {name} not found")
            svc = self.services[name]
            if method == "GET":
                self.resolve(svc)
                return json.loads(run_v2.Service.to_json(svc))
            if method == "DELETE":
                del self.services[name]
                return self.operation(svc)
            if method == "PATCH":
                new = run_v2.Service.from_json(json.dumps(body), ignore_unknown_fields=True)
                error = None
                if new.template.revision != svc.template.revision:
                    svc.template = new.template
                    error = self.failed_revision_error(self.add_revision(svc))
                elif run_v2.RevisionTemplate.to_json(
                    new.template
                ) != run_v2.RevisionTemplate.to_json(svc.template):
                    raise ApiFailure(409, "ALREADY_EXISTS", "template changed, same revision")
                previous = list(svc.traffic)
                svc.traffic = new.traffic
                try:
                    self.resolve(svc)
                except ApiFailure:
                    svc.traffic = previous
                    raise
                return self.operation(svc, error)
        m = re.fullmatch(r"/v2/(projects/[^/]+/locations/[^/]+/services/[^/]+)/revisions", path)
        if m and method == "GET":
            revs = [self.refresh(r) for r in self.revisions.values() if r.service == m.group(1)]
            return {"revisions": [json.loads(run_v2.Revision.to_json(r)) for r in revs]}
        m = re.fullmatch(r"/v2/(projects/.+/revisions/[^/:]+)(:logs)?", path)
        if m:
            name = m.group(1)
            if name not in self.revisions:
                raise ApiFailure(404, "NOT_FOUND", f"revision {name} not found")
            if m.group(2):
                return self.logs(name, query)
            if method == "GET":
                return json.loads(run_v2.Revision.to_json(self.refresh(self.revisions[name])))
            if method == "DELETE":
                svc = self.services[self.revisions[name].service]
                rev_id = name.rsplit("/", 1)[1]
                if any(t.revision == rev_id for t in svc.traffic_statuses):
                    raise ApiFailure(400, "FAILED_PRECONDITION", f"{rev_id} serves traffic")
                return self.operation(self.revisions.pop(name))
        raise ApiFailure(404, "NOT_FOUND", f"no route {method} {path}")

    def logs(self, name: str, query: dict) -> dict:
        born = self.born[name]
        entries = [
            {"timestamp": born + 0.1, "stream": "stderr", "text": "listening on port 8080"},
            {"timestamp": born + 0.2, "stream": "stdout", "text": "GET / 200"},
        ]
        since = float(query.get("since", ["0"])[0])
        needle = query.get("q", [""])[0]
        limit = int(query.get("limit", ["1000"])[0])
        picked = [e for e in entries if e["timestamp"] > since and needle in e["text"]]
        return {"entries": picked[-limit:]}


class ApiFailure(Exception):
    def __init__(self, http: int, status: str, message: str):
        super().__init__(message)
        self.http, self.status, self.message = http, status, message


def _handler(fake: FakeCloudRun) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            try:
                with fake.lock:
                    status, answer = (
                        200,
                        fake.handle(self.command, url.path, parse_qs(url.query), body),
                    )
            except ApiFailure as exc:
                status = exc.http
                answer = {"error": {"code": exc.http, "status": exc.status, "message": exc.message}}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _serve  # noqa: N815

        def log_message(self, format: str, *args) -> None:  # noqa: A002
            pass

    return Handler


@pytest.fixture()
def fake() -> Iterator[FakeCloudRun]:
    yield FakeCloudRun()


@pytest.fixture()
def adapter(fake: FakeCloudRun) -> Iterator[CloudRunAdapter]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = PlatformConfig(
        kind="localcloud",
        project="demo",
        region="local",
        run_endpoint=f"http://127.0.0.1:{server.server_address[1]}",
    )
    yield CloudRunAdapter(config)
    server.shutdown()
    server.server_close()


COMMAND = ["python", "examples/demo_service.py"]


def test_it_creates_the_service_with_all_traffic_on_the_first_revision(adapter):
    result = adapter.create_revision("web", "web-v1", COMMAND, env={"VERSION": "1"})

    state = adapter.get_service_state("web")
    assert result.created_service is True
    assert result.service_uri == "http://web.fake"
    assert [(t.revision, t.percent) for t in state.traffic] == [("web-v1", 100)]
    assert state.revisions[0].ready
    assert state.revisions[0].command == ("python", "examples/demo_service.py")
    assert state.revisions[0].env == {"VERSION": "1"}
    assert state.latest_ready_revision == "web-v1"


def test_it_adds_a_revision_at_zero_percent_behind_a_tag(adapter):
    adapter.create_revision("web", "web-v1", COMMAND, env={"VERSION": "1"})

    result = adapter.create_revision("web", "web-v2", COMMAND, env={"VERSION": "2"}, tag="preview")

    state = adapter.get_service_state("web")
    assert result.created_service is False
    assert result.tag_uri == "http://preview---web.fake"
    assert state.percent("web-v1") == 100
    assert state.percent("web-v2") == 0
    assert state.tag_uris == {"preview": "http://preview---web.fake"}
    assert [r.name for r in state.revisions] == ["web-v2", "web-v1"]


def test_it_does_not_deploy_an_existing_revision_twice(adapter, fake):
    adapter.create_revision("web", "web-v1", COMMAND)
    adapter.create_revision("web", "web-v2", COMMAND, tag="preview")

    again = adapter.create_revision("web", "web-v2", COMMAND, tag="preview")

    assert again.tag_uri == "http://preview---web.fake"
    assert sum(1 for r in fake.requests if r.startswith("PATCH")) == 1


def test_it_splits_traffic_and_keeps_tags(adapter):
    adapter.create_revision("web", "web-v1", COMMAND)
    adapter.create_revision("web", "web-v2", COMMAND, tag="preview")

    state = adapter.set_traffic("web", {"web-v1": 90, "web-v2": 10}, tags={"stable": "web-v1"})

    assert state.percent("web-v1") == 90
    assert state.percent("web-v2") == 10
    assert state.tags("web-v2") == ["preview"]
    assert state.tags("web-v1") == ["stable"]
    assert sorted(state.tag_uris) == ["preview", "stable"]


def test_it_removes_a_tag_without_moving_traffic(adapter):
    adapter.create_revision("web", "web-v1", COMMAND)
    adapter.create_revision("web", "web-v2", COMMAND, tag="preview")

    state = adapter.remove_tag("web", "preview")
    again = adapter.remove_tag("web", "preview")

    assert state.tag_uris == {}
    assert state.percent("web-v1") == 100
    assert again.tag_uris == {}


def test_it_deletes_only_revisions_without_traffic(adapter):
    adapter.create_revision("web", "web-v1", COMMAND)
    adapter.create_revision("web", "web-v2", COMMAND, tag="preview")

    with pytest.raises(CloudRunError, match="revision web-v1 still serves 100% of traffic"):
        adapter.delete_revision("web", "web-v1")
    adapter.remove_tag("web", "preview")
    adapter.delete_revision("web", "web-v2")
    adapter.delete_revision("web", "web-v2")  # already gone: nothing to do

    assert [r.name for r in adapter.get_service_state("web").revisions] == ["web-v1"]


def test_it_raises_revision_not_ready_for_a_crashing_revision(adapter):
    adapter.create_revision("web", "web-v1", COMMAND)

    with pytest.raises(RevisionNotReady) as info:
        adapter.create_revision("web", "web-v2", COMMAND, env={"EXIT_ON_START": "3"}, tag="p")

    assert info.value.service == "web"
    assert info.value.revision == "web-v2"
    assert info.value.reason == "HEALTH_CHECK_CONTAINER_ERROR"
    assert "exited with code 3" in str(info.value)
    state = adapter.get_service_state("web")
    assert state.percent("web-v1") == 100
    assert state.tag_uris == {}  # the tag left the failed revision
    assert state.revision("web-v2").failed


def test_it_gives_all_traffic_to_a_revision_after_a_failed_first_one(adapter):
    with pytest.raises(RevisionNotReady):
        adapter.create_revision("web", "web-v1", COMMAND, env={"EXIT_ON_START": "1"})

    result = adapter.create_revision("web", "web-v2", COMMAND, tag="preview")

    state = adapter.get_service_state("web")
    assert result.created_service is False
    assert state.percent("web-v2") == 100
    assert state.tags("web-v2") == ["preview"]


def test_it_retries_unavailable_and_names_the_service_in_other_errors(adapter, fake):
    adapter.create_revision("web", "web-v1", COMMAND)
    fake.unavailable_left = 2

    state = adapter.get_service_state("web")
    with pytest.raises(
        CloudRunError, match="service web: set traffic failed: .*revision web-v9 not found"
    ):
        adapter.set_traffic("web", {"web-v1": 50, "web-v9": 50})
    with pytest.raises(ValueError, match="must sum to 100"):
        adapter.set_traffic("web", {"web-v1": 50})

    assert state.percent("web-v1") == 100
    assert fake.unavailable_left == 0


def test_it_reads_revision_logs(adapter):
    adapter.create_revision("web", "web-v1", COMMAND)

    logs = adapter.get_revision_logs("web", "web-v1")
    grep = adapter.get_revision_logs("web", "web-v1", query="GET", limit=10)
    later = adapter.get_revision_logs("web", "web-v1", since=logs[-1].timestamp)

    assert [(e.stream, e.text) for e in logs] == [
        ("stderr", "listening on port 8080"),
        ("stdout", "GET / 200"),
    ]
    assert [e.text for e in grep] == ["GET / 200"]
    assert later == []


def test_it_refuses_revision_names_cloud_run_would_refuse(adapter):
    with pytest.raises(ValueError, match="must start with 'web-'"):
        adapter.create_revision("web", "v1", COMMAND)


def test_google_logs_are_not_implemented_yet():
    config = PlatformConfig(kind="google", project="demo", region="europe-west1")
    adapter = CloudRunAdapter(config, services=object(), revisions=object())  # type: ignore

    with pytest.raises(NotImplementedError, match="Cloud Logging"):
        adapter.get_revision_logs("web", "web-v1")
