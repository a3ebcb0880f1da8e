from django.urls import path

from core import views

app_name = "core"

urlpatterns = [
    path("audit/", views.audit_list, name="audit"),
    path("jobs/", views.jobs_list, name="jobs"),
    path("jobs/<uuid:pk>/", views.job_detail, name="job"),
    path("tokens/", views.tokens_list, name="tokens"),
    path("tokens/<int:pk>/revoke/", views.token_revoke, name="token-revoke"),
]
