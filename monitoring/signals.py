"""Deployments that start, and rollbacks that finish, appear on open incidents' timelines."""

from __future__ import annotations

import logging

from django.db.models.signals import post_save
from django.dispatch import receiver

from releases.models import Deployment

logger = logging.getLogger(__name__)


@receiver(post_save, sender=Deployment, dispatch_uid="monitoring.note_deployment")
def _deployment_saved(sender, instance: Deployment, created: bool, update_fields=None, **kwargs):
    from monitoring import services

    finished_rollback = (
        not created
        and instance.is_rollback
        and instance.status == Deployment.Status.SUCCEEDED
        and (update_fields is None or "status" in update_fields)
    )
    if not (created or finished_rollback):
        return
    try:
        services.note_deployment(instance, created)
    except Exception:  # the timeline must never break a deployment
        logger.warning("deployment %s: not noted on incidents", instance.pk, exc_info=True)
