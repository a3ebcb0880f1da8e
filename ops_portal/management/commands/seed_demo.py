"""Demo data for `make run`: environments, users of each role, a little configuration.
Running it again changes nothing that exists (it is idempotent)."""

import secrets

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand
from django.db import transaction

from core.actors import Actor
from core.roles import ROLES
from environments import services as env_services
from environments.models import Environment

ENVIRONMENTS = [
    ("dev", 10, False, "Where every release lands first."),
    ("staging", 20, False, "Production-like; releases soak here before production."),
    ("production", 30, True, "Customer traffic. Changes need an approver."),
]


class Command(BaseCommand):
    help = "Create demo environments, users (admin, operator, approver, viewer) and config."

    def add_arguments(self, parser):
        parser.add_argument("--run-endpoint", default="http://127.0.0.1:8081")
        parser.add_argument("--monitoring-endpoint", default="127.0.0.1:8082")

    def handle(self, *args, run_endpoint, monitoring_endpoint, **options):
        actor = Actor.system("seed_demo")
        with transaction.atomic():
            for role in ROLES:
                Group.objects.get_or_create(name=role)
            for name, order, protected, description in ENVIRONMENTS:
                if not Environment.objects.filter(name=name).exists():
                    env = env_services.create_environment(
                        actor,
                        name,
                        order=order,
                        protected=protected,
                        description=description,
                        platform="localcloud",
                        gcp_project="demo-project",
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

            password = settings.DEMO_PASSWORD
            generated = False
            created = []
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

        if created:
            shown = password if generated or settings.DEMO_PASSWORD else "(DEMO_PASSWORD)"
            self.stdout.write(f"demo users created: {', '.join(created)}; password: {shown}")
        else:
            self.stdout.write(
                "demo data present; users unchanged (set passwords with "
                "`python manage.py changepassword NAME`)"
            )
