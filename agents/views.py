import json

from django.shortcuts import redirect, render

from agents import services
from agents.api import _catalog
from core.actors import actor_for
from core.errors import DomainError
from core.models import Job


def actions_page(request):
    """The agents' actions, and a form to start one with JSON params."""
    error, fields, chosen, raw_params = None, {}, request.POST.get("action", ""), "{}"
    status = 200
    if request.method == "POST":
        raw_params = request.POST.get("params", "") or "{}"
        agent, _, action = chosen.partition(".")
        try:
            params = json.loads(raw_params)
        except json.JSONDecodeError as exc:
            error, fields = "Params are not valid JSON.", {"params": [f"Expected JSON: {exc}"]}
            status = 400
        else:
            try:
                job = services.start_action(actor_for(request), agent, action, params)
            except DomainError as exc:
                # A permission refusal is a 403, so that it reads as "not allowed", not "fix it".
                error, fields, status = exc.message, exc.fields, exc.status
            else:
                return redirect("core:job", pk=job.pk)
    recent = Job.objects.filter(func="agents.jobs.run_action")[:20]
    return render(
        request,
        "agents/actions.html",
        {
            "catalog": _catalog(),
            "recent": recent,
            "error": error,
            "fields": fields,
            "chosen": chosen,
            "raw_params": raw_params,
        },
        status=status,
    )
