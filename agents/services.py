"""Starting agent actions: validate, check permission, record a Job, enqueue on commit."""

import logging

from django.db import transaction

from agents.base import get_action
from core import audit, jobs
from core.actors import Actor
from core.models import Job
from core.roles import ACTIONS_RUN

logger = logging.getLogger(__name__)


def start_action(actor: Actor, agent: str, action: str, params: dict | None) -> Job:
    spec = get_action(agent, action)
    for scope in filter(None, (ACTIONS_RUN, spec.scope)):
        actor.require(scope)
    cleaned = spec.validate(params)

    with transaction.atomic():
        job = jobs.enqueue(
            "agents.jobs.run_action",
            name=f"{agent}.{action}",
            actor=actor,
            params={"agent": agent, "action": action, "params": spec.seal(cleaned)},
            queue=spec.queue,
        )
        audit.record(actor, "action.start", job, summary={"agent": agent, "action": action})
    logger.info("job %s: action %s.%s started by %s", job.pk, agent, action, actor.label)
    return job
