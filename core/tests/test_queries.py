"""List pages and endpoints run a fixed number of queries, however many rows they show."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core import audit, jobs
from core.actors import Actor
from core.models import AuditEvent, Job

pytestmark = pytest.mark.django_db

LISTS = ["/jobs/", "/audit/", "/api/v1/jobs/", "/api/v1/audit/"]


def _add_rows(count: int, alice) -> None:
    people = [Actor.for_user(alice), Actor.system("ci")]
    for n in range(count):
        actor = people[n % 2]
        job = jobs.enqueue("core.tests.jobfuncs.succeed", name=f"job-{n}", actor=actor)
        audit.record(actor, "job.start", job, summary={"n": n})


def _queries(client, path: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200, path
    return len(captured)


@pytest.mark.parametrize("path", LISTS)
def test_list_query_count_does_not_grow_with_rows(path, alice, client_for, api_for):
    client = api_for(alice) if path.startswith("/api/") else client_for(alice)
    _add_rows(5, alice)
    client.get(path)  # warm-up: the session and the persona's roles
    few = _queries(client, path)

    _add_rows(45, alice)
    many = _queries(client, path)

    assert Job.objects.count() == 50 and AuditEvent.objects.count() == 50
    assert many == few, f"{path}: {few} queries for 5 rows, {many} for 50"
