from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import generics, serializers
from rest_framework.generics import get_object_or_404
from rest_framework.response import Response

from agents import services
from agents.base import REGISTRY
from core.api import accepted
from core.models import Job
from core.roles import ACTIONS_RUN, READ
from core.serializers import JobSerializer


class ActionRequestSerializer(serializers.Serializer):
    agent = serializers.CharField()
    action = serializers.CharField()
    params = serializers.DictField(required=False, default=dict)


def _catalog() -> list[dict]:
    return [
        {
            "agent": agent,
            "action": spec.name,
            "description": spec.description,
            "queue": spec.queue,
            "scopes": [ACTIONS_RUN] + ([spec.scope] if spec.scope else []),
            "params": [
                {
                    "name": p.name,
                    "type": p.type.__name__,
                    "required": p.required,
                    "default": p.default,
                    "help": p.help,
                    "secret": p.secret,
                }
                for p in spec.params
            ],
        }
        for agent, cls in sorted(REGISTRY.items())
        for spec in cls.actions.values()
    ]


class ActionList(generics.GenericAPIView):
    """GET: the actions agents offer, with their parameters. POST: start one; answers 202 with
    the job id to poll at /api/v1/actions/<id>/."""

    scopes = {"POST": ACTIONS_RUN}
    serializer_class = ActionRequestSerializer

    @extend_schema(
        responses=inline_serializer("ActionCatalog", {"results": serializers.ListField()})
    )
    def get(self, request):
        return Response({"results": _catalog()})

    @extend_schema(
        responses={
            202: inline_serializer(
                "ActionStarted",
                {
                    "id": serializers.UUIDField(),
                    "status": serializers.CharField(),
                    "url": serializers.CharField(),
                },
            )
        }
    )
    def post(self, request):
        body = ActionRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        job = services.start_action(
            request.actor,
            body.validated_data["agent"],
            body.validated_data["action"],
            body.validated_data.get("params"),
        )
        return accepted(
            {"id": str(job.pk), "status": job.status, "url": f"/api/v1/actions/{job.pk}/"}
        )


class ActionDetail(generics.RetrieveAPIView):
    """An action's job: status, log lines, result or error."""

    serializer_class = JobSerializer
    # The agent that started an action may follow it without the read scope.
    scopes = {"GET": (READ, ACTIONS_RUN)}

    def get_object(self):
        return get_object_or_404(
            Job.objects.prefetch_related("log_entries"),
            pk=self.kwargs["pk"],
            func="agents.jobs.run_action",
        )

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "with_log": True}
