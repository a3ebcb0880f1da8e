"""The portal's clock: runs the periodic duties of the agents, beside the RQ worker.

Every few seconds it re-enqueues deployments whose tick is overdue (a lost RQ job, a killed
worker, a Redis restart), so a rollout is delayed but never lost; it also enqueues the health
checks that are due, an alert-policy evaluation every minute and an hourly prune of old
samples (agents.devops.health.run_due).
"""

import logging
import signal
import time

from django.core.management.base import BaseCommand
from django.db import close_old_connections

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run periodic duties (deployment reconciler) until stopped."

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=5.0)
        parser.add_argument("--once", action="store_true", help="Run the duties once and exit.")

    def handle(self, *args, interval, once, **options):
        from agents.devops import cd_pipeline
        from agents.devops import health as monitoring_duties

        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write(f"clock: every {interval:g} s")
        while not stopping:
            close_old_connections()
            try:
                ids = cd_pipeline.reconcile()
                if ids:
                    self.stdout.write(f"clock: re-enqueued deployments {ids}")
            except Exception:
                logger.exception("clock: reconcile failed; trying again next round")
            try:
                for line in monitoring_duties.run_due():
                    self.stdout.write(f"clock: {line}")
            except Exception:
                logger.exception("clock: monitoring duties failed; trying again next round")
            if once:
                break
            time.sleep(interval)
