"""The platform reader the apps use for pages (registered with releases.platform): quick
adapters that give up on an unreachable platform in seconds, and the cached metric reads."""

from agents.devops import cd_pipeline, health


class QuickPlatformReader:
    def service_state(self, service: str, environment):
        adapter, _ = cd_pipeline.platform_for_environment(environment, quick=True)
        return adapter.get_service_state(service)

    def environment_overview(self, environment) -> dict:
        return health.environment_overview(environment)

    def service_series(self, environment, service: str, range_key: str):
        return health.service_series(environment, service, range_key)

    def revision_series(self, environment, service: str, revisions, since, until):
        return health.revision_series(environment, service, revisions, since, until)

    def revision_logs(self, environment, service, **kwargs):
        return health.revision_logs(environment, service, **kwargs)
