"""Mounted at /api/v1/ (inside the "api" namespace)."""

from django.urls import path

from monitoring import api

urlpatterns = [
    path("incidents/", api.IncidentList.as_view(), name="incidents"),
    path("incidents/<int:pk>/", api.IncidentDetail.as_view(), name="incident"),
    path("incidents/<int:pk>/events/", api.IncidentEvents.as_view(), name="incident-events"),
    path(
        "incidents/<int:pk>/<str:action>/",
        api.IncidentAction.as_view(),
        name="incident-action",
    ),
    path("alert-policies/", api.AlertPolicyList.as_view(), name="alert-policies"),
    path("alert-policies/<int:pk>/", api.AlertPolicyDetail.as_view(), name="alert-policy"),
    path("metrics/", api.Metrics.as_view(), name="metrics"),
    path("health-checks/", api.HealthCheckList.as_view(), name="health-checks"),
    path("health-checks/<int:pk>/", api.HealthCheckDetail.as_view(), name="health-check"),
]
