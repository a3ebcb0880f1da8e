"""Jobs of the monitoring app, run by RQ inside core.jobs.run_job."""

from __future__ import annotations

import logging
import time

import requests
from django.conf import settings
from django.core.mail import send_mail

from core.jobs import JobContext
from monitoring import services

logger = logging.getLogger(__name__)


def _attempts() -> int:
    return int(getattr(settings, "MONITORING_WEBHOOK_ATTEMPTS", 4))


def _backoff(attempt: int) -> float:
    base = float(getattr(settings, "MONITORING_WEBHOOK_BACKOFF_S", 1.0))
    return base * (2**attempt)


def deliver_notification(
    ctx: JobContext, incident: int, channel: str, payload: dict, to: list | None = None
) -> dict:
    """Delivers one notification.

    1. Webhook: POST the JSON payload; a 2xx answer is delivered. A refused connection, a
       timeout or another status is retried after 1, 2, 4 s (MONITORING_WEBHOOK_ATTEMPTS
       attempts in all, backoff base MONITORING_WEBHOOK_BACKOFF_S).
    2. E-mail: through Django's mail backend, once (the backend retries on its own).
    3. The outcome goes on the incident's timeline, so an undelivered one is seen.
    """
    if channel == "email":
        subject = f"[{payload['severity'].upper()}] incident #{incident}: {payload['title']}"
        body = f"{payload['message']}\n\n{payload['url']}\n"
        try:
            send_mail(subject, body, None, list(to or []))
        except Exception as exc:
            services.record_notification(
                incident, "email", False, f"e-mail to {', '.join(to or [])} failed: {exc}"
            )
            ctx.log.warning("incident %s: e-mail failed: %s", incident, exc)
            return {"delivered": False, "error": str(exc)}
        services.record_notification(incident, "email", True, f"e-mailed {', '.join(to or [])}")
        return {"delivered": True}

    url = services.channels_for(services.get_incident(incident))["webhook"]
    url = payload.get("webhook_url") or url
    attempts = _attempts()
    timeout = float(getattr(settings, "MONITORING_WEBHOOK_TIMEOUT_S", 5.0))
    error = ""
    for attempt in range(attempts):
        try:
            response = requests.post(url, json=payload, timeout=timeout)
            if 200 <= response.status_code < 300:
                services.record_notification(
                    incident,
                    "webhook",
                    True,
                    f"webhook {url} answered {response.status_code} (attempt {attempt + 1})",
                )
                ctx.log.info("incident %s: webhook delivered to %s", incident, url)
                return {"delivered": True, "attempts": attempt + 1}
            error = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        ctx.log.warning(
            "incident %s: webhook %s attempt %s/%s failed: %s",
            incident,
            url,
            attempt + 1,
            attempts,
            error,
        )
        if attempt + 1 < attempts:
            time.sleep(_backoff(attempt))
    services.record_notification(
        incident,
        "webhook",
        False,
        f"webhook {url} not delivered after {attempts} attempts: {error}",
    )
    return {"delivered": False, "attempts": attempts, "error": error}


def prune_job(ctx: JobContext) -> dict:
    """Deletes samples, rollups and health-check results past their retention."""
    return services.prune()
