import logging

import django_rq
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.core.paginator import Paginator
from django.db import connection
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET, require_POST

from core import tokens
from core.actors import actor_for
from core.errors import DomainError
from core.forms import AuditFilterForm, ThrottledLoginForm, TokenForm
from core.models import AgentToken, AuditEvent, Job
from core.queries import filter_audit

logger = logging.getLogger(__name__)


@require_GET
def healthz(request):
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request):
    """For load balancers: 200 when PostgreSQL and Redis answer, else 503 naming which."""
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["postgresql"] = "ok"
    except Exception as exc:
        checks["postgresql"] = f"failed: {type(exc).__name__}"
    try:
        django_rq.get_connection("default").ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"failed: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JsonResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503
    )


class LoginView(auth_views.LoginView):
    template_name = "core/login.html"
    authentication_form = ThrottledLoginForm
    redirect_authenticated_user = True


def home(request):
    """The landing page: the health dashboard, what on-call looks at first."""
    for name in ("monitoring:dashboard", "environments:list", "core:jobs"):
        try:
            return redirect(reverse(name))
        except NoReverseMatch:
            continue
    return redirect("/jobs/")


def _page(request, queryset, per_page=50):
    return Paginator(queryset, per_page).get_page(request.GET.get("page"))


def audit_list(request):
    form = AuditFilterForm(request.GET or None)
    events = AuditEvent.objects.all()
    if form.is_valid():
        events = filter_audit(events, form.cleaned_data)
    return render(request, "core/audit.html", {"form": form, "page": _page(request, events)})


def jobs_list(request):
    jobs = Job.objects.all()
    status = request.GET.get("status")
    if status in Job.Status.values:
        jobs = jobs.filter(status=status)
    return render(
        request,
        "core/jobs.html",
        {"page": _page(request, jobs), "statuses": Job.Status.values, "status": status},
    )


def job_detail(request, pk):
    job = get_object_or_404(Job, pk=pk)
    entries = list(job.log_entries.all()[:2000])
    template = "htmx/job_log.html" if request.headers.get("HX-Request") else "core/job.html"
    return render(request, template, {"job": job, "entries": entries})


def tokens_list(request):
    actor = actor_for(request)
    if not actor.is_admin:
        return render(request, "core/forbidden.html", {"need": "admin"}, status=403)
    form = TokenForm(request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        try:
            created = tokens.create_token(
                actor,
                form.cleaned_data["name"],
                form.cleaned_data["scopes"],
                form.cleaned_data["expires_days"],
            )
        except DomainError as exc:
            for field, errors in exc.fields.items():
                for error in errors:
                    form.add_error(field if field in form.fields else None, error)
        else:
            form = TokenForm()
    return render(
        request,
        "core/tokens.html",
        {
            "form": form,
            "tokens": AgentToken.objects.select_related("created_by"),
            "created": created,
        },
        status=400 if form.errors else 200,
    )


@require_POST
def token_revoke(request, pk):
    actor = actor_for(request)
    if not actor.is_admin:
        return render(request, "core/forbidden.html", {"need": "admin"}, status=403)
    token = get_object_or_404(AgentToken, pk=pk)
    tokens.revoke_token(actor, token)
    messages.success(request, f"Token {token.name} revoked.")
    return redirect("core:tokens")
