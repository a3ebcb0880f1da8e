"""The small parts of localcloud's data plane: HAProxy's request lines, config, revision logs."""

from __future__ import annotations

import time

import pytest

from localcloud.haproxy import HAProxy, Proxy, ProxySpec, ServerState
from localcloud.processes import (
    LogWriter,
    ProcessSpec,
    RevisionProcess,
    StartupError,
    free_port,
    read_log_entries,
)
from localcloud.requestlog import RequestRecord


def test_haproxy_request_lines_become_request_records(tmp_path):
    proxy = HAProxy(tmp_path, request_log=None)
    proxy._proxy_routes["p.l.web"] = ("web", None, "p")
    proxy._proxy_routes["p.l.web.canary"] = ("web", "canary", "p")

    assert proxy._parse("1790000000.250 p.l.web web-00001-abc 200 12") == RequestRecord(
        timestamp=1790000000.262,
        service="web",
        revision="web-00001-abc",
        tag=None,
        status=200,
        latency_ms=12.0,
        project="p",
    )
    assert proxy._parse("1790000000.250 p.l.web.canary <NOSRV> 503 0").revision == ""
    assert proxy._parse("1790000000.250 p.l.web.canary <NOSRV> 503 0").tag == "canary"
    # Aborted by the client, an unknown proxy, or not a request line at all: no record.
    assert proxy._parse("1790000000.250 p.l.web web-00001-abc -1 -1") is None
    assert proxy._parse("1790000000.250 other web-00001-abc 200 3") is None
    assert proxy._parse("[WARNING] (12) : Proxy p.l.web stopped") is None


def test_haproxy_config_keeps_weights_and_retries_requests(tmp_path):
    proxy = HAProxy(tmp_path, request_log=None)
    # Set directly: set_topology would start HAProxy, and rendering needs no process.
    proxy._proxies["p.l.web"] = Proxy(
        "p.l.web",
        18000,
        "web",
        None,
        {"web-1": ServerState(41000, 90, True), "web-2": ServerState(1, 0, False)},
    )
    config = proxy.render(tmp_path / "stats.sock")
    assert "bind 127.0.0.1:18000" in config
    assert "server web-1 127.0.0.1:41000 weight 90 check\n" in config
    assert "server web-2 127.0.0.1:1 weight 0 check disabled\n" in config
    for line in ("retries 3", "option redispatch", "retry-on conn-failure empty-response"):
        assert line in config
    assert "expose-fd listeners" in config  # what lets a reload take the sockets over


def test_haproxy_reload_keeps_runtime_weights(tmp_path):
    proxy = HAProxy(tmp_path, request_log=None)
    port = free_port()
    try:
        proxy.set_topology([ProxySpec("p.l.web", port, "web", None, ["web-1"])])
        proxy.set_weights({("p.l.web", "web-1"): 70})
        first_pid = proxy.pid
        proxy.set_topology([ProxySpec("p.l.web", port, "web", None, ["web-1", "web-2"])])
        assert proxy.pid != first_pid
        weights = {
            row["svname"]: row["weight"] for row in proxy.stats() if row["pxname"] == "p.l.web"
        }
        assert weights["web-1"] == "70" and weights["web-2"] == "0"
    finally:
        proxy.stop()


def test_revision_logs_are_time_stamped_and_filtered(tmp_path):
    log = LogWriter(tmp_path / "rev.log")
    log.write("stdout", "first line\n")
    middle = time.time()
    time.sleep(0.01)
    log.write("stderr", "Second LINE")
    log.write("stdout", "third")

    entries = read_log_entries(log.path)
    assert [(e.stream, e.text) for e in entries] == [
        ("stdout", "first line"),
        ("stderr", "Second LINE"),
        ("stdout", "third"),
    ]
    assert [e.text for e in read_log_entries(log.path, since=middle)] == ["Second LINE", "third"]
    assert [e.text for e in read_log_entries(log.path, query="line")] == [
        "first line",
        "Second LINE",
    ]
    assert [e.text for e in read_log_entries(log.path, limit=1)] == ["third"]
    assert read_log_entries(tmp_path / "missing.log") == []


def test_process_that_never_listens_fails_its_probe_in_time(tmp_path):
    spec = ProcessSpec(
        argv=["python", "-c", "import time; print('waiting'); time.sleep(30)"],
        env={},
        cwd=None,
        http_probe_path="/healthz",
        startup_timeout_s=0.5,
    )
    process = RevisionProcess("slow-00001-abc", spec, free_port(), LogWriter(tmp_path / "x.log"))
    process.start()
    started = time.monotonic()
    with pytest.raises(StartupError) as raised:
        process.wait_healthy()
    assert "GET /healthz" in str(raised.value) and "0.5 s" in str(raised.value)
    assert "waiting" in str(raised.value)  # the last log lines
    assert time.monotonic() - started < 5
    assert not process.running
