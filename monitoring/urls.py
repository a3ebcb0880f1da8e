"""Pages of monitoring, mounted at the root: /dashboard/, /incidents/, /oncall/,
/alert-policies/, /health-checks/ and the service pages under /services/<name>/ (health, logs,
the deployment page's revisions chart, dashboard export)."""

from django.urls import path

from monitoring import views

app_name = "monitoring"

urlpatterns = [
    path("dashboard/", views.overview, name="dashboard"),
    path("oncall/", views.oncall, name="oncall"),
    path("incidents/", views.incident_list, name="incidents"),
    path("incidents/new/", views.incident_create, name="incident-create"),
    path("incidents/<int:pk>/", views.incident_detail, name="incident"),
    path("incidents/<int:pk>/timeline/", views.incident_timeline, name="incident-timeline"),
    path("incidents/<int:pk>/<str:action>/", views.incident_action, name="incident-action"),
    path("alert-policies/", views.alert_policies, name="alert-policies"),
    path("alert-policies/<int:pk>/edit/", views.alert_policy_edit, name="alert-policy-edit"),
    path("alert-policies/<int:pk>/delete/", views.alert_policy_delete, name="alert-policy-delete"),
    path("health-checks/", views.health_checks, name="health-checks"),
    path("health-checks/<int:pk>/edit/", views.health_check_edit, name="health-check-edit"),
    path("health-checks/<int:pk>/delete/", views.health_check_delete, name="health-check-delete"),
    path("services/<str:name>/health/", views.service_health, name="service-health"),
    path("services/<str:name>/logs/", views.service_logs, name="service-logs"),
    path("services/<str:name>/revisions-chart/", views.revisions_chart, name="revisions-chart"),
    path(
        "services/<str:name>/dashboard.json",
        views.service_dashboard_export,
        name="service-dashboard-export",
    ),
]
