"""Mounted at /api/v1/environments/ (inside the "api" namespace)."""

from django.urls import path

from environments import api

urlpatterns = [
    path("", api.EnvironmentList.as_view(), name="environment-list"),
    # Before <name>/: "parity" is a reserved environment name for this reason.
    path("parity/", api.EnvironmentParity.as_view(), name="environment-parity"),
    path("<str:name>/", api.EnvironmentDetail.as_view(), name="environment"),
    path("<str:name>/config/", api.EnvironmentConfig.as_view(), name="environment-config"),
    path(
        "<str:name>/config/promote/",
        api.PromoteConfig.as_view(),
        name="environment-config-promote",
    ),
    path("<str:name>/secrets/", api.EnvironmentSecrets.as_view(), name="environment-secrets"),
    path(
        "<str:name>/freeze-windows/",
        api.FreezeWindowList.as_view(),
        name="environment-freeze-windows",
    ),
    path(
        "<str:name>/freeze-windows/<int:pk>/",
        api.FreezeWindowDetail.as_view(),
        name="environment-freeze-window",
    ),
]
