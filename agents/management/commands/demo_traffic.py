"""A gentle, steady stream of requests to each environment's services (for `make run`), so
that canary analysis in the demo always has traffic to judge. DEMO_TRAFFIC=0 turns it off;
DEMO_TRAFFIC_RPS sets requests per second per service and environment (default 20)."""

import os
import signal
import time

import requests
from django.core.management.base import BaseCommand
from django.db import close_old_connections


class Command(BaseCommand):
    help = "Send steady demo traffic to every deployed service (DEMO_TRAFFIC=0: off)."

    def handle(self, *args, **options):
        from agents.devops.cd_pipeline import platform_for_environment
        from environments.models import Environment
        from releases.models import Service

        if os.environ.get("DEMO_TRAFFIC", "1").strip().lower() in ("0", "false", "no", "off"):
            self.stdout.write("demo traffic: off (DEMO_TRAFFIC=0)")
            signal.pause()
            return
        rps = float(os.environ.get("DEMO_TRAFFIC_RPS", "20"))
        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        session = requests.Session()
        targets: list[str] = []
        refreshed = 0.0
        self.stdout.write(f"demo traffic: {rps:g} requests/s per service and environment")
        while not stopping:
            if time.monotonic() - refreshed > 15:
                close_old_connections()
                targets = []
                for env in Environment.objects.all():
                    adapter, _ = platform_for_environment(env, quick=True)
                    for service in Service.objects.all():
                        try:
                            state = adapter.get_service_state(service.name)
                        except Exception:
                            continue  # not deployed there yet
                        if state.uri:
                            targets.append(state.uri)
                refreshed = time.monotonic()
            started = time.monotonic()
            for uri in targets:
                for _ in range(max(int(rps), 1)):
                    try:
                        session.get(uri, timeout=2)
                    except requests.RequestException:
                        pass
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
