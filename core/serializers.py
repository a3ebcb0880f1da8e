from rest_framework import serializers

from core.models import AuditEvent, Job


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "actor",
            "action",
            "object_type",
            "object_id",
            "object_repr",
            "summary",
            "source_ip",
            "request_id",
            "hash",
        ]


class AuditFilterSerializer(serializers.Serializer):
    actor = serializers.CharField(required=False)
    action = serializers.CharField(required=False)
    object_type = serializers.CharField(required=False)
    object_id = serializers.CharField(required=False)
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)


class JobSerializer(serializers.ModelSerializer):
    log = serializers.SerializerMethodField()
    params = serializers.JSONField(source="display_params", read_only=True)

    class Meta:
        model = Job
        fields = [
            "id",
            "name",
            "status",
            "queue",
            "func",
            "params",
            "actor",
            "created_at",
            "started_at",
            "finished_at",
            "result",
            "error",
            "log",
        ]

    def get_log(self, job) -> list[dict]:
        if not self.context.get("with_log"):
            return []
        return [
            {"time": e.created_at, "level": e.level, "message": e.message}
            for e in job.log_entries.all()
        ]
