"""The environments API: environments, their config, secrets and freeze windows, parity and
config promotion. Views parse the request, call one service function and render the answer;
secret values are accepted and never returned."""

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.response import Response

from core.errors import NotFoundError
from core.roles import ADMIN, ENVIRONMENTS_WRITE, SECRETS_WRITE
from environments import serializers as s
from environments import services
from environments.models import ConfigVar, Environment, FreezeWindow, Secret


def _with_summary(name: str) -> Environment:
    environment = Environment.objects.with_summary().filter(name=name).first()
    if environment is None:
        raise NotFoundError(f"No environment named {name!r}.")
    return environment


def _params(serializer_class, request):
    # A plain dict: DRF reads a missing boolean in a QueryDict as false, not as absent.
    params = serializer_class(data=request.query_params.dict())
    params.is_valid(raise_exception=True)
    return params.validated_data


def _scope_filter(queryset, request):
    service = _params(s.ScopeFilterSerializer, request).get("service")
    return queryset if service is None else queryset.filter(service=service)


class EnvironmentList(generics.ListAPIView):
    """Environments in promotion order, with config and secret counts and whether a freeze
    window is active now. Filters: protected, platform, name (contains). POST (admin) creates
    one."""

    serializer_class = s.EnvironmentSerializer
    scopes = {"POST": ADMIN}

    @extend_schema(parameters=[s.EnvironmentFilterSerializer])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        params = _params(s.EnvironmentFilterSerializer, self.request)
        environments = Environment.objects.with_summary()
        if params.get("protected") is not None:
            environments = environments.filter(protected=params["protected"])
        if params.get("platform"):
            environments = environments.filter(platform=params["platform"])
        if params.get("name"):
            environments = environments.filter(name__contains=params["name"])
        return environments

    @extend_schema(request=s.EnvironmentSerializer, responses={201: s.EnvironmentSerializer})
    def post(self, request):
        body = s.EnvironmentSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        fields = dict(body.validated_data)
        environment = services.create_environment(request.actor, fields.pop("name"), **fields)
        return Response(
            s.EnvironmentSerializer(_with_summary(environment.name)).data,
            status=status.HTTP_201_CREATED,
        )


class EnvironmentDetail(generics.GenericAPIView):
    """One environment. PATCH changes the given fields, PUT all of them (admin); the name
    cannot change."""

    serializer_class = s.EnvironmentSerializer
    scopes = {"PUT": ADMIN, "PATCH": ADMIN}

    def get(self, request, name: str):
        return Response(s.EnvironmentSerializer(_with_summary(name)).data)

    def put(self, request, name: str):
        return self._update(request, name, partial=False)

    def patch(self, request, name: str):
        return self._update(request, name, partial=True)

    def _update(self, request, name: str, *, partial: bool) -> Response:
        environment = services.get_environment(name)
        body = s.EnvironmentSerializer(environment, data=request.data, partial=partial)
        body.is_valid(raise_exception=True)
        fields = {k: v for k, v in body.validated_data.items() if k != "name"}
        services.update_environment(request.actor, environment, **fields)
        return Response(s.EnvironmentSerializer(_with_summary(name)).data)


class EnvironmentConfig(generics.ListAPIView):
    """Config variables of an environment; ?service= narrows to one scope ("" is the
    environment-wide one). PATCH merges the given variables (null removes a key); PUT makes
    them the whole set of that service scope."""

    serializer_class = s.ConfigVarSerializer
    write_scope = ENVIRONMENTS_WRITE

    @extend_schema(parameters=[s.ScopeFilterSerializer])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        environment = services.get_environment(self.kwargs["name"])
        return _scope_filter(ConfigVar.objects.filter(environment=environment), self.request)

    @extend_schema(request=s.ConfigWriteSerializer, responses=s.ConfigWriteResultSerializer)
    def patch(self, request, name: str):
        return self._write(request, name, replace=False)

    @extend_schema(request=s.ConfigWriteSerializer, responses=s.ConfigWriteResultSerializer)
    def put(self, request, name: str):
        return self._write(request, name, replace=True)

    def _write(self, request, name: str, *, replace: bool) -> Response:
        environment = services.get_environment(name)
        body = s.ConfigWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        changes = services.set_config(
            request.actor,
            environment,
            data["variables"],
            service=data["service"],
            replace=replace,
            override_reason=data["override_reason"],
        )
        variables = ConfigVar.objects.filter(environment=environment, service=data["service"])
        return Response(
            {
                "environment": environment.name,
                "service": data["service"],
                "changed": [c.key for c in changes],
                "variables": s.ConfigVarSerializer(variables, many=True).data,
            }
        )


class EnvironmentSecrets(generics.ListAPIView):
    """Secret names, versions and who changed them last; values are never returned. PUT sets
    one secret's value (a new version) or, with a null value, removes it."""

    serializer_class = s.SecretSerializer
    write_scope = SECRETS_WRITE

    @extend_schema(parameters=[s.ScopeFilterSerializer])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        environment = services.get_environment(self.kwargs["name"])
        return _scope_filter(Secret.objects.filter(environment=environment), self.request)

    @extend_schema(request=s.SecretWriteSerializer, responses=s.SecretWriteResultSerializer)
    def put(self, request, name: str):
        environment = services.get_environment(name)
        body = s.SecretWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        change = services.set_secret(
            request.actor,
            environment,
            data["name"],
            data["value"],
            service=data["service"],
            override_reason=data["override_reason"],
        )
        return Response(
            {
                "environment": environment.name,
                "service": data["service"],
                "name": change.name,
                "version": change.version,
            }
        )


class FreezeWindowList(generics.ListAPIView):
    """Freeze windows of an environment: one-off (starts_at, ends_at) or weekly (weekday 0-6,
    start_time, end_time, UTC). During one, only an admin with an override reason changes
    the environment."""

    serializer_class = s.FreezeWindowSerializer
    write_scope = ENVIRONMENTS_WRITE

    def get_queryset(self):
        environment = services.get_environment(self.kwargs["name"])
        return FreezeWindow.objects.filter(environment=environment)

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "now": timezone.now()}

    @extend_schema(request=s.FreezeWindowSerializer, responses={201: s.FreezeWindowSerializer})
    def post(self, request, name: str):
        environment = services.get_environment(name)
        body = s.FreezeWindowSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        fields = dict(body.validated_data)
        window = services.add_freeze_window(
            request.actor, environment, fields.pop("reason"), **fields
        )
        return Response(
            s.FreezeWindowSerializer(window, context=self.get_serializer_context()).data,
            status=status.HTTP_201_CREATED,
        )


class FreezeWindowDetail(generics.GenericAPIView):
    """One freeze window; DELETE (admin) lifts it, with an optional ?reason= for the audit."""

    serializer_class = s.FreezeWindowSerializer
    scopes = {"DELETE": ADMIN}

    def _window(self, name: str, pk: int) -> FreezeWindow:
        return services.get_freeze_window(services.get_environment(name), pk)

    def get(self, request, name: str, pk: int):
        context = {"now": timezone.now()}
        return Response(s.FreezeWindowSerializer(self._window(name, pk), context=context).data)

    @extend_schema(
        parameters=[OpenApiParameter("reason", str, description="Why the freeze is lifted.")],
        responses={204: None},
    )
    def delete(self, request, name: str, pk: int):
        reason = request.query_params.get("reason", "")[:300]
        services.remove_freeze_window(request.actor, self._window(name, pk), reason)
        return Response(status=status.HTTP_204_NO_CONTENT)


class EnvironmentParity(generics.GenericAPIView):
    """What differs between environments a and b: config keys and secret names present in one
    and missing in the other, and values that differ (secrets by version only)."""

    serializer_class = s.ParitySerializer
    pagination_class = None

    @extend_schema(parameters=[s.ParityQuerySerializer], responses=s.ParitySerializer)
    def get(self, request):
        params = _params(s.ParityQuerySerializer, request)
        return Response(services.parity(params["a"], params["b"]).as_dict())


class PromoteConfig(generics.GenericAPIView):
    """Copies the chosen config keys from `source` into this environment. With dry_run, only
    says what would change."""

    serializer_class = s.PromoteSerializer
    write_scope = ENVIRONMENTS_WRITE

    @extend_schema(request=s.PromoteSerializer, responses=s.PromotionSerializer)
    def post(self, request, name: str):
        target = services.get_environment(name)
        body = s.PromoteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        if data["dry_run"]:
            result = services.preview_promotion(
                data["source"], target, data["keys"], data["service"]
            )
        else:
            result = services.promote_config(
                request.actor,
                data["source"],
                target,
                data["keys"],
                service=data["service"],
                override_reason=data["override_reason"],
            )
        return Response({**result.as_dict(), "dry_run": data["dry_run"]})
