from django.urls import path

from releases import api

urlpatterns = [
    path("services/", api.ServiceList.as_view(), name="services"),
    path("services/<str:name>/", api.ServiceDetail.as_view(), name="service"),
    path("services/<str:name>/releases/", api.ReleaseList.as_view(), name="releases"),
    path(
        "services/<str:name>/environments/<str:env>/rollback/",
        api.ServiceRollback.as_view(),
        name="environment-rollback",
    ),
    path("services/<str:name>/rollback/", api.ServiceRollback.as_view(), name="rollback"),
    path("deployments/", api.DeploymentList.as_view(), name="deployments"),
    path("deployments/<int:pk>/", api.DeploymentDetail.as_view(), name="deployment"),
    path(
        "deployments/<int:pk>/<str:action>/",
        api.DeploymentAction.as_view(),
        name="deployment-action",
    ),
    path("analysis-templates/", api.AnalysisTemplateList.as_view(), name="analysis-templates"),
]
