"""The monitoring API: incidents and their timelines, alert policies, agent metrics and health
checks. Views parse the request, call one service function and render the answer."""

from __future__ import annotations

import json

from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import NotFoundError, ValidationFailed
from core.roles import INCIDENTS_WRITE, METRICS_WRITE
from monitoring import metrics, services
from monitoring import serializers as s
from monitoring.models import AlertPolicy, HealthCheck, Incident


def _incident(pk: int) -> Incident:
    return services.get_incident(pk)


class IncidentList(generics.ListAPIView):
    """Incidents, newest first. Filters: state (triggered, acknowledged, resolved, reopened,
    or "open" for any unresolved), severity, service, environment (comma-separated lists).
    POST (incidents:write) opens one, or adds to the open one with the same key (200)."""

    serializer_class = s.IncidentSerializer
    write_scope = INCIDENTS_WRITE

    @extend_schema(
        parameters=[
            OpenApiParameter(n, str) for n in ("state", "severity", "service", "environment")
        ]
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        params = self.request.query_params
        incidents = Incident.objects.select_related("commander").prefetch_related(
            "services", "environments"
        )
        errors = {}
        if params.get("state"):
            states = params["state"].split(",")
            bad = [x for x in states if x not in (*Incident.State.values, "open")]
            if bad:
                errors["state"] = [
                    f"Expected some of: open, {', '.join(Incident.State.values)}; not {bad}."
                ]
            expanded = set(states) - {"open"} | (set(Incident.OPEN) if "open" in states else set())
            incidents = incidents.filter(state__in=expanded)
        if params.get("severity"):
            severities = params["severity"].lower().split(",")
            bad = [x for x in severities if x not in ("sev1", "sev2", "sev3", "sev4")]
            if bad:
                errors["severity"] = [f"Expected some of: sev1, sev2, sev3, sev4; not {bad}."]
            incidents = incidents.filter(severity__in=severities)
        if errors:
            raise ValidationFailed("Invalid filters: " + ", ".join(errors), fields=errors)
        if params.get("service"):
            incidents = incidents.filter(services__name__in=params["service"].split(","))
        if params.get("environment"):
            incidents = incidents.filter(environments__name__in=params["environment"].split(","))
        return incidents.distinct()

    @extend_schema(request=s.IncidentCreateSerializer, responses={201: s.IncidentDetailSerializer})
    def post(self, request):
        body = s.IncidentCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        source = Incident.Source.AGENT if request.actor.token else Incident.Source.PERSON
        opened = services.open_incident(
            request.actor,
            data["title"],
            severity=data["severity"],
            services=data["services"],
            environments=data["environments"],
            description=data["description"],
            key=data["key"],
            source=source,
            repeat_kind="alert_fired",
            repeat_message=f"reported again by {request.actor.label}: {data['title']}",
        )
        return Response(
            s.IncidentDetailSerializer(_incident(opened.incident.pk)).data,
            status=status.HTTP_201_CREATED if opened.created else status.HTTP_200_OK,
        )


class IncidentDetail(generics.GenericAPIView):
    """One incident with its timeline. PATCH (incidents:write) changes commander (a username),
    severity, title, description, and, once resolved, the postmortem: summary, impact,
    root_cause, action_items."""

    serializer_class = s.IncidentDetailSerializer
    write_scope = INCIDENTS_WRITE

    def get(self, request, pk: int):
        return Response(s.IncidentDetailSerializer(_incident(pk)).data)

    @extend_schema(request=s.IncidentUpdateSerializer, responses=s.IncidentDetailSerializer)
    def patch(self, request, pk: int):
        incident = _incident(pk)
        body = s.IncidentUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        updated = services.update_incident(request.actor, incident, **body.validated_data)
        return Response(s.IncidentDetailSerializer(updated).data)


class IncidentEvents(generics.ListAPIView):
    """An incident's timeline, oldest first. POST (incidents:write) adds a note (kind "note",
    the default) or an event an agent reports."""

    serializer_class = s.IncidentEventSerializer
    write_scope = INCIDENTS_WRITE

    def get_queryset(self):
        return _incident(self.kwargs["pk"]).events.all()

    @extend_schema(request=s.EventCreateSerializer, responses={201: s.IncidentEventSerializer})
    def post(self, request, pk: int):
        incident = _incident(pk)
        body = s.EventCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        event = services.add_event(
            request.actor, incident, data["kind"], data["message"], data["data"]
        )
        return Response(s.IncidentEventSerializer(event).data, status=status.HTTP_201_CREATED)


class IncidentAction(APIView):
    """POST acknowledge, resolve (optional note) or reopen (optional note: the reason)."""

    write_scope = INCIDENTS_WRITE
    ACTIONS = ("acknowledge", "resolve", "reopen")

    @extend_schema(request=s.IncidentActionSerializer, responses=s.IncidentDetailSerializer)
    def post(self, request, pk: int, action: str):
        if action not in self.ACTIONS:
            raise NotFoundError(f"No incident action {action!r}; expected one of {self.ACTIONS}.")
        incident = _incident(pk)
        body = s.IncidentActionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        note = body.validated_data["note"]
        if action == "acknowledge":
            services.acknowledge(request.actor, incident)
        elif action == "resolve":
            services.resolve(request.actor, incident, note)
        else:
            services.reopen(request.actor, incident, note)
        return Response(s.IncidentDetailSerializer(_incident(pk)).data)


class AlertPolicyList(generics.ListAPIView):
    """Alert policies; POST (incidents:write) creates one and syncs it to Cloud Monitoring."""

    serializer_class = s.AlertPolicySerializer
    write_scope = INCIDENTS_WRITE
    queryset = AlertPolicy.objects.select_related("service", "environment")

    @extend_schema(request=s.AlertPolicySerializer, responses={201: s.AlertPolicySerializer})
    def post(self, request):
        body = s.AlertPolicySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        policy = services.create_alert_policy(request.actor, **body.validated_data)
        return Response(
            s.AlertPolicySerializer(services.get_alert_policy(policy.pk)).data,
            status=status.HTTP_201_CREATED,
        )


class AlertPolicyDetail(generics.GenericAPIView):
    """One alert policy; PATCH changes the given fields, DELETE removes it (and its copy in
    Cloud Monitoring)."""

    serializer_class = s.AlertPolicySerializer
    write_scope = INCIDENTS_WRITE

    def get(self, request, pk: int):
        return Response(s.AlertPolicySerializer(services.get_alert_policy(pk)).data)

    def patch(self, request, pk: int):
        policy = services.get_alert_policy(pk)
        body = s.AlertPolicySerializer(policy, data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        updated = services.update_alert_policy(request.actor, policy, **body.validated_data)
        return Response(s.AlertPolicySerializer(updated).data)

    def delete(self, request, pk: int):
        services.delete_alert_policy(request.actor, services.get_alert_policy(pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


def _labels_param(params) -> dict:
    """labels={"k": "v"} (JSON) and/or label.k=v query parameters."""
    labels: dict[str, str] = {}
    if params.get("labels"):
        try:
            labels = json.loads(params["labels"])
        except ValueError:
            labels = None
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise ValidationFailed(
                "Invalid labels.", fields={"labels": ['Expected a JSON object: {"k": "v"}.']}
            )
    for key, value in params.items():
        if key.startswith("label."):
            labels[key.removeprefix("label.")] = value
    return labels


def _time_param(params, name: str):
    raw = params.get(name)
    if not raw:
        return None
    try:
        value = parse_datetime(raw)
    except ValueError:
        value = None
    if value is None:
        try:
            from datetime import UTC, datetime

            value = datetime.fromtimestamp(float(raw), tz=UTC)
        except (ValueError, OverflowError):
            raise ValidationFailed(
                f"Invalid {name}.", fields={name: ["Expected ISO 8601 or epoch seconds."]}
            ) from None
    return value


class MetricSampleOut(serializers.Serializer):
    name = serializers.CharField()
    labels = serializers.DictField(child=serializers.CharField())
    value = serializers.FloatField()
    timestamp = serializers.DateTimeField()


class Metrics(generics.ListAPIView):
    """GET samples of one metric: ?name= (required), labels={"k":"v"} or label.k=v,
    since=, until= (ISO 8601 or epoch seconds), rollup=1m for per-minute count/sum/min/max/
    mean. POST (metrics:write) {"samples": [{name, labels, value, timestamp}, ...]} stores up
    to 5000 samples; one bad sample rejects the batch, naming samples.<index>.<field>."""

    serializer_class = MetricSampleOut
    write_scope = METRICS_WRITE

    @extend_schema(
        parameters=[
            OpenApiParameter(n, str) for n in ("name", "labels", "since", "until", "rollup")
        ]
    )
    def get(self, request, *args, **kwargs):
        params = request.query_params
        if not params.get("name"):
            raise ValidationFailed("name is required.", fields={"name": ["Name a metric."]})
        labels = _labels_param(params)
        since, until = _time_param(params, "since"), _time_param(params, "until")
        if params.get("rollup"):
            if params["rollup"] != "1m":
                raise ValidationFailed("Invalid rollup.", fields={"rollup": ["Expected 1m."]})
            rows = metrics.query_rollups(params["name"], labels, since, until)
            page = self.paginate_queryset(rows)
            return self.get_paginated_response(
                [
                    {
                        "name": r.name,
                        "labels": r.labels,
                        "minute": r.minute,
                        "count": r.count,
                        "sum": r.sum,
                        "min": r.min,
                        "max": r.max,
                        "mean": r.mean,
                    }
                    for r in page
                ]
            )
        rows = metrics.query_samples(params["name"], labels, since, until)
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(MetricSampleOut(page, many=True).data)

    @extend_schema(
        request=inline_serializer(
            "MetricBatch", {"samples": serializers.ListField(child=MetricSampleOut())}
        ),
        responses={
            201: inline_serializer("MetricBatchResult", {"stored": serializers.IntegerField()})
        },
    )
    def post(self, request):
        result = metrics.ingest(request.actor, request.data)
        return Response(
            {"stored": result.stored, "rollups": result.rollups}, status=status.HTTP_201_CREATED
        )


class HealthCheckList(generics.ListAPIView):
    """Health checks (filters service, environment); POST (incidents:write) creates one."""

    serializer_class = s.HealthCheckSerializer
    write_scope = INCIDENTS_WRITE

    def get_queryset(self):
        checks = HealthCheck.objects.select_related("service", "environment")
        params = self.request.query_params
        if params.get("service"):
            checks = checks.filter(service__name=params["service"])
        if params.get("environment"):
            checks = checks.filter(environment__name=params["environment"])
        return checks

    @extend_schema(request=s.HealthCheckSerializer, responses={201: s.HealthCheckSerializer})
    def post(self, request):
        body = s.HealthCheckSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        check = services.create_health_check(
            request.actor, data.pop("service"), data.pop("environment"), **data
        )
        return Response(s.HealthCheckSerializer(check).data, status=status.HTTP_201_CREATED)


class HealthCheckDetail(generics.GenericAPIView):
    """One health check with its last results; DELETE (incidents:write) removes it."""

    serializer_class = s.HealthCheckSerializer
    write_scope = INCIDENTS_WRITE

    def _check(self, pk) -> HealthCheck:
        check = HealthCheck.objects.select_related("service", "environment").filter(pk=pk).first()
        if check is None:
            raise NotFoundError(f"No health check {pk}.")
        return check

    def get(self, request, pk: int):
        check = self._check(pk)
        body = s.HealthCheckSerializer(check).data
        body["results"] = s.HealthCheckResultSerializer(check.results.all()[:50], many=True).data
        return Response(body)

    def delete(self, request, pk: int):
        services.delete_health_check(request.actor, self._check(pk))
        return Response(status=status.HTTP_204_NO_CONTENT)
