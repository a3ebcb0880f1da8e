"""Mounted at /environments/. "new", "parity" and "promote" are reserved environment names,
so these pages never clash with an environment's own."""

from django.urls import path

from environments import views

app_name = "environments"

urlpatterns = [
    path("", views.environment_list, name="list"),
    path("new/", views.environment_create, name="create"),
    path("parity/", views.parity_page, name="parity"),
    path("promote/", views.promote_page, name="promote"),
    path("<str:name>/", views.environment_detail, name="detail"),
    path("<str:name>/edit/", views.environment_edit, name="edit"),
    path("<str:name>/config/", views.config_change, name="config"),
    path("<str:name>/secrets/", views.secret_change, name="secrets"),
    path("<str:name>/freeze-windows/", views.freeze_add, name="freeze-add"),
    path(
        "<str:name>/freeze-windows/<int:pk>/remove/",
        views.freeze_remove,
        name="freeze-remove",
    ),
]
