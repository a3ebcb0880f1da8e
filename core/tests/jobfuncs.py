"""Small job functions for the job tests, named by dotted path like real jobs."""

import logging

from core.jobs import JobContext, JobFailed

logger = logging.getLogger(__name__)

CALLS: list[str] = []  # job ids, in the order the functions ran


def succeed(ctx: JobContext, greeting: str = "hello") -> dict:
    CALLS.append(str(ctx.job.pk))
    ctx.log.info("job %s: saying %s", ctx.job.pk, greeting)
    logger.info("job %s: a line through a module logger", ctx.job.pk)
    logger.debug("job %s: a debug line, below the captured level", ctx.job.pk)
    return {"said": greeting}


def refuse(ctx: JobContext) -> None:
    ctx.log.info("job %s: checking the preconditions", ctx.job.pk)
    raise JobFailed("environment staging is frozen until Monday")


def crash(ctx: JobContext) -> None:
    ctx.log.info("job %s: about to divide", ctx.job.pk)
    return {"ratio": 1 / 0}
