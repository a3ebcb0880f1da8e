"""Background jobs: a Job row for each RQ job, enqueued after commit, run and recorded.

A job function is named by its dotted path and called as `func(job_context, **params)`. It
logs through `job_context.log` (or any logger; lines at INFO and above go into the Job), and
returns a JSON-serialisable result. Raising JobFailed marks the Job failed with that message;
any other exception marks it errored.
"""

from __future__ import annotations

import importlib
import logging
import threading
import traceback
from dataclasses import dataclass, field

import django_rq
from django.db import connection, transaction
from django.utils import timezone

from core import context
from core.actors import Actor
from core.errors import DomainError
from core.models import AgentToken, Job, JobLogEntry

logger = logging.getLogger(__name__)


class JobFailed(Exception):
    """The job's work could not be done; the message tells a person why."""


@dataclass
class JobContext:
    job: Job
    actor: Actor
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("jobs"))


def enqueue(
    func: str,
    *,
    name: str,
    actor: Actor,
    params: dict | None = None,
    queue: str = "default",
    obj=None,
) -> Job:
    """Creates the Job row now and enqueues it when the surrounding transaction commits, so a
    job never runs against data that was rolled back."""
    job = Job.objects.create(
        name=name,
        func=func,
        queue=queue,
        params=params or {},
        actor=actor.label,
        created_by=actor.user if getattr(actor.user, "pk", None) else None,
        created_by_token=actor.token,
        object_type=obj._meta.label_lower if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
    )
    job_id = str(job.pk)
    # The request's id and source IP travel with the job, so that the audit events it writes
    # can be traced to the request that started it.
    info = context.current()
    transaction.on_commit(
        lambda: django_rq.get_queue(queue).enqueue(
            "core.jobs.run_job",
            job_id,
            request_id=info.request_id,
            source_ip=info.source_ip,
            job_id=job_id,
            result_ttl=3600,
        )
    )
    logger.info("job %s: %s queued on %s by %s", job_id, name, queue, actor.label)
    return job


class _JobLogHandler(logging.Handler):
    """Copies log records of the running thread into the Job. Lines are written at once when
    no transaction is open (so the page shows them live), else kept until the job ends, so a
    rolled-back transaction cannot take them away."""

    def __init__(self, job: Job):
        super().__init__(level=logging.INFO)
        self.job = job
        self.thread = threading.get_ident()
        self.pending: list[JobLogEntry] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread or record.name.startswith("django.db"):
            return
        try:
            entry = JobLogEntry(
                job_id=self.job.pk, level=record.levelname, message=self.format(record)
            )
            self.pending.append(entry)
            if not connection.in_atomic_block:
                self.flush()
        except Exception:  # a log line must never break the job
            self.handleError(record)

    def flush(self) -> None:
        if self.pending:
            entries, self.pending = self.pending, []
            JobLogEntry.objects.bulk_create(entries)


def _actor_of(job: Job) -> Actor:
    if job.created_by is not None:
        return Actor.for_user(job.created_by)
    if job.created_by_token_id is not None:
        token = AgentToken.objects.get(pk=job.created_by_token_id)
        return Actor.for_token(token)
    return Actor.system(job.actor or "system")


def run_job(job_id: str, request_id: str = "", source_ip: str | None = None) -> dict | None:
    """The RQ entry point.

    1. Claim the Job with a conditional UPDATE, so that a job enqueued twice runs once.
    2. Capture log lines into the Job while the function runs, with the starting request's id
       and source IP as the context of the audit events it records.
    3. Record the result, or the failure with its message, and the finish time.
    """
    # Two workers may pick up copies of one job; only the one whose UPDATE matches runs it.
    claimed = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(
        status=Job.Status.RUNNING, started_at=timezone.now()
    )
    if not claimed:
        logger.warning("job %s: not queued any more, skipped", job_id)
        return None
    job = Job.objects.select_related("created_by").get(pk=job_id)

    handler = _JobLogHandler(job)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous_level = root.level
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    status, result, error = Job.Status.SUCCEEDED, None, ""
    request_info = context.set_current(context.RequestInfo(request_id, source_ip))
    try:
        module_name, _, attr = job.func.rpartition(".")
        func = getattr(importlib.import_module(module_name), attr)
        ctx = JobContext(job=job, actor=_actor_of(job))
        ctx.log.info("job %s: %s started", job.pk, job.name)
        result = func(ctx, **job.params)
        ctx.log.info("job %s: %s succeeded", job.pk, job.name)
    except (JobFailed, DomainError) as exc:
        status, error = Job.Status.FAILED, str(exc)
        logger.warning("job %s: failed: %s", job.pk, exc)
    except Exception as exc:
        status, error = Job.Status.ERRORED, f"{type(exc).__name__}: {exc}"
        logger.error("job %s: errored\n%s", job.pk, traceback.format_exc())
    finally:
        context.reset(request_info)
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.flush()

    Job.objects.filter(pk=job.pk).update(
        status=status, result=result, error=error, finished_at=timezone.now()
    )
    return result
