"""The demo's story for `make run`: once the first release runs in dev, the deliberately bad
release 1.2.0 goes out as a canary there; analysis catches it, traffic goes back to 1.0.0
and an incident opens, so a new user sees the whole loop on the first start."""

import logging
import time

from core.jobs import JobContext, JobFailed
from environments.models import Environment
from releases import services as release_services
from releases.models import Release, Service

logger = logging.getLogger(__name__)


def bad_release_scenario(
    ctx: JobContext,
    service: str,
    environment: str,
    good: str,
    bad: str,
    wait_s: float = 300,
    baseline_s: float = 10,
) -> dict:
    """1. Wait until `good` serves the environment. 2. Deploy `bad` with the service's
    default canary. The rollout itself goes on in the deploy queue."""
    svc = Service.objects.get(name=service)
    env = Environment.objects.get(name=environment)
    deadline = time.monotonic() + wait_s
    while True:
        current = release_services.current_release(svc, env)
        if current is not None and current.release.version == good:
            break
        if time.monotonic() > deadline:
            raise JobFailed(f"{service} {good} did not reach {environment} in {wait_s:g} s")
        time.sleep(2)
    # A few seconds of steady traffic on the stable revision gives analysis its baseline.
    time.sleep(baseline_s)
    release = Release.objects.get(service=svc, version=bad)
    deployment = release_services.request_deployment(ctx.actor, svc, env, release)
    ctx.log.info(
        "deployment %s: %s %s -> %s started (the canary should fail analysis)",
        deployment.pk,
        service,
        bad,
        environment,
    )
    return {"deployment": deployment.pk, "status": deployment.status}
