"""A secret's value, once set, never comes back out: not in a page, an API response, a log
line or an audit event, whichever way it was set."""

import logging

from core.models import AuditEvent, Job, JobLogEntry
from environments import services

UI_VALUE = "ui-secret-value-1f3a9"
API_VALUE = "api-secret-value-9c2b7"
ACTION_VALUE = "action-secret-value-7d4e5"
REJECTED_VALUE = "rejected-secret-value-5e6f1"
VALUES = (UI_VALUE, API_VALUE, ACTION_VALUE, REJECTED_VALUE)


def assert_no_secret_in(where: str, text: str) -> None:
    for value in VALUES:
        assert value not in text, f"a secret value leaked into {where}"


def test_a_secret_value_never_leaves_the_portal(
    staging,
    production,
    oscar,
    client_for,
    api_for,
    token_client,
    run_worker,
    django_capture_on_commit_callbacks,
    caplog,
):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django.db.backends")
    client, api = client_for(oscar), api_for(oscar)

    # 1. Set one value through each way in (and one the form rejects).
    response = client.post(
        "/environments/staging/secrets/", {"name": "UI_SECRET", "value": UI_VALUE}
    )
    assert response.status_code == 302
    rejected = client.post(
        "/environments/staging/secrets/", {"name": "bad-name", "value": REJECTED_VALUE}
    )
    assert rejected.status_code == 400
    assert_no_secret_in("the form's error page", rejected.content.decode())

    response = api.put(
        "/api/v1/environments/staging/secrets/",
        {"name": "API_SECRET", "value": API_VALUE},
        format="json",
    )
    assert response.status_code == 200
    assert_no_secret_in("the PUT response", response.content.decode())
    rejected = api.put(
        "/api/v1/environments/staging/secrets/",
        {"name": "bad-name", "value": REJECTED_VALUE},
        format="json",
    )
    assert rejected.status_code == 400
    assert_no_secret_in("an API error", rejected.content.decode())

    agent = token_client("actions:run", "secrets:write", "environments:write", "read")
    with django_capture_on_commit_callbacks(execute=True):
        response = agent.post(
            "/api/v1/actions/",
            {
                "agent": "devops",
                "action": "configure_environment",
                "params": {
                    "environment": "staging",
                    "variables": {"LOG_LEVEL": "info"},
                    "secrets": {"ACTION_SECRET": ACTION_VALUE},
                },
            },
            format="json",
        )
    assert response.status_code == 202, response.json()
    job_id = response.json()["id"]
    run_worker()
    assert Job.objects.get(pk=job_id).status == Job.Status.SUCCEEDED

    # The values are stored (encrypted) and readable by deployment code only.
    assert services.resolve_secrets(staging) == {
        "UI_SECRET": UI_VALUE,
        "API_SECRET": API_VALUE,
        "ACTION_SECRET": ACTION_VALUE,
    }

    # 2. Every page that shows environments, the audit log or the job.
    for url in [
        "/environments/",
        "/environments/staging/",
        "/environments/parity/?a=staging&b=production",
        "/environments/promote/?source=staging&target=production",
        "/audit/",
        "/jobs/",
        f"/jobs/{job_id}/",
    ]:
        response = client.get(url)
        assert response.status_code == 200, url
        assert_no_secret_in(url, response.content.decode())
    assert "ACTION_SECRET" in client.get("/environments/staging/").content.decode()

    # 3. Every API response about them.
    for url in [
        "/api/v1/environments/",
        "/api/v1/environments/staging/",
        "/api/v1/environments/staging/secrets/",
        "/api/v1/environments/staging/config/",
        "/api/v1/environments/parity/?a=staging&b=production",
        "/api/v1/audit/",
        f"/api/v1/actions/{job_id}/",
        f"/api/v1/jobs/{job_id}/",
    ]:
        response = agent.get(url)
        assert response.status_code == 200, url
        assert_no_secret_in(url, response.content.decode())

    # 4. The audit trail, the job's record and every log line.
    events = list(AuditEvent.objects.values_list("action", "object_repr", "summary"))
    assert {"secret.set", "action.start"} <= {action for action, _, _ in events}
    assert_no_secret_in("the audit events", repr(events))
    job = Job.objects.get(pk=job_id)
    assert_no_secret_in("the job", repr((job.params, job.result, job.error)))
    assert_no_secret_in("the job's log", repr(list(JobLogEntry.objects.values_list("message"))))
    # The log did see each change (by name), so it was listening.
    messages = [r.getMessage() for r in caplog.records]
    for name in ("UI_SECRET", "API_SECRET", "ACTION_SECRET"):
        assert any(f"secret {name} set to version 1" in m for m in messages), name
    for record in caplog.records:
        assert_no_secret_in(f"log line {record.name}", record.getMessage())
