"""RQ-side entry point for agent actions (run inside core.jobs.run_job)."""

from agents.base import REGISTRY, ActionSpec
from core.jobs import JobContext


def run_action(ctx: JobContext, agent: str, action: str, params: dict):
    agent_cls = REGISTRY[agent]
    spec = agent_cls.actions[action]
    instance = agent_cls(ctx.actor, ctx)
    return getattr(instance, spec.method)(**ActionSpec.unseal(params))
