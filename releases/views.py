"""Services and deployments pages. Each view parses a form, calls one function of
releases.services and renders; a refused request (DomainError) comes back as form errors or a
message on the same page, with the error's status (400, 403 or 409)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Prefetch
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from core.actors import Actor, actor_for
from core.errors import DomainError
from core.roles import APPROVE, DEPLOYMENTS_WRITE, RELEASES_WRITE, role_for_scope
from environments.models import Environment
from releases import forms, services
from releases.models import AnalysisRun, Deployment, Release, Service
from releases.serializers import DeploymentDetailSerializer

logger = logging.getLogger(__name__)

Status = Deployment.Status

# How long a page waits for the platform to describe a service. The adapter retries a dead
# endpoint for a minute; a page must not.
PLATFORM_WAIT_S = 1.5


def _forbidden(request, scope: str):
    return render(request, "core/forbidden.html", {"need": role_for_scope(scope)}, status=403)


def _page(request, queryset, per_page: int):
    return Paginator(queryset, per_page).get_page(request.GET.get("page"))


def _service(name: str) -> Service:
    service = Service.objects.filter(name=name).first()
    if service is None:
        raise Http404(f"No service named {name!r}.")
    return service


def _show_errors(form, exc: DomainError) -> None:
    """The service's field errors next to the form's fields ("params.steps.0.set_weight" goes
    to `params`), each refusal on top; the message on top when no field is named."""
    placed = False
    for name, errors in exc.fields.items():
        base = name.split(".", 1)[0]
        for error in errors:
            if base in form.fields:
                form.add_error(base, error if name == base else f"{name}: {error}")
            elif name == "refusals":
                form.add_error(None, error)
            else:
                continue
            placed = True
    if not placed:
        form.add_error(None, exc.message)


# What the platform says, without waiting on it


class _Lookup:
    """One platform_state call in a daemon thread: a page waits for it at most
    PLATFORM_WAIT_S, and the thread, stuck retrying a dead endpoint, holds no request."""

    def __init__(self, service: Service, environment: Environment):
        self.started = time.monotonic()
        self.done = threading.Event()
        self.state = None
        self.error = ""
        thread = threading.Thread(
            target=self._run,
            args=(service, environment),
            name=f"platform-state-{service.name}-{environment.name}",
            daemon=True,
        )
        thread.start()

    def _run(self, service: Service, environment: Environment) -> None:
        try:
            self.state = services.platform_state(service, environment)
        except services.PlatformUnavailable as exc:
            logger.warning(
                "service %s: no platform state in %s: %s", service.name, environment.name, exc
            )
            self.error = str(exc)
        finally:
            self.done.set()


_lookups: dict[tuple, _Lookup] = {}
_lookups_lock = threading.Lock()


@dataclass
class PlatformView:
    answered: bool
    state: object | None = None  # agents.devops.cloud_run.ServiceState
    error: str = ""


def _platform_states(service: Service, environments: list[Environment]) -> dict[int, PlatformView]:
    """The service as each environment's platform reports it, asked in parallel.

    1. Start a lookup per environment, unless one for the same platform is still running
       (a dead endpoint keeps its lookup busy: later pages reuse it instead of piling up).
    2. Wait for them together, at most PLATFORM_WAIT_S; a lookup that was already late
       when this page came is not waited for again.
    """
    now = time.monotonic()
    lookups = {}
    with _lookups_lock:
        for env in environments:
            key = (service.name, tuple(sorted(env.platform_settings().items())))
            lookup = _lookups.get(key)
            if lookup is None or lookup.done.is_set():
                lookup = _lookups[key] = _Lookup(service, env)
            lookups[env.pk] = lookup

    deadline = now + PLATFORM_WAIT_S
    views = {}
    for pk, lookup in lookups.items():
        if lookup.started >= now - PLATFORM_WAIT_S:
            lookup.done.wait(max(0.0, deadline - time.monotonic()))
        if lookup.done.is_set():
            views[pk] = PlatformView(True, lookup.state, lookup.error)
        else:
            views[pk] = PlatformView(False)
    return views


# Current releases and active deployments, for many services at once


def _current_and_active(service_ids) -> tuple[dict, dict]:
    """{(service_id, environment_id): deployment} for the current release (as
    services.current_release defines it) and for the active deployment, in two queries."""
    current = (
        Deployment.objects.filter(service_id__in=service_ids, status=Status.SUCCEEDED)
        .select_related("release")
        .order_by("service_id", "environment_id", "-finished_at", "-id")
        .distinct("service_id", "environment_id")
    )
    active = Deployment.objects.filter(
        service_id__in=service_ids, status__in=Deployment.ACTIVE
    ).select_related("release")
    return (
        {(d.service_id, d.environment_id): d for d in current},
        {(d.service_id, d.environment_id): d for d in active},
    )


@dataclass
class EnvironmentCell:
    environment: Environment
    current: Deployment | None
    active: Deployment | None
    platform: PlatformView | None = None


# Services


def service_list(request):
    """Every service with its current release and active deployment per environment, in a
    fixed number of queries; POST registers a service (releases:write)."""
    actor = actor_for(request)
    form = forms.ServiceForm(request.POST or None, auto_id="service-%s")
    if request.method == "POST":
        if not actor.allows(RELEASES_WRITE):
            return _forbidden(request, RELEASES_WRITE)
        if form.is_valid():
            fields = dict(form.cleaned_data)
            try:
                service = services.register_service(actor, fields.pop("name"), **fields)
            except DomainError as exc:
                _show_errors(form, exc)
            else:
                messages.success(request, f"Service {service.name} registered.")
                return redirect("releases:service", service.name)

    environments = list(Environment.objects.all())
    page = _page(request, Service.objects.all(), 50)
    current, active = _current_and_active([s.pk for s in page])
    rows = [
        (
            service,
            [
                EnvironmentCell(
                    env, current.get((service.pk, env.pk)), active.get((service.pk, env.pk))
                )
                for env in environments
            ],
        )
        for service in page
    ]
    return render(
        request,
        "releases/service_list.html",
        {"page": page, "rows": rows, "environments": environments, "form": form},
        status=400 if form.errors else 200,
    )


def _deploy_form(service: Service, actor: Actor, data=None) -> forms.DeployForm:
    return forms.DeployForm(
        data,
        environments=list(Environment.objects.values_list("name", flat=True)),
        versions=list(service.releases.values_list("version", flat=True)),
        default_strategy=service.default_strategy,
        may_override=actor.is_admin,
        auto_id="deploy-%s",
    )


def _render_service(request, service: Service, *, status: int = 200, **extra):
    actor = actor_for(request)
    environments = list(Environment.objects.all())
    current, active = _current_and_active([service.pk])
    platform = _platform_states(service, environments)
    cells = [
        EnvironmentCell(
            env,
            current.get((service.pk, env.pk)),
            active.get((service.pk, env.pk)),
            platform[env.pk],
        )
        for env in environments
    ]
    context = {
        "service": service,
        "releases": _page(request, service.releases.all(), 20),
        "cells": cells,
        "recent": Deployment.objects.filter(service=service).select_related(
            "environment", "release"
        )[:10],
        "deploy_form": _deploy_form(service, actor),
        "release_form": forms.ReleaseForm(auto_id="release-%s"),
        **extra,
    }
    return render(request, "releases/service_detail.html", context, status=status)


def service_detail(request, name: str):
    return _render_service(request, _service(name))


@require_POST
def release_create(request, name: str):
    actor = actor_for(request)
    if not actor.allows(RELEASES_WRITE):
        return _forbidden(request, RELEASES_WRITE)
    service = _service(name)
    form = forms.ReleaseForm(request.POST, auto_id="release-%s")
    status = 400
    if form.is_valid():
        fields = dict(form.cleaned_data)
        try:
            release = services.register_release(
                actor, service, fields.pop("version"), fields.pop("artifact"), **fields
            )
        except DomainError as exc:
            _show_errors(form, exc)
            status = exc.status
        else:
            messages.success(request, f"{service.name} {release.version} registered.")
            return redirect("releases:service", service.name)
    return _render_service(request, service, status=status, release_form=form)


@require_POST
def service_deploy(request, name: str):
    """Requests a deployment, or with action=check only shows the plan and every reason it
    would be refused or held (the dry run)."""
    actor = actor_for(request)
    if not actor.allows(DEPLOYMENTS_WRITE):
        return _forbidden(request, DEPLOYMENTS_WRITE)
    service = _service(name)
    form = _deploy_form(service, actor, request.POST)
    if not form.is_valid():
        return _render_service(request, service, status=400, deploy_form=form)
    data = form.cleaned_data
    environment = Environment.objects.get(name=data["environment"])
    release = Release.objects.get(service=service, version=data["version"])
    dry_run = request.POST.get("action") == "check"

    try:
        result = services.request_deployment(
            actor,
            service,
            environment,
            release,
            data["strategy"] or None,
            data["params"],
            override_reason=data.get("override_reason") or "",
            dry_run=dry_run,
        )
    except DomainError as exc:
        _show_errors(form, exc)
        return _render_service(request, service, status=exc.status, deploy_form=form)
    if dry_run:
        check = {**result.as_dict(), "environment": environment, "release": release}
        return _render_service(request, service, deploy_form=form, check=check)
    messages.success(
        request,
        f"Deployment #{result.pk}: {service.name} {release.version} to {environment.name} "
        f"({result.status}).",
    )
    return redirect("releases:deployment", result.pk)


@require_POST
def service_rollback(request, name: str):
    """The previous successful release of an environment back at 100%."""
    actor = actor_for(request)
    if not actor.allows(DEPLOYMENTS_WRITE):
        return _forbidden(request, DEPLOYMENTS_WRITE)
    service = _service(name)
    form = forms.RollbackForm(request.POST)
    environment = (
        Environment.objects.filter(name=form.cleaned_data["environment"]).first()
        if form.is_valid()
        else None
    )
    if environment is None:
        messages.error(request, "Choose an environment to roll back.")
        return _render_service(request, service, status=400)
    try:
        deployment = services.rollback(actor, service, environment, form.cleaned_data["reason"])
    except DomainError as exc:
        messages.error(request, exc.message)
        return _render_service(request, service, status=exc.status)
    messages.success(
        request,
        f"Rollback #{deployment.pk}: {service.name} {deployment.release.version} back in "
        f"{environment.name}.",
    )
    return redirect("releases:deployment", deployment.pk)


# Deployments


def deployment_list(request):
    """Deployments, newest first, filtered by service, environment and status."""
    form = forms.DeploymentFilterForm(
        request.GET or None,
        services=list(Service.objects.values_list("name", flat=True)),
        environments=list(Environment.objects.values_list("name", flat=True)),
    )
    deployments = Deployment.objects.select_related("service", "environment", "release")
    if form.is_valid():
        data = form.cleaned_data
        if data["service"]:
            deployments = deployments.filter(service__name=data["service"])
        if data["environment"]:
            deployments = deployments.filter(environment__name=data["environment"])
        if data["status"]:
            deployments = deployments.filter(status=data["status"])
    return render(
        request,
        "releases/deployment_list.html",
        {
            "form": form,
            "page": _page(request, deployments, 25),
            "filtered": form.is_bound,
            "service_count": len(form.fields["service"].choices) - 1,
        },
    )


def _deployment(pk: int) -> Deployment:
    deployment = (
        Deployment.objects.select_related("service", "environment", "release", "rollback_of")
        .prefetch_related(
            "events",
            "traffic",
            Prefetch("analyses", AnalysisRun.objects.prefetch_related("measurements")),
        )
        .filter(pk=pk)
        .first()
    )
    if deployment is None:
        raise Http404(f"No deployment #{pk}.")
    return deployment


def _buttons(actor: Actor, d: Deployment) -> dict[str, bool]:
    """The actions this person may take on the deployment in its current state."""
    write = actor.allows(DEPLOYMENTS_WRITE)
    is_current = (
        d.status == Status.SUCCEEDED
        and getattr(services.current_release(d.service, d.environment), "pk", None) == d.pk
    )
    buttons = {
        # Never one's own request: the service refuses it, so the page does not offer it.
        "approve": d.status == Status.AWAITING_APPROVAL
        and actor.allows(APPROVE)
        and d.requested_by != actor.label,
        "promote": write and d.status in (Status.RUNNING, Status.PAUSED),
        "pause": write and d.status == Status.RUNNING,
        "resume": write and d.status == Status.PAUSED,
        "abort": write and d.is_active,
        "retry": write and d.status in (Status.FAILED, Status.ABORTED),
        "rollback": write and is_current,
    }
    buttons["any"] = any(buttons.values())
    return buttons


def _render_deployment(request, d: Deployment, *, status: int = 200):
    weight = d.new_weight
    context = {
        "deployment": d,
        "steps": DeploymentDetailSerializer().get_steps(d),  # the same states as the API
        "weight": weight,
        "stable_weight": 100 - weight if d.stable_revision else 0,
        "buttons": _buttons(actor_for(request), d),
    }
    if request.headers.get("HX-Request"):
        return render(request, "htmx/deploy_live.html", context, status=status)
    return render(request, "releases/deployment_detail.html", context, status=status)


def deployment_detail(request, pk: int):
    """The deployment page; its live part alone for HTMX polling (HX-Request)."""
    return _render_deployment(request, _deployment(pk))


# Each action: the scope it needs, and how the service function is called.
ACTIONS = {
    "approve": (APPROVE, lambda actor, d, data: services.approve(actor, d)),
    "reject": (APPROVE, lambda actor, d, data: services.reject(actor, d, data["reason"])),
    "promote": (
        DEPLOYMENTS_WRITE,
        lambda actor, d, data: services.promote(actor, d, full=data["full"]),
    ),
    "pause": (DEPLOYMENTS_WRITE, lambda actor, d, data: services.pause(actor, d)),
    "resume": (DEPLOYMENTS_WRITE, lambda actor, d, data: services.resume(actor, d)),
    "abort": (DEPLOYMENTS_WRITE, lambda actor, d, data: services.abort(actor, d, data["reason"])),
    "retry": (DEPLOYMENTS_WRITE, lambda actor, d, data: services.retry(actor, d)),
}
DONE = {
    "approve": "approved",
    "reject": "rejected",
    "promote": "promoted",
    "pause": "paused",
    "resume": "resumed",
    "abort": "abort requested; traffic goes back to stable",
    "retry": "retried",
}


@require_POST
def deployment_action(request, pk: int, action: str):
    if action not in ACTIONS:
        raise Http404(f"No deployment action {action!r}.")
    scope, call = ACTIONS[action]
    actor = actor_for(request)
    if not actor.allows(scope):
        return _forbidden(request, scope)
    deployment = _deployment(pk)
    form = forms.ActionForm(request.POST)
    data = form.cleaned_data if form.is_valid() else {"reason": "", "full": False}

    try:
        result = call(actor, deployment, data)
    except DomainError as exc:
        messages.error(request, exc.message)
        return _render_deployment(request, _deployment(pk), status=exc.status)
    what = "promoted to 100%" if action == "promote" and data["full"] else DONE[action]
    if result.pk != deployment.pk:
        what += f" as deployment #{result.pk}"
    messages.success(request, f"Deployment #{deployment.pk}: {what}.")
    return redirect("releases:deployment", result.pk)
