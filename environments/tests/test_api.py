from datetime import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.models import AuditEvent
from environments import services
from environments.models import ConfigVar, Environment, FreezeWindow, Secret

URL = "/api/v1/environments/"


def fields_of(response) -> set[str]:
    return set(response.json()["error"]["fields"])


# Environments


def test_it_lists_environments_in_order_with_counts(
    staging, production, system_actor, victor, api_for
):
    services.set_config(system_actor, staging, {"LOG_LEVEL": "info", "WORKERS": "2"})
    services.set_secret(system_actor, staging, "DB_PASSWORD", "pw")

    body = api_for(victor).get(URL).json()

    assert body["count"] == 2
    first, second = body["results"]
    assert (first["name"], first["config_count"], first["secret_count"]) == ("staging", 2, 1)
    assert (second["name"], second["protected"], second["frozen"]) == ("production", True, None)
    assert first["platform_settings"]["kind"] == "localcloud"


def test_it_filters_the_list_and_names_a_bad_filter(staging, production, victor, api_for):
    api = api_for(victor)

    assert [e["name"] for e in api.get(URL, {"protected": "true"}).json()["results"]] == [
        "production"
    ]
    assert [e["name"] for e in api.get(URL, {"protected": "false"}).json()["results"]] == [
        "staging"
    ]
    assert [e["name"] for e in api.get(URL, {"name": "stag"}).json()["results"]] == ["staging"]

    response = api.get(URL, {"protected": "maybe", "platform": "aws"})
    assert response.status_code == 400
    assert fields_of(response) == {"protected", "platform"}


def test_the_list_takes_the_same_queries_for_3_or_30_environments(
    db, system_actor, victor, api_for
):
    api = api_for(victor)

    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert api.get(URL).status_code == 200
        return len(queries)

    for i in range(3):
        env = services.create_environment(system_actor, f"env-{i}", order=i + 1)
        services.set_config(system_actor, env, {"A": "1"})
    few = count_queries()
    for i in range(3, 30):
        env = services.create_environment(system_actor, f"env-{i}", order=i + 1)
        services.set_config(system_actor, env, {"A": "1"})
        services.add_freeze_window(
            system_actor, env, "weekly", weekday=0, start_time=time(9), end_time=time(10)
        )
    assert api.get(URL).json()["count"] == 30
    assert count_queries() == few


def test_admin_creates_an_environment(alice, api_for):
    response = api_for(alice).post(
        URL,
        {"name": "qa", "description": "Testers", "platform": "google", "gcp_project": "acme-qa"},
        format="json",
    )

    assert response.status_code == 201, response.json()
    assert response.json()["order"] == 10
    assert response.json()["platform_settings"]["project"] == "acme-qa"
    event = AuditEvent.objects.get(action="environment.create")
    assert event.object_repr == "qa"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "Bad Name"}, "name"),
        ({"name": "parity"}, "name"),
        ({"name": "staging"}, "name"),
        ({}, "name"),
        ({"name": "qa", "order": -1}, "order"),
        ({"name": "qa", "order": 20}, "order"),
        ({"name": "qa", "platform": "aws"}, "platform"),
        ({"name": "qa", "protected": "sometimes"}, "protected"),
        ({"name": "qa", "region": "x" * 51}, "region"),
    ],
)
def test_creating_with_a_bad_field_is_400_naming_it(staging, alice, api_for, body, field):
    response = api_for(alice).post(URL, body, format="json")

    assert response.status_code == 400, response.json()
    assert fields_of(response) == {field}
    assert response.json()["error"]["code"] == "invalid"
    assert Environment.objects.count() == 1


def test_only_an_admin_creates_or_changes_environments(staging, oscar, api_for, token_client):
    assert api_for(oscar).post(URL, {"name": "qa"}, format="json").status_code == 403
    response = api_for(oscar).patch(f"{URL}staging/", {"protected": True}, format="json")
    assert response.status_code == 403
    assert "admin" in response.json()["error"]["message"]
    token = token_client("read", "environments:write")
    assert token.post(URL, {"name": "qa"}, format="json").status_code == 403


def test_admin_updates_an_environment_but_not_its_name(staging, alice, api_for):
    api = api_for(alice)

    response = api.patch(
        f"{URL}staging/", {"protected": True, "region": "europe-west1"}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert (response.json()["protected"], response.json()["region"]) == (True, "europe-west1")
    assert AuditEvent.objects.get(action="environment.update").summary["protected"] == {
        "from": False,
        "to": True,
    }

    response = api.put(f"{URL}staging/", {"name": "staging", "order": 25}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["order"] == 25

    response = api.patch(f"{URL}staging/", {"name": "stage", "order": "x"}, format="json")
    assert response.status_code == 400
    assert fields_of(response) == {"name", "order"}
    assert api.get(f"{URL}nowhere/").status_code == 404


# Config


def test_config_patch_merges_and_null_removes(staging, oscar, api_for):
    api = api_for(oscar)
    url = f"{URL}staging/config/"

    response = api.patch(url, {"variables": {"LOG_LEVEL": "info", "WORKERS": "2"}}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["changed"] == ["LOG_LEVEL", "WORKERS"]

    response = api.patch(url, {"variables": {"WORKERS": None, "TIMEOUT": "30"}}, format="json")
    assert [v["key"] for v in response.json()["variables"]] == ["LOG_LEVEL", "TIMEOUT"]

    api.patch(url, {"variables": {"COLOR": "blue"}, "service": "web"}, format="json")
    assert [v["key"] for v in api.get(url, {"service": "web"}).json()["results"]] == ["COLOR"]
    assert [v["key"] for v in api.get(url, {"service": ""}).json()["results"]] == [
        "LOG_LEVEL",
        "TIMEOUT",
    ]
    assert api.get(url).json()["count"] == 3


def test_config_put_replaces_the_set_of_its_service_scope(staging, oscar, api_for):
    api = api_for(oscar)
    url = f"{URL}staging/config/"
    api.patch(url, {"variables": {"A": "1", "B": "2"}}, format="json")
    api.patch(url, {"variables": {"A": "web"}, "service": "web"}, format="json")

    response = api.put(url, {"variables": {"B": "3", "C": "4"}}, format="json")

    assert response.status_code == 200, response.json()
    assert sorted(response.json()["changed"]) == ["A", "B", "C"]
    assert dict(ConfigVar.objects.filter(service="").values_list("key", "value")) == {
        "B": "3",
        "C": "4",
    }
    assert ConfigVar.objects.filter(service="web", key="A").exists()


@pytest.mark.parametrize(
    "body, fields",
    [
        ({"variables": {"GOOD": "1", "bad-key": "x"}}, {"variables.bad-key"}),
        ({"variables": {"GOOD": "1", "NUMBER": 1}}, {"variables.NUMBER"}),
        ({"variables": ["A"]}, {"variables"}),
        ({}, {"variables"}),
        ({"variables": {"GOOD": "1"}, "service": "Web App"}, {"service"}),
        ({"variables": {"GOOD": "1"}, "override_reason": "x" * 301}, {"override_reason"}),
    ],
)
def test_bad_config_is_400_naming_the_field_and_writes_nothing(
    staging, oscar, api_for, body, fields
):
    response = api_for(oscar).patch(f"{URL}staging/config/", body, format="json")

    assert response.status_code == 400, response.json()
    assert fields_of(response) == fields
    assert not ConfigVar.objects.exists()
    assert not AuditEvent.objects.filter(action="config.set").exists()


def test_a_viewer_reads_config_but_cannot_change_it(staging, victor, api_for):
    api = api_for(victor)
    assert api.get(f"{URL}staging/config/").status_code == 200
    response = api.patch(f"{URL}staging/config/", {"variables": {"A": "1"}}, format="json")
    assert response.status_code == 403
    assert "operator" in response.json()["error"]["message"]
    assert api.get(f"{URL}nowhere/config/").status_code == 404


# Secrets


def test_secrets_are_set_versioned_listed_without_values_and_removed(staging, oscar, api_for):
    api = api_for(oscar)
    url = f"{URL}staging/secrets/"

    first = api.put(url, {"name": "DB_PASSWORD", "value": "one-value"}, format="json")
    second = api.put(url, {"name": "DB_PASSWORD", "value": "two-value"}, format="json")

    assert first.status_code == 200, first.json()
    assert first.json() == {
        "environment": "staging",
        "service": "",
        "name": "DB_PASSWORD",
        "version": 1,
    }
    assert second.json()["version"] == 2
    listed = api.get(url).json()["results"]
    assert [(s["name"], s["version"], s["updated_by"]) for s in listed] == [
        ("DB_PASSWORD", 2, "oscar")
    ]
    assert set(listed[0]) == {"service", "name", "version", "updated_by", "updated_at"}
    assert Secret.objects.get().versions.count() == 2

    removed = api.put(url, {"name": "DB_PASSWORD", "value": None}, format="json")
    assert removed.json()["version"] is None
    assert not Secret.objects.exists()


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "bad-name", "value": "v"}, "name"),
        ({"value": "v"}, "name"),
        ({"name": "TOKEN"}, "value"),
        ({"name": "TOKEN", "value": ""}, "value"),
        ({"name": "TOKEN", "value": "v", "service": "-web"}, "service"),
    ],
)
def test_bad_secret_is_400_naming_the_field(staging, oscar, api_for, body, field):
    response = api_for(oscar).put(f"{URL}staging/secrets/", body, format="json")

    assert response.status_code == 400, response.json()
    assert fields_of(response) == {field}
    assert not Secret.objects.exists()


def test_secrets_need_the_secrets_scope(staging, victor, api_for, token_client):
    body = {"name": "TOKEN", "value": "v"}
    assert api_for(victor).put(f"{URL}staging/secrets/", body, format="json").status_code == 403
    token = token_client("read", "environments:write")
    response = token.put(f"{URL}staging/secrets/", body, format="json")
    assert response.status_code == 403
    assert "secrets:write" in response.json()["error"]["message"]
    token = token_client("secrets:write", name="secrets-agent")
    assert token.put(f"{URL}staging/secrets/", body, format="json").status_code == 200


# Protected environments and freeze windows


def test_a_protected_environment_refuses_an_operator_and_accepts_an_admin(
    production, oscar, alice, api_for
):
    url = f"{URL}production/config/"
    body = {"variables": {"LOG_LEVEL": "warning"}}

    refused = api_for(oscar).patch(url, body, format="json")
    assert refused.status_code == 403
    assert "production is protected" in refused.json()["error"]["message"]
    secret = api_for(oscar).put(
        f"{URL}production/secrets/", {"name": "T", "value": "v"}, format="json"
    )
    assert secret.status_code == 403

    assert api_for(alice).patch(url, body, format="json").status_code == 200
    assert ConfigVar.objects.get(environment=production).value == "warning"


def test_a_freeze_refuses_an_operator_and_needs_an_admins_reason(
    staging, freeze, oscar, alice, api_for
):
    freeze(staging, "launch week")
    url = f"{URL}staging/config/"
    body = {"variables": {"LOG_LEVEL": "debug"}}

    refused = api_for(oscar).patch(url, body, format="json")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "frozen"
    assert "launch week" in refused.json()["error"]["message"]

    no_reason = api_for(alice).patch(url, body, format="json")
    assert no_reason.status_code == 400
    assert fields_of(no_reason) == {"override_reason"}
    assert not ConfigVar.objects.exists()

    allowed = api_for(alice).patch(
        url, {**body, "override_reason": "hotfix for incident 42"}, format="json"
    )
    assert allowed.status_code == 200, allowed.json()
    event = AuditEvent.objects.get(action="config.set")
    assert event.summary["freeze_override"] == "hotfix for incident 42"
    assert event.actor == "alice"


def test_a_frozen_environment_shows_its_window(staging, freeze, victor, api_for):
    window = freeze(staging, "launch week")
    body = api_for(victor).get(f"{URL}staging/").json()
    assert body["frozen"] == {"id": window.pk, "window": window.describe(), "reason": "launch week"}


def test_freeze_windows_are_added_listed_and_lifted_by_an_admin(staging, oscar, alice, api_for):
    url = f"{URL}staging/freeze-windows/"
    once = api_for(oscar).post(
        url,
        {
            "reason": "launch",
            "starts_at": "2031-05-01T08:00:00Z",
            "ends_at": "2031-05-03T08:00:00Z",
        },
        format="json",
    )
    weekly = api_for(oscar).post(
        url,
        {"reason": "Friday", "weekday": 4, "start_time": "15:00", "end_time": "23:59"},
        format="json",
    )

    assert once.status_code == 201, once.json()
    assert (once.json()["kind"], once.json()["active"]) == ("once", False)
    assert weekly.json()["window"] == "every Fri 15:00–23:59 UTC"
    listed = api_for(oscar).get(url).json()["results"]
    assert [w["reason"] for w in listed] == ["launch", "Friday"]

    detail = f"{url}{once.json()['id']}/"
    assert api_for(oscar).delete(detail).status_code == 403
    assert api_for(alice).delete(f"{detail}?reason=launch+moved").status_code == 204
    assert list(FreezeWindow.objects.values_list("reason", flat=True)) == ["Friday"]
    assert AuditEvent.objects.get(action="freeze.remove").summary["reason"] == "launch moved"
    assert api_for(alice).delete(detail).status_code == 404


@pytest.mark.parametrize(
    "body, field",
    [
        ({"starts_at": "2031-05-01T08:00Z", "ends_at": "2031-05-02T08:00Z"}, "reason"),
        ({"reason": "x", "starts_at": "2031-05-01T08:00Z"}, "starts_at"),
        (
            {"reason": "x", "starts_at": "2031-05-02T08:00Z", "ends_at": "2031-05-01T08:00Z"},
            "ends_at",
        ),
        ({"reason": "x", "starts_at": "tomorrow", "ends_at": "2031-05-01T08:00Z"}, "starts_at"),
        ({"reason": "x", "weekday": 9, "start_time": "01:00", "end_time": "02:00"}, "weekday"),
        ({"reason": "x", "weekday": 1, "start_time": "03:00", "end_time": "02:00"}, "end_time"),
        ({"reason": "x", "weekday": 1, "end_time": "02:00"}, "start_time"),
        ({"reason": "x", "weekday": 1, "start_time": "25:00", "end_time": "02:00"}, "start_time"),
    ],
)
def test_a_bad_freeze_window_is_400_naming_the_field(staging, oscar, api_for, body, field):
    response = api_for(oscar).post(f"{URL}staging/freeze-windows/", body, format="json")

    assert response.status_code == 400, response.json()
    assert fields_of(response) == {field}
    assert not FreezeWindow.objects.exists()


# Parity


def test_parity_lists_missing_and_differing_keys_and_secret_versions(
    staging, production, system_actor, victor, api_for
):
    services.set_config(
        system_actor, staging, {"LOG_LEVEL": "debug", "ONLY_STAGING": "1", "SAME": "x"}
    )
    services.set_config(
        system_actor, production, {"LOG_LEVEL": "warning", "ONLY_PROD": "1", "SAME": "x"}
    )
    services.set_secret(system_actor, staging, "DB_PASSWORD", "a")
    services.set_secret(system_actor, staging, "DB_PASSWORD", "b")
    services.set_secret(system_actor, production, "DB_PASSWORD", "c")
    services.set_secret(system_actor, production, "API_KEY", "d")

    response = api_for(victor).get(f"{URL}parity/", {"a": "staging", "b": "production"})

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["missing_in_b"] == [{"service": None, "key": "ONLY_STAGING", "kind": "config"}]
    assert body["missing_in_a"] == [
        {"service": None, "key": "API_KEY", "kind": "secret"},
        {"service": None, "key": "ONLY_PROD", "kind": "config"},
    ]
    assert body["differs"] == [
        {
            "service": None,
            "key": "DB_PASSWORD",
            "kind": "secret",
            "a_version": "v2",
            "b_version": "v1",
        },
        {"service": None, "key": "LOG_LEVEL", "kind": "config", "a": "debug", "b": "warning"},
    ]
    assert body["same"] == 1


@pytest.mark.parametrize(
    "params, field",
    [
        ({"b": "production"}, "a"),
        ({"a": "staging"}, "b"),
        ({"a": "nowhere", "b": "production"}, "a"),
        ({"a": "staging", "b": "nowhere"}, "b"),
        ({"a": "staging", "b": "staging"}, "b"),
    ],
)
def test_parity_without_a_known_a_or_b_is_400_naming_it(
    staging, production, victor, api_for, params, field
):
    response = api_for(victor).get(f"{URL}parity/", params)

    assert response.status_code == 400
    assert fields_of(response) == {field}


# Promotion


def test_promotion_dry_run_shows_the_diff_and_writes_nothing(
    staging, production, system_actor, alice, api_for
):
    services.set_config(system_actor, staging, {"LOG_LEVEL": "info", "WORKERS": "4", "X": "1"})
    services.set_config(system_actor, production, {"LOG_LEVEL": "warning", "X": "1"})
    url = f"{URL}production/config/promote/"
    body = {"source": "staging", "keys": ["LOG_LEVEL", "WORKERS", "X"], "dry_run": True}

    preview = api_for(alice).post(url, body, format="json")

    assert preview.status_code == 200, preview.json()
    assert preview.json() == {
        "source": "staging",
        "target": "production",
        "service": None,
        "dry_run": True,
        "changes": [
            {"key": "LOG_LEVEL", "from": "warning", "to": "info"},
            {"key": "WORKERS", "from": None, "to": "4"},
        ],
    }
    assert services.resolve_config(production) == {"LOG_LEVEL": "warning", "X": "1"}

    applied = api_for(alice).post(url, {**body, "dry_run": False}, format="json")
    assert applied.status_code == 200
    assert services.resolve_config(production) == {"LOG_LEVEL": "info", "WORKERS": "4", "X": "1"}
    promote = AuditEvent.objects.get(action="config.promote")
    assert promote.summary == {"from": "staging", "keys": ["LOG_LEVEL", "WORKERS"]}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"keys": ["A"]}, "source"),
        ({"source": "nowhere", "keys": ["A"]}, "source"),
        ({"source": "staging"}, "keys"),
        ({"source": "staging", "keys": []}, "keys"),
        ({"source": "staging", "keys": ["A", "bad-key"]}, "keys.1"),
        ({"source": "staging", "keys": ["MISSING"]}, "keys"),
        ({"source": "staging", "keys": ["A"], "service": "Bad"}, "service"),
        ({"source": "staging", "keys": ["A"], "dry_run": "perhaps"}, "dry_run"),
        ({"source": "production", "keys": ["A"]}, "target"),
    ],
)
def test_a_bad_promotion_is_400_naming_the_field(
    staging, production, system_actor, alice, api_for, body, field
):
    services.set_config(system_actor, staging, {"A": "1"})

    response = api_for(alice).post(f"{URL}production/config/promote/", body, format="json")

    assert response.status_code == 400, response.json()
    assert fields_of(response) == {field}
    assert not ConfigVar.objects.filter(environment=production).exists()


def test_promotion_into_a_frozen_or_protected_target_follows_the_rules(
    staging, production, system_actor, freeze, oscar, api_for
):
    services.set_config(system_actor, staging, {"A": "1"})
    qa = services.create_environment(system_actor, "qa", order=25)
    freeze(qa)
    body = {"source": "staging", "keys": ["A"]}

    frozen = api_for(oscar).post(f"{URL}qa/config/promote/", body, format="json")
    protected = api_for(oscar).post(f"{URL}production/config/promote/", body, format="json")

    assert (frozen.status_code, frozen.json()["error"]["code"]) == (409, "frozen")
    assert protected.status_code == 403
    assert not ConfigVar.objects.exclude(environment=staging).exists()


def test_the_schema_describes_the_request_bodies(victor, api_for):
    response = api_for(victor).get("/api/v1/schema/", {"format": "json"})

    assert response.status_code == 200
    schema = response.json()
    components = schema["components"]["schemas"]
    assert set(components["PromoteRequest"]["required"]) == {"source", "keys"}
    assert set(components["SecretWriteRequest"]["properties"]) == {
        "name",
        "value",
        "service",
        "override_reason",
    }
    assert "variables" in components["ConfigWriteRequest"]["required"]
    assert "reason" in components["FreezeWindowRequest"]["required"]
    promote = schema["paths"]["/api/v1/environments/{name}/config/promote/"]["post"]
    assert promote["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PromoteRequest"
    }
