"""The deployment gate monitoring registers with releases (see apps.py)."""

from __future__ import annotations

from releases.gates import Hold


def open_incident_gate(service, environment, is_rollback: bool) -> Hold | None:
    """An open SEV1 or SEV2 incident of the service in the environment holds new deployments;
    a rollback always passes (it is how an incident is fixed), and an admin may override."""
    if is_rollback:
        return None
    from monitoring.services import blocking_incident

    incident = blocking_incident(service, environment)
    if incident is None:
        return None
    return Hold(
        "incident_open",
        f"Incident #{incident.pk} ({incident.get_severity_display()}: {incident.title}) is open "
        f"for {service.name} in {environment.name}; deployments wait until it is resolved, "
        "except rollbacks (an admin may override with a reason).",
        overridable=True,
    )
