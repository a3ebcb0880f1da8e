from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"
    verbose_name = "Agents"

    def ready(self) -> None:
        # Importing the agents registers their actions.
        from agents.devops.readers import QuickPlatformReader
        from agents.specialized import devops_agent  # noqa: F401
        from releases import platform

        platform.register(QuickPlatformReader())
