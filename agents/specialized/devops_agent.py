"""DevOpsAgent: the portal's own agent for environments (deployments and monitoring join it
as they land)."""

from agents.base import BaseAgent, Param, action, register
from core.roles import ENVIRONMENTS_WRITE
from environments import services as env_services
from environments.models import Environment


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
