"""Local processes that play the instances of a revision, and the capture of their logs.

Each captured line is written to `logs/<revision>.log` as `<unix time> <stream> <text>`, the
time being when localcloud read the line; `read_log_entries` reads them back for the API.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# Variables a local process needs to run at all; everything else comes from the revision.
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a process, to tell a leftover child from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


class ChildRegistry:
    """Pids of every child process, kept in a file so a crashed localcloud's children die.

    Children run in their own session (so a signal to the group reaches their own children);
    without this file, a localcloud killed with SIGKILL would leave HAProxy holding its ports.
    """

    def __init__(self, path: Path):
        self._path = path
        self._lock = threading.Lock()
        self._children: dict[int, str] = {}

    def kill_leftovers(self) -> int:
        """SIGKILL the process groups of children a previous run left behind."""
        try:
            recorded = json.loads(self._path.read_text())
        except (OSError, ValueError):
            return 0
        killed = 0
        for pid_text, started in recorded.items():
            pid = int(pid_text)
            if _start_time(pid) != started:
                continue
            logger.warning("child %s left over by a previous run: killing it", pid)
            try:
                os.killpg(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        self._path.unlink(missing_ok=True)
        return killed

    def add(self, pid: int) -> None:
        started = _start_time(pid)
        if started is None:
            return
        with self._lock:
            self._children[pid] = started
            self._save()

    def remove(self, pid: int) -> None:
        with self._lock:
            self._children.pop(pid, None)
            self._save()

    def _save(self) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(p): s for p, s in self._children.items()}))
        os.replace(tmp, self._path)


@dataclass(frozen=True)
class LogEntry:
    timestamp: float
    stream: str  # stdout, stderr, or localcloud for what localcloud says about the process
    text: str


class LogWriter:
    """Appends time-stamped lines to one revision's log file; keeps the last lines in memory."""

    def __init__(self, path: Path, keep: int = 50):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._tail: deque[tuple[str, str]] = deque(maxlen=keep)

    def write(self, stream: str, text: str) -> None:
        text = text.rstrip("\r\n")
        with self._lock:
            self._tail.append((stream, text))
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(f"{time.time():.6f} {stream} {text}\n")

    def tail(self, n: int, streams: tuple[str, ...] = ("stdout", "stderr")) -> list[str]:
        """The last n lines written in these streams (the process's own by default)."""
        with self._lock:
            return [text for stream, text in self._tail if stream in streams][-n:]


def read_log_entries(
    path: Path, since: float | None = None, query: str | None = None, limit: int = 1000
) -> list[LogEntry]:
    """The newest `limit` entries after `since` whose text contains `query` (any case)."""
    if not path.exists():
        return []
    needle = query.lower() if query else None
    found: deque[LogEntry] = deque(maxlen=max(limit, 0))
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.rstrip("\n").split(" ", 2)
            if len(parts) < 2:
                continue
            try:
                ts = float(parts[0])
            except ValueError:
                continue
            text = parts[2] if len(parts) == 3 else ""
            if since is not None and ts <= since:
                continue
            if needle is not None and needle not in text.lower():
                continue
            found.append(LogEntry(ts, parts[1], text))
    return list(found)


class StartupError(Exception):
    """The process did not become healthy; the message says why, for the Ready condition."""


@dataclass(frozen=True)
class ProcessSpec:
    """What to run for a revision."""

    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    http_probe_path: str | None  # startup probe httpGet path, None for a TCP connect probe
    startup_timeout_s: float


class RevisionProcess:
    """One running instance of a revision on its own port."""

    def __init__(
        self,
        revision: str,
        spec: ProcessSpec,
        port: int,
        log: LogWriter,
        registry: ChildRegistry | None = None,
    ):
        self.revision = revision
        self.spec = spec
        self.port = port
        self.log = log
        self._registry = registry
        self._proc: subprocess.Popen | None = None
        self._readers: list[threading.Thread] = []
        self.stopping = False  # set once stop() begins: an exit from then on is expected
        self._stopped = False

    def start(self) -> None:
        argv = list(self.spec.argv)
        # "python" means the interpreter running localcloud: a bare machine may have only
        # python3, and a virtualenv's python is what the example service is tested with.
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
        env.update(self.spec.env)
        env["PORT"] = str(self.port)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.log.write("localcloud", f"starting {argv!r} with PORT={self.port}")
        try:
            self._proc = subprocess.Popen(
                argv,
                env=env,
                cwd=self.spec.cwd or None,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            self.log.write("localcloud", f"cannot start: {exc}")
            raise StartupError(f"The container command could not be started: {exc}") from exc
        if self._registry is not None:
            self._registry.add(self._proc.pid)
        for stream, pipe in (("stdout", self._proc.stdout), ("stderr", self._proc.stderr)):
            reader = threading.Thread(
                target=self._capture,
                args=(stream, pipe),
                name=f"log-{self.revision}-{stream}",
                daemon=True,
            )
            reader.start()
            self._readers.append(reader)
        logger.info("revision %s: started pid %s on port %s", self.revision, self.pid, self.port)

    def _capture(self, stream: str, pipe) -> None:
        for raw in iter(pipe.readline, b""):
            self.log.write(stream, raw.decode("utf-8", errors="replace"))
        pipe.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def exit_code(self) -> int | None:
        return self._proc.poll() if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_healthy(self) -> None:
        """Poll the startup probe until it passes; raise StartupError if it never does."""
        deadline = time.monotonic() + self.spec.startup_timeout_s
        while True:
            code = self.exit_code
            if code is not None:
                self._join_readers()
                self.log.write("localcloud", f"exited with code {code} before becoming healthy")
                raise StartupError(
                    f"The container exited with code {code} before it listened on "
                    f"PORT={self.port}.{self._last_lines()}"
                )
            if self._probe():
                self.log.write("localcloud", f"healthy on port {self.port}")
                return
            if time.monotonic() >= deadline:
                self.stop(timeout_s=2)
                probe = f"GET {self.spec.http_probe_path}" if self.spec.http_probe_path else "TCP"
                raise StartupError(
                    f"The container did not pass its startup probe ({probe} on "
                    f"PORT={self.port}) within {self.spec.startup_timeout_s:g} s."
                    f"{self._last_lines()}"
                )
            time.sleep(0.05)

    def _probe(self) -> bool:
        if self.spec.http_probe_path is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", self.spec.http_probe_path)
            return 200 <= conn.getresponse().status < 400
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def _last_lines(self) -> str:
        lines = self.log.tail(10)
        return (" Last log lines:\n" + "\n".join(lines)) if lines else ""

    def _join_readers(self) -> None:
        for reader in self._readers:
            reader.join(timeout=1)

    def stop(self, timeout_s: float = 10) -> int | None:
        """SIGTERM the process group, SIGKILL it after timeout_s; returns the exit code."""
        proc = self._proc
        if proc is None or self._stopped:
            return proc.returncode if proc else None
        self.stopping = True
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "revision %s: pid %s ignored SIGTERM, killing", self.revision, proc.pid
                )
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        try:
            # Children the process left behind in its group would hold its port and pipes.
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._join_readers()
        if self._registry is not None:
            self._registry.remove(proc.pid)
        self._stopped = True
        self.log.write("localcloud", f"stopped, exit code {proc.returncode}")
        logger.info(
            "revision %s: pid %s stopped (exit %s)", self.revision, proc.pid, proc.returncode
        )
        return proc.returncode
