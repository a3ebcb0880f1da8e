"""Demo data for `make run`: environments, users of each role, the example service with
releases (one deliberately bad), and its first release rolled out to every environment.
Running it again changes nothing that exists (it is idempotent)."""

import os
import secrets

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand
from django.db import transaction

from core import jobs
from core.actors import Actor
from core.roles import ROLES
from environments import services as env_services
from environments.models import Environment
from monitoring import services as monitoring_services
from monitoring.models import AlertPolicy, HealthCheck
from releases import services as release_services
from releases.models import Deployment, Release, Service

ENVIRONMENTS = [
    ("dev", 10, False, "Where every release lands first."),
    ("staging", 20, False, "Production-like; releases soak here before production."),
    ("production", 30, True, "Customer traffic. Changes need an approver."),
]
DEMO_SERVICE = "demo"
ARTIFACT = "python examples/demo_service.py"
RELEASES = [
    ("1.0.0", {}, "passed", "The first release."),
    ("1.1.0", {}, "passed", "A good release: try a canary with it."),
    (
        "1.2.0",
        {"ERROR_RATE": "0.3"},
        "passed",
        "Deliberately bad: 30% of requests fail. A canary catches it and rolls it back.",
    ),
    ("1.3.0", {}, "failed", "Its CI run failed: the portal refuses to deploy it."),
]
# Quicker than the built-in defaults so the demo moves in a minute or two, still analysed.
DEMO_CANARY = {
    "steps": [
        {"set_weight": 25},
        {"analysis": {"template": "default"}},
        {"set_weight": 50},
        {"analysis": {"template": "default"}},
        {"set_weight": 100},
    ]
}


class Command(BaseCommand):
    help = "Create demo environments, users, the example service and its releases."

    def add_arguments(self, parser):
        run_port = os.environ.get("LOCALCLOUD_RUN_PORT", "8081")
        mon_port = os.environ.get("LOCALCLOUD_MONITORING_PORT", "8082")
        parser.add_argument("--run-endpoint", default=f"http://127.0.0.1:{run_port}")
        parser.add_argument("--monitoring-endpoint", default=f"127.0.0.1:{mon_port}")
        parser.add_argument(
            "--no-deploy", action="store_true", help="Do not roll the first release out."
        )
        parser.add_argument(
            "--no-scenario",
            action="store_true",
            help="Do not send the bad release out in dev after the first one.",
        )

    def handle(self, *args, run_endpoint, monitoring_endpoint, no_deploy, no_scenario, **options):
        actor = Actor.system("seed_demo")
        with transaction.atomic():
            for role in ROLES:
                Group.objects.get_or_create(name=role)
            envs = []
            for name, order, protected, description in ENVIRONMENTS:
                env = Environment.objects.filter(name=name).first()
                if env is None:
                    env = env_services.create_environment(
                        actor,
                        name,
                        order=order,
                        protected=protected,
                        description=description,
                        platform="localcloud",
                        gcp_project=f"demo-{name}",
                        region="local",
                        run_endpoint=run_endpoint,
                        monitoring_endpoint=monitoring_endpoint,
                    )
                    env_services.set_config(
                        actor,
                        env,
                        {
                            "LOG_LEVEL": "debug" if name == "dev" else "info",
                            "FEATURE_NEW_CHECKOUT": "on" if name == "dev" else "off",
                        },
                    )
                envs.append(env)
            users = self._users()
            service = self._service(actor)
            self._monitoring(actor, service, envs)

        if not no_deploy and not Deployment.objects.filter(service=service).exists():
            self._first_rollout(actor, service, envs, users)
            if not no_scenario:
                with transaction.atomic():
                    job = jobs.enqueue(
                        "ops_portal.demo.bad_release_scenario",
                        name="demo: the bad release 1.2.0 goes out in dev",
                        actor=actor,
                        queue="default",
                        params={
                            "service": service.name,
                            "environment": "dev",
                            "good": "1.0.0",
                            "bad": "1.2.0",
                        },
                    )
                self.stdout.write(
                    f"job {job.pk}: the bad release goes out in dev once 1.0.0 runs there "
                    "(watch /deployments/)"
                )
        self.stdout.write(
            f"demo service '{service.name}': releases "
            f"{', '.join(service.releases.values_list('version', flat=True))}"
        )

    def _users(self) -> dict:
        password = settings.DEMO_PASSWORD
        generated = False
        created = []
        users = {}
        for role in ROLES:
            user, was_created = User.objects.get_or_create(username=role)
            if was_created:
                if not password:
                    password, generated = secrets.token_urlsafe(12), True
                user.set_password(password)
                user.email = f"{role}@example.test"
                user.save()
                user.groups.add(Group.objects.get(name=role))
                created.append(role)
            users[role] = user
        if created:
            shown = password if generated or settings.DEMO_PASSWORD else "(DEMO_PASSWORD)"
            self.stdout.write(f"demo users created: {', '.join(created)}; password: {shown}")
        else:
            self.stdout.write(
                "demo users present (set a password with `python manage.py changepassword NAME`)"
            )
        return users

    def _service(self, actor: Actor) -> Service:
        release_services.ensure_default_template()
        service = Service.objects.filter(name=DEMO_SERVICE).first()
        if service is None:
            service = release_services.register_service(
                actor,
                DEMO_SERVICE,
                description="The example service (examples/demo_service.py)",
                repository_url="https://example.test/ops-portal/demo",
                health_path="/healthz",
                default_strategy="canary",
                default_steps={"canary": DEMO_CANARY},
                owners="platform-team",
            )
        for version, env, ci_status, notes in RELEASES:
            if not Release.objects.filter(service=service, version=version).exists():
                release_services.register_release(
                    actor,
                    service,
                    version,
                    ARTIFACT,
                    env=env,
                    ci_status=ci_status,
                    ci_url=f"https://ci.example.test/demo/{version}",
                    notes=notes,
                    commit_sha=secrets.token_hex(20),
                )
        return service

    def _monitoring(self, actor: Actor, service: Service, envs) -> None:
        """A health check in every environment and an error-rate alert in production."""
        for env in envs:
            if not HealthCheck.objects.filter(service=service, environment=env).exists():
                monitoring_services.create_health_check(
                    actor,
                    service,
                    env,
                    path="/healthz",
                    interval_s=30,
                    timeout_s=3,
                    expected_status=200,
                    failure_threshold=3,
                )
        production = next(env for env in envs if env.name == "production")
        name = "demo: production error rate"
        if not AlertPolicy.objects.filter(name=name).exists():
            monitoring_services.create_alert_policy(
                actor,
                name=name,
                service=service,
                environment=production,
                metric="error_rate",
                window_s=60,
                comparison=">",
                threshold=0.05,
                duration_s=60,
                severity="sev2",
            )

    def _first_rollout(self, actor, service, envs, users) -> None:
        """1.0.0 everywhere, so that canaries have a stable revision to compare with. The
        rollouts run in the worker once it starts."""
        first = Release.objects.get(service=service, version="1.0.0")
        for env in envs:
            deployment = release_services.request_deployment(
                actor,
                service,
                env,
                first,
                "all_at_once",
                override_reason="demo bootstrap: first release everywhere",
            )
            if deployment.status == Deployment.Status.AWAITING_APPROVAL:
                release_services.approve(Actor.for_user(users["approver"]), deployment)
            self.stdout.write(f"deployment #{deployment.pk}: {first} -> {env.name} queued")
