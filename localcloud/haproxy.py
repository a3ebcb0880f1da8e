"""The data plane: one HAProxy process (two during a reload) in front of the revisions.

Each service and each tag is a proxy (a frontend on its own port and a backend of the same
name) with one server per revision of the service. Weights and server states change
through the runtime API on the stats socket, which fails no request; the configuration is
rewritten and HAProxy reloaded seamlessly (`-x` takes the listening sockets over from the
old process, `-sf` lets the old process finish its requests) only when proxies or servers
are added or removed. The configuration is always rendered from the state last applied at
runtime, so a reload changes no weight.

HAProxy logs one line per request to its stdout; the reader turns each into a RequestRecord.
"""

from __future__ import annotations

import csv
import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from localcloud.processes import ChildRegistry, LogWriter
from localcloud.requestlog import RequestLog, RequestRecord

logger = logging.getLogger(__name__)

HAPROXY_BINARY = "/usr/sbin/haproxy"
# Accept time (epoch seconds.milliseconds), frontend, server, status, total active time (ms).
LOG_FORMAT = "%Ts.%ms %f %s %ST %Ta"

_GLOBAL = """\
global
    log stdout format raw local0 info
    stats socket {sock} mode 600 level admin expose-fd listeners
    stats timeout 30s
    hard-stop-after 30s
    maxconn 4096

defaults
    mode http
    log global
    log-format "{log_format}"
    option dontlognull
    timeout connect 2s
    timeout client 5m
    timeout server 5m
    timeout queue 30s
    timeout http-keep-alive 10s
    # During a reload the old process keeps serving idle keep-alive connections until their
    # next response (sent with Connection: close), so a client never writes to a socket that
    # is closing under it.
    option idle-close-on-response
    # A request that meets a closing or stopped revision goes to another server instead.
    retries 3
    option redispatch
    retry-on conn-failure empty-response response-timeout
    default-server inter 500 fastinter 200 downinter 300 rise 1 fall 2
"""


@dataclass
class ServerState:
    """A revision's server in one proxy, as last applied."""

    port: int = 1  # 1 until the revision has run: HAProxy needs some address
    weight: int = 0
    enabled: bool = False  # False = maintenance (the revision is not running)


@dataclass
class Proxy:
    """A frontend port and its backend; the service URL or one tag URL."""

    name: str
    port: int
    service: str  # service id, for the request records
    tag: str | None
    servers: dict[str, ServerState] = field(default_factory=dict)


@dataclass
class ProxySpec:
    name: str
    port: int
    service: str
    tag: str | None
    servers: list[str]
    project: str = ""


class HAProxyError(RuntimeError):
    pass


@dataclass
class _Instance:
    proc: subprocess.Popen
    sock: Path
    generation: int


class HAProxy:
    """Runs HAProxy as a child and keeps its proxies, servers and weights as asked."""

    def __init__(
        self,
        state_dir: Path,
        request_log: RequestLog | None,
        registry: ChildRegistry | None = None,
        binary: str = HAPROXY_BINARY,
    ):
        self._dir = state_dir / "haproxy"
        self._dir.mkdir(parents=True, exist_ok=True)
        # Unix socket paths are limited to 108 bytes; test state dirs can be deep.
        self._sock_dir = Path(tempfile.mkdtemp(prefix="localcloud-haproxy-"))
        self._request_log = request_log
        self._registry = registry
        self._binary = binary
        self._lock = threading.RLock()
        self._proxies: dict[str, Proxy] = {}
        # Every proxy name ever served, so lines from a process being replaced still parse.
        self._proxy_routes: dict[str, tuple[str, str | None, str]] = {}
        self._current: _Instance | None = None
        self._instances: list[_Instance] = []  # the current one and any still finishing
        self._generation = 0
        self._stderr_log = LogWriter(state_dir / "logs" / "haproxy.log")
        self._threads: list[threading.Thread] = []

    # -- topology ------------------------------------------------------------------------

    def set_topology(self, specs: list[ProxySpec]) -> None:
        """Make the proxies and their servers exactly these; reload HAProxy if that changed."""
        with self._lock:
            proxies: dict[str, Proxy] = {}
            for spec in specs:
                old = self._proxies.get(spec.name)
                proxy = Proxy(spec.name, spec.port, spec.service, spec.tag)
                for server in spec.servers:
                    state = old.servers.get(server) if old and old.port == spec.port else None
                    proxy.servers[server] = state or self._known_server_state(server)
                proxies[spec.name] = proxy
                self._proxy_routes[spec.name] = (spec.service, spec.tag, spec.project)
            changed = _signature(proxies) != _signature(self._proxies)
            previous, self._proxies = self._proxies, proxies
            if not changed and (self._current is not None or not proxies):
                return
            if not proxies:
                self._stop_instance(self._current)
                self._current = None
                return
            try:
                self._reload()
            except HAProxyError:
                # The running process keeps the old configuration; so does the mirror of it.
                self._proxies = previous
                raise

    def serving_ports(self) -> set[int]:
        """The frontend ports of the running configuration."""
        with self._lock:
            return {p.port for p in self._proxies.values()} if self._current else set()

    def _known_server_state(self, server: str) -> ServerState:
        """A revision's state in another proxy of the same service: a new tag starts as it."""
        for proxy in self._proxies.values():
            if server in proxy.servers:
                state = proxy.servers[server]
                return ServerState(state.port, 0, state.enabled)
        return ServerState()

    def proxies_with(self, server: str) -> list[str]:
        with self._lock:
            return [p.name for p in self._proxies.values() if server in p.servers]

    # -- runtime changes -----------------------------------------------------------------

    def enable_server(self, server: str, port: int, timeout_s: float = 10) -> None:
        """Point every proxy's server at port, take it out of maintenance, wait for UP."""
        with self._lock:
            commands = []
            for proxy in self._proxies.values():
                state = proxy.servers.get(server)
                if state is None:
                    continue
                state.port = port
                state.enabled = True
                commands.append(f"set server {proxy.name}/{server} addr 127.0.0.1 port {port}")
                commands.append(f"set server {proxy.name}/{server} state ready")
            self._run(commands)
        self._wait_for(server, lambda row: row["status"] == "UP", timeout_s, "UP")

    def set_weights(self, weights: dict[tuple[str, str], int]) -> None:
        """Set (proxy, server) weights, raising before lowering so no moment has no server."""
        with self._lock:
            raises, lowers = [], []
            for (proxy_name, server), weight in weights.items():
                proxy = self._proxies.get(proxy_name)
                state = proxy.servers.get(server) if proxy else None
                if state is None or weight == state.weight:
                    continue
                (raises if weight > state.weight else lowers).append(
                    f"set weight {proxy_name}/{server} {weight}"
                )
                state.weight = weight
            # Two commands are not atomic: the raises land before the lowers.
            self._run(raises)
            self._run(lowers)

    def drain(self, server: str, timeout_s: float = 30) -> bool:
        """Send no new requests to server and wait until it has no session; False on timeout."""
        with self._lock:
            commands = []
            for proxy in self._proxies.values():
                state = proxy.servers.get(server)
                if state is not None and state.enabled:
                    # Weight 0 as well: HAProxy keeps a drained server's weight and would use
                    # it again the moment the server is made ready after a cold start.
                    state.weight = 0
                    commands.append(f"set weight {proxy.name}/{server} 0")
                    commands.append(f"set server {proxy.name}/{server} state drain")
            self._run(commands)
        return self._wait_for(server, lambda row: row["scur"] == "0", timeout_s, "drained")

    def disable_server(self, server: str) -> None:
        """Put server in maintenance everywhere (its revision is stopping or stopped)."""
        with self._lock:
            commands = []
            for proxy in self._proxies.values():
                state = proxy.servers.get(server)
                if state is not None and state.enabled:
                    state.enabled = False
                    state.weight = 0
                    commands.append(f"set weight {proxy.name}/{server} 0")
                    commands.append(f"set server {proxy.name}/{server} state maint")
            self._run(commands)

    def _wait_for(self, server: str, ok, timeout_s: float, what: str) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            rows = [r for r in self.stats() if r["svname"] == server]
            with self._lock:
                names = {p.name for p in self._proxies.values() if server in p.servers}
            rows = [r for r in rows if r["pxname"] in names]
            if all(ok(r) for r in rows):
                return True
            if time.monotonic() >= deadline:
                logger.warning("server %s: not %s after %.0f s: %s", server, what, timeout_s, rows)
                return False
            time.sleep(0.05)

    def stats(self) -> list[dict[str, str]]:
        """`show stat` as rows of the CSV, keyed by its header."""
        with self._lock:
            if self._current is None:
                return []
            text = self._command(self._current.sock, "show stat")
        lines = text.splitlines()
        if not lines or not lines[0].startswith("# "):
            return []
        lines[0] = lines[0][2:]
        return list(csv.DictReader(line for line in lines if line))

    def _run(self, commands: list[str]) -> None:
        if not commands or self._current is None:
            return
        answer = self._command(self._current.sock, ";".join(commands))
        refusals = [
            line
            for line in answer.splitlines()
            # `set weight` and `set server state` answer nothing when they succeed;
            # `set server addr` says what it changed.
            if line.strip() and "changed from" not in line and "no need to change" not in line
        ]
        if refusals:
            raise HAProxyError(f"runtime API refused {commands!r}: {' | '.join(refusals)}")

    @staticmethod
    def _command(sock: Path, command: str, timeout_s: float = 10) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout_s)
            conn.connect(str(sock))
            conn.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    # -- processes -----------------------------------------------------------------------

    def render(self, sock: Path) -> str:
        parts = [_GLOBAL.format(sock=sock, log_format=LOG_FORMAT)]
        for proxy in self._proxies.values():
            parts.append(
                f"\nfrontend {proxy.name}\n"
                f"    bind 127.0.0.1:{proxy.port}\n"
                f"    default_backend {proxy.name}\n"
                f"\nbackend {proxy.name}\n"
                f"    balance roundrobin\n"
            )
            for server, state in proxy.servers.items():
                disabled = "" if state.enabled else " disabled"
                parts.append(
                    f"    server {server} 127.0.0.1:{state.port} weight {state.weight} "
                    f"check{disabled}\n"
                )
        return "".join(parts)

    def _reload(self) -> None:
        """Start a new HAProxy on the current state; it takes over from the running one."""
        previous = self._current
        self._generation += 1
        sock = self._sock_dir / f"stats-{self._generation}.sock"
        config = self._dir / "haproxy.cfg"
        config.write_text(self.render(sock))
        argv = [self._binary, "-db", "-f", str(config)]
        if previous is not None and previous.proc.poll() is None:
            argv += ["-x", str(previous.sock), "-sf", str(previous.proc.pid)]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        if self._registry is not None:
            self._registry.add(proc.pid)
        instance = _Instance(proc, sock, self._generation)
        self._instances.append(instance)
        self._watch(instance)

        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                self._join_threads()
                raise HAProxyError(
                    f"haproxy exited with code {proc.returncode}: "
                    + " | ".join(self._stderr_log.tail(5, ("stderr",)))
                )
            try:
                self._command(sock, "show info", timeout_s=1)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    self._stop_instance(instance)
                    raise HAProxyError("haproxy did not open its stats socket in 10 s") from None
                time.sleep(0.02)
        self._current = instance
        logger.info(
            "haproxy: generation %s running as pid %s with %s proxies%s",
            instance.generation,
            proc.pid,
            len(self._proxies),
            f", replacing pid {previous.proc.pid}" if previous else "",
        )

    def _watch(self, instance: _Instance) -> None:
        readers = [
            threading.Thread(target=self._read_requests, args=(instance,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(instance,), daemon=True),
            threading.Thread(target=self._reap, args=(instance,), daemon=True),
        ]
        for thread in readers:
            thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + readers

    def _read_requests(self, instance: _Instance) -> None:
        for raw in iter(instance.proc.stdout.readline, b""):
            line = raw.decode(errors="replace").strip()
            record = self._parse(line)
            if record is None:
                if line:
                    self._stderr_log.write("stdout", line)
                continue
            if self._request_log is not None:
                self._request_log.append(record)

    def _parse(self, line: str) -> RequestRecord | None:
        parts = line.split(" ")
        if len(parts) != 5:
            return None
        accepted, proxy, server, status, active_ms = parts
        route = self._proxy_routes.get(proxy)
        try:
            accepted_s, status_code, latency = float(accepted), int(status), float(active_ms)
        except ValueError:
            return None
        if route is None or status_code <= 0 or latency < 0:
            return None  # not a request line, or the client went away before an answer
        return RequestRecord(
            timestamp=accepted_s + latency / 1000,
            service=route[0],
            revision="" if server == "<NOSRV>" else server,
            tag=route[1],
            status=status_code,
            latency_ms=latency,
            project=route[2],
        )

    def _read_stderr(self, instance: _Instance) -> None:
        for raw in iter(instance.proc.stderr.readline, b""):
            self._stderr_log.write("stderr", raw.decode(errors="replace"))

    def _reap(self, instance: _Instance) -> None:
        code = instance.proc.wait()
        with self._lock:
            if instance in self._instances:
                self._instances.remove(instance)
        if self._registry is not None:
            self._registry.remove(instance.proc.pid)
        instance.sock.unlink(missing_ok=True)
        logger.info("haproxy: pid %s exited with code %s", instance.proc.pid, code)

    def _stop_instance(self, instance: _Instance | None) -> None:
        if instance is None or instance.proc.poll() is not None:
            return
        try:
            instance.proc.send_signal(signal.SIGTERM)
            instance.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            instance.proc.kill()
            instance.proc.wait()

    def _join_threads(self) -> None:
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(timeout=2)

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._current.proc.pid if self._current else None

    def stop(self) -> None:
        """Stop every HAProxy process this manager started, old generations included."""
        with self._lock:
            instances = list(self._instances)
            self._current = None
        for instance in instances:
            self._stop_instance(instance)
        self._join_threads()
        shutil.rmtree(self._sock_dir, ignore_errors=True)


def _signature(proxies: dict[str, Proxy]) -> list:
    return sorted((p.name, p.port, sorted(p.servers)) for p in proxies.values())
