"""Background jobs: a Job row per RQ job, its status, error and log, enqueued after commit."""

import django_rq
import pytest
from django.db import transaction

from core import jobs
from core.models import Job
from core.tests import jobfuncs

pytestmark = pytest.mark.django_db


def _start(actor, func: str, **params) -> Job:
    return jobs.enqueue(f"core.tests.jobfuncs.{func}", name=func, actor=actor, params=params)


@pytest.fixture
def enqueue_now(django_capture_on_commit_callbacks):
    """Enqueues a test job and runs the on-commit callbacks, as a committed request would."""

    def start(actor, func: str, **params) -> Job:
        with django_capture_on_commit_callbacks(execute=True):
            return _start(actor, func, **params)

    return start


def test_it_records_a_successful_job_with_its_result_and_log(enqueue_now, system_actor, run_worker):
    job = enqueue_now(system_actor, "succeed", greeting="bonjour")
    assert Job.objects.get(pk=job.pk).status == "queued"

    run_worker("default")

    job.refresh_from_db()
    assert job.status == "succeeded"
    assert job.result == {"said": "bonjour"}
    assert job.error == ""
    assert job.started_at is not None and job.finished_at >= job.started_at
    lines = list(job.log_entries.values_list("level", "message"))
    assert ("INFO", f"job {job.pk}: saying bonjour") in lines
    assert ("INFO", f"job {job.pk}: a line through a module logger") in lines
    assert not any("debug line" in message for _, message in lines)


def test_it_marks_a_job_that_raises_job_failed_as_failed(enqueue_now, system_actor, run_worker):
    job = enqueue_now(system_actor, "refuse")

    run_worker("default")

    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error == "environment staging is frozen until Monday"
    assert job.result is None
    messages = list(job.log_entries.values_list("message", flat=True))
    assert f"job {job.pk}: checking the preconditions" in messages


def test_it_marks_a_job_that_crashes_as_errored(enqueue_now, system_actor, run_worker):
    job = enqueue_now(system_actor, "crash")

    run_worker("default")

    job.refresh_from_db()
    assert job.status == "errored"
    assert job.error == "ZeroDivisionError: division by zero"
    log = "\n".join(job.log_entries.values_list("message", flat=True))
    assert "Traceback" in log and "ZeroDivisionError" in log


def test_it_shows_the_log_on_the_job_page_and_in_its_htmx_fragment(
    enqueue_now, system_actor, run_worker, victor, client_for
):
    job = enqueue_now(system_actor, "refuse")
    run_worker("default")
    c = client_for(victor)

    page = c.get(f"/jobs/{job.pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<html" in html
    assert "checking the preconditions" in html
    assert "environment staging is frozen until Monday" in html

    fragment = c.get(f"/jobs/{job.pk}/", headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    html = fragment.content.decode()
    assert html.lstrip().startswith('<section id="job-live"')
    assert "<html" not in html and "<nav" not in html
    assert "checking the preconditions" in html
    assert 'class="badge failed"' in html
    # A finished job's fragment stops polling.
    assert "hx-trigger" not in html


def test_an_unfinished_jobs_fragment_keeps_polling(enqueue_now, system_actor, victor, client_for):
    job = enqueue_now(system_actor, "succeed")

    html = client_for(victor).get(f"/jobs/{job.pk}/", headers={"HX-Request": "true"}).content
    assert b'hx-trigger="every 2s"' in html
    assert f'hx-get="/jobs/{job.pk}/"'.encode() in html


def test_a_job_enqueued_twice_runs_once(enqueue_now, system_actor, run_worker):
    jobfuncs.CALLS.clear()
    job = enqueue_now(system_actor, "succeed")
    # A second copy on the queue, as a retried enqueue or a re-queued RQ job would leave.
    django_rq.get_queue("default", commit_mode="auto").enqueue("core.jobs.run_job", str(job.pk))
    assert django_rq.get_queue("default").count == 2

    run_worker("default")

    assert jobfuncs.CALLS == [str(job.pk)]
    job.refresh_from_db()
    assert job.status == "succeeded"
    assert job.log_entries.filter(message__endswith="saying hello").count() == 1


def test_a_running_job_is_not_claimed_again(system_actor):
    job = _start(system_actor, "succeed")
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)

    assert jobs.run_job(str(job.pk)) is None

    job.refresh_from_db()
    assert job.status == "running"
    assert job.finished_at is None


def test_jobs_are_enqueued_only_when_the_transaction_commits(
    system_actor, django_capture_on_commit_callbacks
):
    queue = django_rq.get_queue("default")

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                _start(system_actor, "succeed")
                assert queue.count == 0  # not before the commit
                raise RuntimeError("the request failed after creating the job")
    assert callbacks == []
    assert queue.count == 0
    assert not Job.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            job = _start(system_actor, "succeed")
            assert queue.count == 0
    assert queue.count == 1
    assert queue.jobs[0].args[0] == str(job.pk)


def test_the_api_shows_a_finished_jobs_log_and_error(
    enqueue_now, system_actor, run_worker, token_client
):
    job = enqueue_now(system_actor, "crash")
    run_worker("default")

    body = token_client("read").get(f"/api/v1/jobs/{job.pk}/").json()
    assert body["status"] == "errored"
    assert body["error"] == "ZeroDivisionError: division by zero"
    assert any(line["message"] == f"job {job.pk}: about to divide" for line in body["log"])
