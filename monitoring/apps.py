from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = "Monitoring and incidents"

    def ready(self) -> None:
        # releases asks monitoring through these two registrations; it never imports us.
        from monitoring import gates, signals  # noqa: F401
        from monitoring import services as monitoring_services
        from releases import gates as release_gates
        from releases import services as release_services

        release_gates.register(gates.open_incident_gate)
        release_services.on_failure(monitoring_services.incident_for_failed_deployment)
