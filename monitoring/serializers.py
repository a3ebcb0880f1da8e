"""Request and response shapes of the monitoring API. Requests are validated here so that a
bad field comes back named; the rules live in monitoring.services."""

from rest_framework import serializers

from environments.models import Environment
from monitoring.models import (
    AlertPolicy,
    HealthCheck,
    HealthCheckResult,
    Incident,
    IncidentEvent,
    Severity,
)
from releases.models import Service

SEVERITY_HELP = "sev1 (worst) to sev4."


class IncidentEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = IncidentEvent
        fields = ["id", "created_at", "kind", "message", "actor", "data"]


class IncidentSerializer(serializers.ModelSerializer):
    services = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)
    environments = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)
    commander = serializers.SlugRelatedField(slug_field="username", read_only=True)
    url = serializers.SerializerMethodField()

    class Meta:
        model = Incident
        fields = [
            "id",
            "url",
            "title",
            "description",
            "severity",
            "state",
            "source",
            "key",
            "services",
            "environments",
            "deployment",
            "alert_policy",
            "commander",
            "opened_by",
            "opened_at",
            "acknowledged_at",
            "acknowledged_by",
            "resolved_at",
            "resolved_by",
            "summary",
            "impact",
            "root_cause",
            "action_items",
        ]

    def get_url(self, obj) -> str:
        return f"/incidents/{obj.pk}/"


class IncidentDetailSerializer(IncidentSerializer):
    events = IncidentEventSerializer(many=True, read_only=True)

    class Meta(IncidentSerializer.Meta):
        fields = [*IncidentSerializer.Meta.fields, "events"]


class IncidentCreateSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=200)
    severity = serializers.ChoiceField(choices=Severity.values, help_text=SEVERITY_HELP)
    services = serializers.ListField(
        child=serializers.CharField(max_length=49), required=False, default=list
    )
    environments = serializers.ListField(
        child=serializers.CharField(max_length=40), required=False, default=list
    )
    description = serializers.CharField(required=False, allow_blank=True, default="")
    key = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=200,
        help_text="Deduplication key: while an incident with this key is open, another "
        "request with it adds an event to that incident instead of opening a new one.",
    )


class IncidentUpdateSerializer(serializers.Serializer):
    commander = serializers.CharField(required=False, allow_blank=True, allow_null=True)
    severity = serializers.ChoiceField(choices=Severity.values, required=False)
    title = serializers.CharField(required=False, max_length=200)
    description = serializers.CharField(required=False, allow_blank=True)
    summary = serializers.CharField(required=False, allow_blank=True)
    impact = serializers.CharField(required=False, allow_blank=True)
    root_cause = serializers.CharField(required=False, allow_blank=True)
    action_items = serializers.CharField(required=False, allow_blank=True)

    def validate(self, attrs):
        unknown = set(self.initial_data) - set(self.fields)
        if unknown:
            raise serializers.ValidationError({k: ["Unknown field."] for k in sorted(unknown)})
        return attrs


class EventCreateSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=IncidentEvent.POSTABLE, default="note")
    message = serializers.CharField(max_length=10000)
    data = serializers.DictField(required=False, default=dict)


class IncidentActionSerializer(serializers.Serializer):
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=10000)


class AlertPolicySerializer(serializers.ModelSerializer):
    service = serializers.SlugRelatedField(slug_field="name", queryset=Service.objects.all())
    environment = serializers.SlugRelatedField(
        slug_field="name", queryset=Environment.objects.all()
    )
    metric = serializers.CharField(
        max_length=200,
        help_text="error_rate, request_rate, latency_p50/p95/p99, or the name of a metric "
        "agents post (labelled service and environment).",
    )

    class Meta:
        model = AlertPolicy
        fields = [
            "id",
            "name",
            "service",
            "environment",
            "metric",
            "window_s",
            "comparison",
            "threshold",
            "duration_s",
            "severity",
            "webhook_url",
            "emails",
            "enabled",
            "state",
            "last_value",
            "last_evaluated_at",
            "cloud_name",
            "cloud_sync_error",
            "created_by",
            "created_at",
        ]
        read_only_fields = [
            "state",
            "last_value",
            "last_evaluated_at",
            "cloud_name",
            "cloud_sync_error",
            "created_by",
            "created_at",
        ]
        extra_kwargs = {"name": {"validators": []}}

    def validate_emails(self, value: str) -> str:
        field = serializers.EmailField()
        for address in [e.strip() for e in value.split(",") if e.strip()]:
            try:
                field.run_validation(address)
            except serializers.ValidationError:
                raise serializers.ValidationError(
                    f"{address!r} is not an e-mail address."
                ) from None
        return value


class HealthCheckSerializer(serializers.ModelSerializer):
    service = serializers.SlugRelatedField(slug_field="name", queryset=Service.objects.all())
    environment = serializers.SlugRelatedField(
        slug_field="name", queryset=Environment.objects.all()
    )

    class Meta:
        model = HealthCheck
        fields = [
            "id",
            "service",
            "environment",
            "path",
            "base_url",
            "interval_s",
            "timeout_s",
            "expected_status",
            "failure_threshold",
            "severity",
            "enabled",
            "status",
            "consecutive_failures",
            "last_checked_at",
            "next_run_at",
        ]
        read_only_fields = ["status", "consecutive_failures", "last_checked_at", "next_run_at"]
        validators = []


class HealthCheckResultSerializer(serializers.ModelSerializer):
    class Meta:
        model = HealthCheckResult
        fields = ["checked_at", "ok", "status_code", "latency_ms", "error"]
