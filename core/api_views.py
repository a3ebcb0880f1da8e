from drf_spectacular.utils import extend_schema
from rest_framework import generics

from core.models import AuditEvent, Job
from core.queries import filter_audit
from core.serializers import AuditEventSerializer, AuditFilterSerializer, JobSerializer


class AuditList(generics.ListAPIView):
    """Audit events, newest first. Filters: actor, action (prefix), object_type, object_id,
    since, until (ISO 8601)."""

    serializer_class = AuditEventSerializer

    @extend_schema(parameters=[AuditFilterSerializer])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        params = AuditFilterSerializer(data=self.request.query_params)
        params.is_valid(raise_exception=True)
        return filter_audit(AuditEvent.objects.all(), params.validated_data)


class JobList(generics.ListAPIView):
    """Background jobs, newest first; filter with ?status=."""

    serializer_class = JobSerializer

    def get_queryset(self):
        jobs = Job.objects.all()
        status = self.request.query_params.get("status")
        if status:
            jobs = jobs.filter(status=status)
        return jobs


class JobDetail(generics.RetrieveAPIView):
    serializer_class = JobSerializer
    queryset = Job.objects.prefetch_related("log_entries")

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "with_log": True}
