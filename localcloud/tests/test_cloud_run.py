"""localcloud's Cloud Run API through the real google-cloud-run client, and its data plane.

One LocalCloud serves the module (services get their own names); the restart test starts its
own. Every port is picked free, so these tests run beside anyone else's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from google.api_core import exceptions
from google.api_core.future.polling import DEFAULT_POLLING
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2

from localcloud.control import Settings
from localcloud.processes import free_port
from localcloud.server import LocalCloud

REPO = Path(__file__).resolve().parents[2]
PARENT = "projects/demo/locations/local"
POLLING = DEFAULT_POLLING.with_delay(initial=0.05, maximum=0.2, multiplier=1.5).with_timeout(60)
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST


def proxy_range() -> tuple[int, int]:
    # Below the kernel's ephemeral range, so no client socket or revision takes these.
    lo = random.randrange(20000, 30000, 100)
    return lo, lo + 99


def start_cloud(state_dir: Path, proxy_ports: tuple[int, int]) -> LocalCloud:
    settings = Settings(idle_grace_s=1.0, drain_timeout_s=5, stop_timeout_s=5)
    return LocalCloud(state_dir, proxy_ports=proxy_ports, settings=settings).start()


def clients(cloud: LocalCloud) -> tuple[run_v2.ServicesClient, run_v2.RevisionsClient]:
    options = {"api_endpoint": cloud.run_endpoint}
    return (
        run_v2.ServicesClient(
            transport="rest", credentials=AnonymousCredentials(), client_options=options
        ),
        run_v2.RevisionsClient(
            transport="rest", credentials=AnonymousCredentials(), client_options=options
        ),
    )


def template(version: str, **env: str) -> run_v2.RevisionTemplate:
    variables = {"VERSION": version, **env}
    return run_v2.RevisionTemplate(
        containers=[
            run_v2.Container(
                image="local/demo-service",
                command=["python", str(REPO / "examples" / "demo_service.py")],
                env=[run_v2.EnvVar(name=k, value=v) for k, v in variables.items()],
                startup_probe=run_v2.Probe(http_get=run_v2.HTTPGetAction(path="/healthz")),
            )
        ]
    )


def by_revision(revision: str, percent: int, tag: str = "") -> run_v2.TrafficTarget:
    return run_v2.TrafficTarget(type_=REVISION, revision=revision, percent=percent, tag=tag)


def short(name: str) -> str:
    return name.rsplit("/", 1)[1]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    cloud = start_cloud(tmp_path_factory.mktemp("localcloud"), proxy_range())
    yield cloud
    cloud.stop()


@pytest.fixture(scope="module")
def services(cloud):
    return clients(cloud)[0]


@pytest.fixture(scope="module")
def revisions(cloud):
    return clients(cloud)[1]


def deploy(services, service_id: str, version: str, **env: str) -> run_v2.Service:
    """Create the service, or give it a new template; returns it once reconciled."""
    name = f"{PARENT}/services/{service_id}"
    try:
        service = services.get_service(name=name)
    except exceptions.NotFound:
        service = run_v2.Service(template=template(version, **env))
        return services.create_service(
            parent=PARENT, service=service, service_id=service_id
        ).result(polling=POLLING)
    service.template = template(version, **env)
    return services.update_service(service=service).result(polling=POLLING)


def set_traffic(services, name: str, targets: list[run_v2.TrafficTarget]) -> run_v2.Service:
    service = services.get_service(name=name)
    service.traffic = targets
    return services.update_service(service=service).result(polling=POLLING)


def test_deploy_creates_revisions_and_splits_traffic_90_10(services, revisions):
    v1 = deploy(services, "split", "v1")
    assert v1.uri.startswith("http://127.0.0.1:")
    assert v1.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED
    assert requests.get(v1.uri, timeout=5).json()["version"] == "v1"

    v2 = deploy(services, "split", "v2")
    first, second = short(v1.latest_ready_revision), short(v2.latest_ready_revision)
    assert first != second
    assert second.startswith("split-00002-")
    assert [s.revision for s in v2.traffic_statuses] == [second]
    listed = revisions.list_revisions(parent=v2.name)
    assert [short(r.name) for r in listed] == [second, first]

    service = set_traffic(services, v2.name, [by_revision(first, 90), by_revision(second, 10)])
    assert {(s.revision, s.percent) for s in service.traffic_statuses} == {
        (first, 90),
        (second, 10),
    }
    seen = Counter()
    with requests.Session() as session:
        for _ in range(2000):
            answer = session.get(service.uri, timeout=5)
            assert answer.status_code == 200
            seen[answer.json()["version"]] += 1
    assert abs(seen["v1"] / 2000 - 0.90) <= 0.03, seen
    assert abs(seen["v2"] / 2000 - 0.10) <= 0.03, seen


def test_tag_urls_reach_only_their_revision(services):
    blue = deploy(services, "tags", "blue")
    green = deploy(services, "tags", "green")
    blue_id, green_id = short(blue.latest_ready_revision), short(green.latest_ready_revision)

    service = set_traffic(
        services,
        green.name,
        [by_revision(blue_id, 100, tag="stable"), by_revision(green_id, 0, tag="candidate")],
    )
    uris = {s.tag: s.uri for s in service.traffic_statuses}
    assert set(uris) == {"stable", "candidate"}
    assert len({uris["stable"], uris["candidate"], service.uri}) == 3
    for url, version in [(uris["stable"], "blue"), (uris["candidate"], "green")]:
        answers = {requests.get(url, timeout=5).json()["version"] for _ in range(30)}
        assert answers == {version}, url
    assert {requests.get(service.uri, timeout=5).json()["version"] for _ in range(30)} == {"blue"}


def test_revision_that_exits_on_start_is_not_ready_with_its_exit_code(services, revisions):
    service = run_v2.Service(
        template=run_v2.RevisionTemplate(
            containers=[
                run_v2.Container(
                    image="local/crash",
                    command=["python", "-c", "import sys; print('boom'); sys.exit(3)"],
                )
            ]
        )
    )
    op = services.create_service(parent=PARENT, service=service, service_id="crash")
    with pytest.raises(exceptions.FailedPrecondition, match="code 3"):
        op.result(polling=POLLING)

    got = services.get_service(name=f"{PARENT}/services/crash")
    assert got.terminal_condition.state == run_v2.Condition.State.CONDITION_FAILED
    assert got.latest_ready_revision == ""
    revision = revisions.get_revision(name=got.latest_created_revision)
    ready = next(c for c in revision.conditions if c.type_ == "Ready")
    assert ready.state == run_v2.Condition.State.CONDITION_FAILED
    assert "exited with code 3" in ready.message
    assert "boom" in ready.message  # the last log lines say why


def test_failed_deploy_keeps_traffic_on_the_last_ready_revision(services):
    good = deploy(services, "keeps", "good")
    with pytest.raises(exceptions.FailedPrecondition, match="code 4"):
        deploy(services, "keeps", "bad", EXIT_ON_START="4")
    service = services.get_service(name=good.name)
    assert service.latest_ready_revision == good.latest_ready_revision
    assert service.latest_created_revision != good.latest_created_revision
    assert requests.get(service.uri, timeout=5).json()["version"] == "good"


def test_traffic_shifts_under_load_fail_no_request(services):
    first = deploy(services, "shift", "a")
    url = first.uri
    failures: list[str] = []
    versions = Counter()
    stop = threading.Event()

    def fire() -> None:
        # A new connection per request, as many clients do; each one meets the proxy anew.
        while not stop.is_set():
            try:
                answer = requests.get(url, timeout=10)
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code} {answer.text[:100]}")
                else:
                    versions[answer.json()["version"]] += 1
            except requests.RequestException as exc:
                failures.append(repr(exc))

    workers = [threading.Thread(target=fire) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.3)
        second = deploy(services, "shift", "b")  # new revision: HAProxy reloads, LATEST moves
        a, b = short(first.latest_ready_revision), short(second.latest_ready_revision)
        set_traffic(services, second.name, [by_revision(a, 50), by_revision(b, 50)])
        time.sleep(0.3)
        set_traffic(services, second.name, [by_revision(a, 100)])
        time.sleep(1.8)  # b is drained and stopped after the 1 s grace
        set_traffic(services, second.name, [by_revision(b, 100)])  # cold start of b
        time.sleep(0.3)
        set_traffic(services, second.name, [by_revision(a, 10), by_revision(b, 90)])
        time.sleep(0.3)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert failures == []
    assert versions["a"] > 0 and versions["b"] > 0
    assert sum(versions.values()) > 200


def test_idle_revision_is_stopped_and_cold_started_when_it_gets_traffic(services, revisions):
    first = deploy(services, "idle", "one")
    second = deploy(services, "idle", "two")
    old = first.latest_ready_revision

    def active(name: str) -> int:
        revision = revisions.get_revision(name=name)
        return next(c.state for c in revision.conditions if c.type_ == "Active")

    deadline = time.monotonic() + 10
    while active(old) != run_v2.Condition.State.CONDITION_FAILED:
        assert time.monotonic() < deadline, "the idle revision was not stopped"
        time.sleep(0.1)
    ready = next(c for c in revisions.get_revision(name=old).conditions if c.type_ == "Ready")
    assert ready.state == run_v2.Condition.State.CONDITION_SUCCEEDED  # stopped, still Ready

    service = set_traffic(services, second.name, [by_revision(short(old), 100)])
    assert active(old) == run_v2.Condition.State.CONDITION_SUCCEEDED
    assert requests.get(service.uri, timeout=5).json()["version"] == "one"


def test_serving_revision_that_dies_is_started_again(services):
    service = deploy(services, "phoenix", "v1")
    pid = requests.get(service.uri, timeout=5).json()["pid"]
    os.kill(pid, signal.SIGKILL)

    deadline = time.monotonic() + 10
    while True:
        try:
            answer = requests.get(service.uri, timeout=5)
            if answer.status_code == 200 and answer.json()["pid"] != pid:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "the revision was not started again"
        time.sleep(0.1)
    assert answer.json()["version"] == "v1"


def test_invalid_traffic_and_missing_resources_map_to_client_exceptions(services, revisions):
    service = deploy(services, "errors", "v1")
    revision = short(service.latest_ready_revision)

    cases = [
        ([by_revision(revision, 60)], "add up to 100"),
        ([by_revision("errors-99999-zzz", 100)], "not found"),
        ([by_revision(revision, 100, tag="x"), run_v2.TrafficTarget(type_=LATEST, tag="x")], "x"),
    ]
    for targets, message in cases:
        service.traffic = targets
        # Over REST the client maps by HTTP status: 400 is BadRequest, which InvalidArgument
        # (what the gRPC transport raises) derives from; the body says INVALID_ARGUMENT.
        with pytest.raises(exceptions.BadRequest, match=message) as raised:
            services.update_service(service=service)
        assert raised.value.response.json()["error"]["status"] == "INVALID_ARGUMENT"

    with pytest.raises(exceptions.NotFound):
        services.get_service(name=f"{PARENT}/services/nothing-here")
    with pytest.raises(exceptions.NotFound):
        revisions.get_revision(name=f"{service.name}/revisions/errors-99999-zzz")
    with pytest.raises(exceptions.Conflict) as raised:
        services.create_service(parent=PARENT, service=service, service_id="errors")
    assert raised.value.response.json()["error"]["status"] == "ALREADY_EXISTS"

    duplicate = services.get_service(name=service.name)
    duplicate.template = template("v2")
    duplicate.template.revision = revision
    with pytest.raises(exceptions.Conflict, match="already exists"):
        services.update_service(service=duplicate)


def test_update_mask_changes_only_the_named_fields(services):
    service = deploy(services, "masked", "v1")
    patch = run_v2.Service(name=service.name, labels={"team": "ops"}, traffic=[])
    op = services.update_service(
        request=run_v2.UpdateServiceRequest(service=patch, update_mask={"paths": ["labels"]})
    )
    updated = op.result(polling=POLLING)
    assert updated.labels == {"team": "ops"}
    assert updated.latest_ready_revision == service.latest_ready_revision
    assert updated.template.containers[0].command == service.template.containers[0].command


def test_revision_logs_endpoint_filters_by_time_and_text(cloud, services):
    service = deploy(services, "logs", "v1")
    url = f"{cloud.run_endpoint}/v2/{service.latest_ready_revision}:logs"
    entries = requests.get(url, timeout=5).json()["entries"]
    assert any("listening on port" in e["text"] for e in entries)
    assert {e["stream"] for e in entries} >= {"stderr", "localcloud"}

    last = entries[-1]["timestamp"]
    assert requests.get(url, params={"since": last}, timeout=5).json()["entries"] == []
    found = requests.get(url, params={"q": "LISTENING", "limit": 1}, timeout=5).json()["entries"]
    assert len(found) == 1 and "listening" in found[0]["text"]


def test_requests_are_recorded_for_monitoring(cloud, services):
    service = deploy(services, "recorded", "v1")
    for _ in range(5):
        requests.get(service.uri, timeout=5)
    deadline = time.monotonic() + 5
    while True:
        records = cloud.request_log.query(0, time.time() + 1, service="recorded")
        if len(records) >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(records) == 5
    assert {(r.revision, r.status, r.tag) for r in records} == {
        (short(service.latest_ready_revision), 200, None)
    }
    assert all(r.latency_ms >= 0 for r in records)


def test_delete_service_and_revision(services, revisions):
    first = deploy(services, "doomed", "v1")
    second = deploy(services, "doomed", "v2")
    with pytest.raises(exceptions.BadRequest, match="receiving traffic"):
        revisions.delete_revision(name=second.latest_created_revision)
    deleted = revisions.delete_revision(name=first.latest_ready_revision).result(polling=POLLING)
    assert deleted.name == first.latest_ready_revision
    assert [r.name for r in revisions.list_revisions(parent=second.name)] == [
        second.latest_created_revision
    ]

    services.delete_service(name=second.name).result(polling=POLLING)
    with pytest.raises(exceptions.NotFound):
        services.get_service(name=second.name)
    with pytest.raises(requests.ConnectionError):
        requests.get(second.uri, timeout=2)


def test_restart_keeps_services_and_serving(tmp_path):
    ports = proxy_range()
    cloud = start_cloud(tmp_path, ports)
    try:
        services, _ = clients(cloud)
        deploy(services, "durable", "v1")
        service = deploy(services, "durable", "v2")
        service = set_traffic(
            services,
            service.name,
            [
                run_v2.TrafficTarget(type_=LATEST, percent=100),
                by_revision(short(service.latest_ready_revision), 0, tag="pinned"),
            ],
        )
    finally:
        cloud.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(service.uri, timeout=2)

    cloud = start_cloud(tmp_path, ports)
    try:
        services, _ = clients(cloud)
        again = services.get_service(name=service.name)
        assert again.uri == service.uri
        assert list(again.traffic_statuses) == list(service.traffic_statuses)
        assert requests.get(service.uri, timeout=5).json()["version"] == "v2"
        tag_uri = next(s.uri for s in again.traffic_statuses if s.tag == "pinned")
        assert requests.get(tag_uri, timeout=5).json()["version"] == "v2"
        updated = deploy(services, "durable", "v3")
        assert short(updated.latest_ready_revision).startswith("durable-00003-")
        assert requests.get(updated.uri, timeout=5).json()["version"] == "v3"
    finally:
        cloud.stop()


def test_restart_moves_a_service_whose_port_was_taken(tmp_path):
    ports = proxy_range()
    cloud = start_cloud(tmp_path, ports)
    try:
        service = deploy(clients(cloud)[0], "moved", "v1")
    finally:
        cloud.stop()
    port = int(service.uri.rsplit(":", 1)[1])

    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        cloud = start_cloud(tmp_path, ports)
        try:
            moved = clients(cloud)[0].get_service(name=service.name)
            assert moved.uri != service.uri
            assert requests.get(moved.uri, timeout=5).json()["version"] == "v1"
        finally:
            cloud.stop()


def test_command_line_serves_until_sigterm(tmp_path):
    run_port, lo = free_port(), proxy_range()[0]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localcloud",
            "--state-dir",
            str(tmp_path),
            "--run-port",
            str(run_port),
            "--monitoring-port",
            "0",
            "--proxy-port-range",
            f"{lo}-{lo + 9}",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = requests.get(f"http://127.0.0.1:{run_port}/localcloud/healthz", timeout=1)
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "localcloud did not start"
                time.sleep(0.1)
        assert answer.json() == {"status": "ok"}
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{run_port}" in out
    assert json.loads((tmp_path / "state.json").read_text())["services"] == []
