from rest_framework import serializers

from releases.models import (
    AnalysisRun,
    AnalysisTemplate,
    Deployment,
    DeploymentEvent,
    Measurement,
    Release,
    Service,
    Strategy,
)


class ServiceSerializer(serializers.ModelSerializer):
    class Meta:
        model = Service
        fields = [
            "name",
            "description",
            "repository_url",
            "health_path",
            "default_strategy",
            "default_steps",
            "owners",
            "created_at",
        ]
        read_only_fields = ["created_at"]
        extra_kwargs = {"name": {"validators": []}}


class ReleaseSerializer(serializers.ModelSerializer):
    service = serializers.CharField(source="service.name", read_only=True)

    class Meta:
        model = Release
        fields = [
            "id",
            "service",
            "version",
            "artifact",
            "env",
            "commit_sha",
            "ci_status",
            "ci_url",
            "notes",
            "created_by",
            "created_at",
        ]
        read_only_fields = ["id", "service", "created_by", "created_at"]
        validators = []


class DeployRequestSerializer(serializers.Serializer):
    service = serializers.CharField()
    environment = serializers.CharField()
    version = serializers.CharField()
    strategy = serializers.ChoiceField(choices=Strategy.values, required=False)
    params = serializers.DictField(required=False, default=dict)
    dry_run = serializers.BooleanField(required=False, default=False)
    override_reason = serializers.CharField(
        required=False, default="", allow_blank=True, max_length=300
    )

    def validate(self, attrs):
        # A misspelt key ("stratgy", "dryrun") would otherwise be dropped in silence and the
        # deployment would run with the defaults the client meant to change.
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            expected = ", ".join(self.fields)
            raise serializers.ValidationError(
                {key: [f"Unknown field; expected: {expected}."] for key in unknown}
            )
        return attrs


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, default="", allow_blank=True, max_length=300)


class OverrideSerializer(serializers.Serializer):
    override_reason = serializers.CharField(
        required=False, default="", allow_blank=True, max_length=300
    )


class PromoteSerializer(serializers.Serializer):
    full = serializers.BooleanField(required=False, default=False)


class RollbackSerializer(serializers.Serializer):
    environment = serializers.CharField()
    reason = serializers.CharField(required=False, default="", allow_blank=True, max_length=300)


class EventSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeploymentEvent
        fields = ["created_at", "kind", "message", "actor", "data"]


class MeasurementSerializer(serializers.ModelSerializer):
    class Meta:
        model = Measurement
        fields = [
            "metric",
            "taken_at",
            "value",
            "stable_value",
            "sample_count",
            "threshold",
            "result",
            "detail",
        ]


class AnalysisRunSerializer(serializers.ModelSerializer):
    measurements = MeasurementSerializer(many=True, read_only=True)

    class Meta:
        model = AnalysisRun
        fields = [
            "id",
            "step_index",
            "template",
            "result",
            "summary",
            "started_at",
            "finished_at",
            "measurements",
        ]


class DeploymentListSerializer(serializers.ModelSerializer):
    service = serializers.CharField(source="service.name")
    environment = serializers.CharField(source="environment.name")
    version = serializers.CharField(source="release.version")

    class Meta:
        model = Deployment
        fields = [
            "id",
            "service",
            "environment",
            "version",
            "strategy",
            "status",
            "current_step",
            "is_rollback",
            "stable_revision",
            "new_revision",
            "requested_by",
            "approved_by",
            "reason",
            "created_at",
            "started_at",
            "finished_at",
        ]


class DeploymentDetailSerializer(DeploymentListSerializer):
    steps = serializers.SerializerMethodField()
    traffic = serializers.SerializerMethodField()
    events = EventSerializer(many=True, read_only=True)
    analyses = AnalysisRunSerializer(many=True, read_only=True)
    job = serializers.UUIDField(source="job_id", read_only=True)

    class Meta(DeploymentListSerializer.Meta):
        fields = DeploymentListSerializer.Meta.fields + [
            "steps",
            "traffic",
            "events",
            "analyses",
            "override_reason",
            "job",
        ]

    def get_steps(self, d) -> list[dict]:
        from releases.plans import describe_step

        out = []
        for i, step in enumerate(d.steps):
            if i < d.current_step:
                state = "done"
            elif i == d.current_step and d.is_active:
                state = "current"
            elif i == d.current_step and d.status in ("failed", "aborted"):
                state = d.status  # where the rollout stopped
            else:
                state = "pending" if d.is_active or d.status == "succeeded" else "skipped"
            out.append({**step, "index": i, "state": state, "description": describe_step(step)})
        return out

    def get_traffic(self, d) -> list[dict]:
        return [
            {"at": t.created_at, "split": t.split, "new_percent": t.new_percent}
            for t in d.traffic.all()
        ]


class AnalysisTemplateSerializer(serializers.ModelSerializer):
    class Meta:
        model = AnalysisTemplate
        fields = ["name", "description", "metrics", "created_at"]
        read_only_fields = ["created_at"]
