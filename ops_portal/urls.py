from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from agents import api as agents_api
from core import api_views as core_api
from core import views as core_views
from core.api import api_not_found

api_v1 = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api:schema"), name="docs"),
    path("audit/", core_api.AuditList.as_view(), name="audit"),
    path("jobs/", core_api.JobList.as_view(), name="jobs"),
    path("jobs/<uuid:pk>/", core_api.JobDetail.as_view(), name="job"),
    path("actions/", agents_api.ActionList.as_view(), name="actions"),
    path("actions/<uuid:pk>/", agents_api.ActionDetail.as_view(), name="action"),
    path("environments/", include("environments.api_urls")),
    path("", include("releases.api_urls")),
    path("", include("monitoring.api_urls")),
]

urlpatterns = [
    path("healthz", core_views.healthz, name="healthz"),
    path("readyz", core_views.readyz, name="readyz"),
    path("login/", core_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", core_views.home, name="home"),
    path("", include("core.urls")),
    path("agents/", include("agents.urls")),
    path("environments/", include("environments.urls")),
    path("", include("releases.urls")),
    path("", include("monitoring.urls")),
    path("api/v1/", include((api_v1, "api"))),
    path("api/<path:rest>", api_not_found),
]
