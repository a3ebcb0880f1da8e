"""DevOpsAgent: the portal's own agent for environments (deployments and monitoring join it
as they land)."""

from agents.base import BaseAgent, Param, action, register
from agents.devops import health
from core.jobs import JobFailed
from core.roles import DEPLOYMENTS_WRITE, ENVIRONMENTS_WRITE, INCIDENTS_WRITE
from environments import services as env_services
from environments.models import Environment
from releases import services as release_services
from releases.models import Release, Strategy


def _environment_exists(name: str) -> str | None:
    if not Environment.objects.filter(name=name).exists():
        names = ", ".join(Environment.objects.values_list("name", flat=True)) or "none yet"
        return f"no environment named {name!r} (known: {names})"
    return None


def _key_values(value: dict) -> str | None:
    bad = [k for k, v in value.items() if v is not None and not isinstance(v, str)]
    if bad:
        return f"values must be strings or null; not for: {', '.join(map(str, bad))}"
    return None


@register
class DevOpsAgent(BaseAgent):
    name = "devops"

    @action(
        description="Apply config variables and secrets to an environment, all or nothing.",
        scope=ENVIRONMENTS_WRITE,
        params=(
            Param("environment", str, check=_environment_exists, help="Name of the environment."),
            Param(
                "variables",
                dict,
                required=False,
                default={},
                check=_key_values,
                help="KEY: value; null removes the key.",
            ),
            Param(
                "secrets",
                dict,
                required=False,
                default={},
                secret=True,
                check=_key_values,
                help="NAME: value; null removes the secret. Sealed while queued.",
            ),
            Param(
                "service",
                str,
                required=False,
                default="",
                help="Limit the change to one service; empty for the whole environment.",
            ),
            Param(
                "override_reason",
                str,
                required=False,
                default="",
                help="Needed (admin only) during a freeze window.",
            ),
        ),
    )
    def configure_environment(
        self,
        environment: str,
        variables: dict,
        secrets: dict,
        service: str = "",
        override_reason: str = "",
    ) -> dict:
        """Apply config variables and secrets to an environment, all or nothing."""
        env = env_services.get_environment(environment)
        self.log.info(
            "environment %s: applying %s variable(s) and %s secret(s)%s",
            env.name,
            len(variables),
            len(secrets),
            f" for service {service}" if service else "",
        )
        result = env_services.apply_batch(
            self.actor,
            env,
            variables=variables,
            secrets=secrets,
            service=service,
            override_reason=override_reason or None,
        )
        self.log.info(
            "environment %s: %s config change(s), %s secret change(s)",
            env.name,
            len(result.config),
            len(result.secrets),
        )
        return result.as_dict()

    @action(
        description="Deploy a release of a service to an environment with a strategy.",
        scope=DEPLOYMENTS_WRITE,
        queue="deploy",
        params=(
            Param("service", str, help="Name of the service."),
            Param("environment", str, check=_environment_exists, help="Name of the environment."),
            Param("version", str, help="A registered release of the service."),
            Param(
                "strategy",
                str,
                required=False,
                default="",
                choices=("",) + tuple(Strategy.values),
                help="all_at_once, canary, blue_green or progressive; empty: the "
                "service's default.",
            ),
            Param(
                "params",
                dict,
                required=False,
                default={},
                help="Strategy parameters; empty: the service's safe defaults.",
            ),
            Param(
                "override_reason",
                str,
                required=False,
                default="",
                help="Admin override of promotion order or a freeze, with the reason.",
            ),
        ),
    )
    def deploy_application(
        self,
        service: str,
        environment: str,
        version: str,
        strategy: str = "",
        params: dict | None = None,
        override_reason: str = "",
    ) -> dict:
        """Deploy a release of a service to an environment with a strategy.

        The deployment then runs on its own (its progress is on its page and at
        /api/v1/deployments/<id>/); this action returns once it is created or refused.
        """
        svc = release_services.get_service(service)
        env = env_services.get_environment(environment)
        release = Release.objects.filter(service=svc, version=version).first()
        if release is None:
            raise JobFailed(f"{service} has no release {version!r}")
        deployment = release_services.request_deployment(
            self.actor,
            svc,
            env,
            release,
            strategy or None,
            params or None,
            override_reason=override_reason,
        )
        self.log.info(
            "deployment %s: %s %s -> %s is %s",
            deployment.pk,
            service,
            version,
            environment,
            deployment.status,
        )
        return {
            "deployment": deployment.pk,
            "status": deployment.status,
            "url": f"/api/v1/deployments/{deployment.pk}/",
        }

    @action(
        description="Run the health checks now and summarise each service: healthy, degraded "
        "or down, with the evidence.",
        scope=INCIDENTS_WRITE,
        params=(
            Param(
                "environment",
                str,
                required=False,
                default=None,
                check=_environment_exists,
                help="Only this environment; empty for all.",
            ),
        ),
    )
    def monitor_health(self, environment: str | None = None) -> dict:
        """Run the health checks now and summarise each service."""
        summary = health.monitor_health(environment)
        for service, by_env in summary.items():
            for env_name, cell in by_env.items():
                self.log.info("service %s in %s: %s", service, env_name, cell["status"])
        return summary

    @action(
        description="For each open incident: roll back a deployment of an affected service "
        "from the last 30 minutes, else notify the incident's channels.",
        scope=INCIDENTS_WRITE,
    )
    def handle_incidents(self) -> list:
        """Roll back recent deployments behind open incidents, else notify."""
        handled = health.handle_incidents(self.actor)
        self.log.info("incidents: %s handled", len(handled))
        return handled
