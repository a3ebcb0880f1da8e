"""Mounted at the root: /services/ and /deployments/ (the API lives under /api/v1/)."""

from django.urls import path

from releases import views

app_name = "releases"

urlpatterns = [
    path("services/", views.service_list, name="services"),
    path("services/<str:name>/", views.service_detail, name="service"),
    path("services/<str:name>/releases/", views.release_create, name="service-release"),
    path("services/<str:name>/deploy/", views.service_deploy, name="service-deploy"),
    path("services/<str:name>/rollback/", views.service_rollback, name="service-rollback"),
    path("deployments/", views.deployment_list, name="deployments"),
    path("deployments/<int:pk>/", views.deployment_detail, name="deployment"),
    path(
        "deployments/<int:pk>/<str:action>/",
        views.deployment_action,
        name="deployment-action",
    ),
]
