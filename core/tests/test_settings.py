"""Settings from the environment: strict helpers that name the variable they refuse."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from ops_portal.envconf import database_from_url, env_bool, env_int, env_list, env_str

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", True), ("Yes", True), ("off", False), ("", False)]
)
def test_env_bool_reads_the_usual_spellings(raw, expected, monkeypatch):
    monkeypatch.setenv("OPS_TEST_FLAG", raw)

    assert env_bool("OPS_TEST_FLAG") is expected


def test_env_bool_refuses_anything_else_naming_the_variable(monkeypatch):
    monkeypatch.setenv("OPS_TEST_FLAG", "maybe")

    with pytest.raises(ImproperlyConfigured) as caught:
        env_bool("OPS_TEST_FLAG")

    assert str(caught.value) == "OPS_TEST_FLAG: expected true/false (1/0, yes/no), got 'maybe'"


def test_env_int_refuses_a_non_integer_and_a_too_small_value(monkeypatch):
    monkeypatch.setenv("OPS_TEST_COUNT", "five")
    with pytest.raises(
        ImproperlyConfigured, match=r"^OPS_TEST_COUNT: expected an integer, got 'five'$"
    ):
        env_int("OPS_TEST_COUNT", 5)

    monkeypatch.setenv("OPS_TEST_COUNT", "0")
    with pytest.raises(ImproperlyConfigured, match=r"^OPS_TEST_COUNT: expected at least 1, got 0$"):
        env_int("OPS_TEST_COUNT", 5, minimum=1)

    monkeypatch.setenv("OPS_TEST_COUNT", "")
    assert env_int("OPS_TEST_COUNT", 5) == 5


def test_a_secret_is_read_from_name_file(tmp_path, monkeypatch):
    secret = tmp_path / "secret_key"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("OPS_TEST_SECRET", "from-the-environment")
    monkeypatch.setenv("OPS_TEST_SECRET_FILE", str(secret))

    assert env_str("OPS_TEST_SECRET") == "from-a-file"
    assert env_list("OPS_TEST_SECRET") == ["from-a-file"]


def test_an_unreadable_name_file_is_named(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    monkeypatch.setenv("OPS_TEST_SECRET_FILE", str(missing))

    with pytest.raises(ImproperlyConfigured, match=f"^OPS_TEST_SECRET_FILE: cannot read {missing}"):
        env_str("OPS_TEST_SECRET")


def test_database_url_is_parsed_and_other_schemes_refused():
    db = database_from_url("DATABASE_URL", "postgresql://ops:p%40ss@db.internal:6543/portal")
    assert (db["USER"], db["PASSWORD"], db["HOST"], db["PORT"], db["NAME"]) == (
        "ops",
        "p@ss",
        "db.internal",
        "6543",
        "portal",
    )

    with pytest.raises(ImproperlyConfigured, match="^DATABASE_URL: expected a postgresql:// URL"):
        database_from_url("DATABASE_URL", "mysql://root@localhost/portal")


def _load_settings(**env: str) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "SECRET_KEY",
            "SECRET_KEY_FILE",
            "PRODUCTION",
            "DEBUG",
            "SECRETS_ENCRYPTION_KEYS",
            "SECRETS_ENCRYPTION_KEYS_FILE",
        }
    }
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('loaded')"],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "ops_portal.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_without_a_secret_key_refuses_to_start():
    result = _load_settings(PRODUCTION="1")

    assert result.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY: must be set when PRODUCTION is on" in result.stderr


def test_production_with_a_secret_key_file_and_keys_starts(tmp_path):
    key_file = tmp_path / "secret_key"
    key_file.write_text("a-long-random-production-secret-key-for-the-test")

    result = _load_settings(
        PRODUCTION="1",
        SECRET_KEY_FILE=str(key_file),
        SECRETS_ENCRYPTION_KEYS="6sWzXmXzH2gQ8hWl0mE7r8m4F1m7bKJ3Yl7T9n3a5Sk=",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "loaded"


def test_a_bad_boolean_in_the_environment_stops_the_settings():
    result = _load_settings(DEBUG="sometimes")

    assert result.returncode != 0
    assert "DEBUG: expected true/false (1/0, yes/no), got 'sometimes'" in result.stderr
