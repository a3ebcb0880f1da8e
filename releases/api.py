from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import NotFoundError
from core.roles import APPROVE, DEPLOYMENTS_WRITE, RELEASES_WRITE
from environments.services import get_environment
from releases import services
from releases.models import AnalysisRun, AnalysisTemplate, Deployment, Release
from releases.serializers import (
    AnalysisTemplateSerializer,
    DeploymentDetailSerializer,
    DeploymentListSerializer,
    DeployRequestSerializer,
    OverrideSerializer,
    PromoteSerializer,
    ReasonSerializer,
    ReleaseSerializer,
    RollbackSerializer,
    ServiceSerializer,
)


class ServiceList(generics.ListCreateAPIView):
    """Services; POST registers one (releases:write)."""

    serializer_class = ServiceSerializer
    write_scope = RELEASES_WRITE
    queryset = services.Service.objects.all()

    def create(self, request, *args, **kwargs):
        body = ServiceSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        service = services.register_service(request.actor, data.pop("name"), **data)
        return Response(ServiceSerializer(service).data, status=status.HTTP_201_CREATED)


class ServiceDetail(generics.RetrieveAPIView):
    serializer_class = ServiceSerializer

    def get_object(self):
        return services.get_service(self.kwargs["name"])


class ReleaseList(generics.ListCreateAPIView):
    """A service's releases, newest first; POST registers one (releases:write). Releases are
    immutable: a version can be registered once."""

    serializer_class = ReleaseSerializer
    write_scope = RELEASES_WRITE

    def get_queryset(self):
        service = services.get_service(self.kwargs["name"])
        releases = Release.objects.filter(service=service).select_related("service")
        if self.request.query_params.get("ci_status"):
            releases = releases.filter(ci_status=self.request.query_params["ci_status"])
        return releases

    def create(self, request, *args, **kwargs):
        service = services.get_service(self.kwargs["name"])
        body = ReleaseSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        release = services.register_release(
            request.actor, service, data.pop("version"), data.pop("artifact"), **data
        )
        return Response(ReleaseSerializer(release).data, status=status.HTTP_201_CREATED)


def _release(service, version: str) -> Release:
    release = Release.objects.filter(service=service, version=version).first()
    if release is None:
        raise NotFoundError(
            f"{service.name} has no release {version!r}.",
            fields={"version": ["No such release of this service."]},
        )
    return release


class DeploymentList(generics.ListCreateAPIView):
    """Deployments, newest first, filtered by ?service=&environment=&status=&version=.
    POST {service, environment, version, strategy, params, dry_run, override_reason} requests
    one (deployments:write); with dry_run it answers the plan and every reason it would be
    refused or held, creating nothing."""

    write_scope = DEPLOYMENTS_WRITE

    def get_serializer_class(self):
        return (
            DeployRequestSerializer if self.request.method == "POST" else (DeploymentListSerializer)
        )

    @extend_schema(
        parameters=[
            OpenApiParameter(n, str) for n in ("service", "environment", "status", "version")
        ]
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        qs = Deployment.objects.select_related("service", "environment", "release")
        params = self.request.query_params
        if params.get("service"):
            qs = qs.filter(service__name=params["service"])
        if params.get("environment"):
            qs = qs.filter(environment__name=params["environment"])
        if params.get("status"):
            qs = qs.filter(status__in=params["status"].split(","))
        if params.get("version"):
            qs = qs.filter(release__version=params["version"])
        return qs

    @extend_schema(request=DeployRequestSerializer, responses={201: DeploymentDetailSerializer})
    def post(self, request, *args, **kwargs):
        body = DeployRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        service = services.get_service(data["service"])
        environment = get_environment(data["environment"])
        release = _release(service, data["version"])
        result = services.request_deployment(
            request.actor,
            service,
            environment,
            release,
            data.get("strategy"),
            data.get("params") or None,
            override_reason=data["override_reason"],
            dry_run=data["dry_run"],
        )
        if data["dry_run"]:
            return Response({"dry_run": True, **result.as_dict()})
        return Response(
            DeploymentDetailSerializer(_detail(result.pk)).data, status=status.HTTP_201_CREATED
        )


def _detail(pk) -> Deployment:
    d = (
        Deployment.objects.select_related("service", "environment", "release")
        .prefetch_related(
            "events",
            "traffic",
            Prefetch("analyses", AnalysisRun.objects.prefetch_related("measurements")),
        )
        .filter(pk=pk)
        .first()
    )
    if d is None:
        raise NotFoundError(f"No deployment #{pk}.")
    return d


class DeploymentDetail(generics.RetrieveAPIView):
    """A deployment with its steps, timeline, traffic history and analysis measurements."""

    serializer_class = DeploymentDetailSerializer

    def get_object(self):
        return _detail(self.kwargs["pk"])


class DeploymentAction(APIView):
    """POST /api/v1/deployments/<id>/<action>/: approve, reject, promote, pause, resume,
    abort, retry."""

    ACTIONS = {
        "approve": (APPROVE, None),
        "reject": (APPROVE, ReasonSerializer),
        "promote": (DEPLOYMENTS_WRITE, PromoteSerializer),
        "pause": (DEPLOYMENTS_WRITE, None),
        "resume": (DEPLOYMENTS_WRITE, None),
        "abort": (DEPLOYMENTS_WRITE, ReasonSerializer),
        "retry": (DEPLOYMENTS_WRITE, OverrideSerializer),
    }

    @property
    def scopes(self):
        action = self.kwargs.get("action")
        scope = self.ACTIONS.get(action, (DEPLOYMENTS_WRITE, None))[0]
        return {"POST": scope}

    @extend_schema(request=None, responses=DeploymentDetailSerializer)
    def post(self, request, pk, action):
        if action not in self.ACTIONS:
            raise NotFoundError(
                f"Unknown deployment action {action!r}; expected one of: {', '.join(self.ACTIONS)}."
            )
        deployment = _detail(pk)
        serializer_class = self.ACTIONS[action][1]
        args = {}
        if serializer_class is not None:
            body = serializer_class(data=request.data)
            body.is_valid(raise_exception=True)
            args = dict(body.validated_data)
        func = getattr(services, action)
        result = func(request.actor, deployment, **args)
        return Response(
            DeploymentDetailSerializer(_detail(result.pk)).data,
            status=status.HTTP_201_CREATED if action == "retry" else 200,
        )


class ServiceRollback(APIView):
    """POST /services/<name>/environments/<env>/rollback/ {reason} (or /services/<name>/
    rollback/ {environment, reason}): the previous successful release of that environment
    back at 100%, skipping analysis, as one traffic update."""

    scopes = {"POST": DEPLOYMENTS_WRITE}

    @extend_schema(request=RollbackSerializer, responses={201: DeploymentDetailSerializer})
    def post(self, request, name, env=None):
        data = request.data if env is None else {**request.data, "environment": env}
        body = RollbackSerializer(data=data)
        body.is_valid(raise_exception=True)
        service = services.get_service(name)
        environment = get_environment(body.validated_data["environment"])
        deployment = services.rollback(
            request.actor, service, environment, body.validated_data["reason"]
        )
        return Response(
            DeploymentDetailSerializer(_detail(deployment.pk)).data, status=status.HTTP_201_CREATED
        )


class AnalysisTemplateList(generics.ListCreateAPIView):
    serializer_class = AnalysisTemplateSerializer
    queryset = AnalysisTemplate.objects.all()
    write_scope = DEPLOYMENTS_WRITE

    def create(self, request, *args, **kwargs):
        body = AnalysisTemplateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        template = services.save_analysis_template(request.actor, **body.validated_data)
        return Response(AnalysisTemplateSerializer(template).data, status=status.HTTP_201_CREATED)
