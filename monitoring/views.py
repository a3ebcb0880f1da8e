"""Monitoring pages: the overview dashboard, incidents, on-call, alert policies and health
checks (with their forms), a service's health, logs, dashboard export, and the deployment
page's revisions chart. Each view parses, calls one service function (or one read) and
renders; one view serves a full page and, to HTMX, its fragment (templates/htmx/mon_*)."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Case, IntegerField, Value, When
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from core.actors import actor_for
from core.errors import DomainError
from core.roles import INCIDENTS_WRITE, role_for_scope
from environments.models import Environment
from monitoring import dashboards, forms, services
from monitoring.models import AlertPolicy, HealthCheck, Incident
from releases.models import Deployment, Service


def _forbidden(request, scope: str):
    return render(request, "core/forbidden.html", {"need": role_for_scope(scope)}, status=403)


def _htmx(request) -> bool:
    return request.headers.get("HX-Request") == "true"


def _incident(pk: int) -> Incident:
    try:
        return services.get_incident(pk)
    except DomainError:
        raise Http404(f"No incident #{pk}.") from None


def overview(request):
    """Services x environments; HTMX polls the table every 10 s."""
    data = dashboards.overview()
    template = "htmx/mon_overview.html" if _htmx(request) else "monitoring/overview.html"
    return render(request, template, {"overview": data})


def oncall(request):
    """Open incidents: unacknowledged first, then by severity and age; and the ones I lead."""
    actor = actor_for(request)
    unacknowledged_first = Case(
        When(state__in=Incident.UNACKNOWLEDGED, then=Value(0)),
        default=Value(1),
        output_field=IntegerField(),
    )
    incidents = list(
        services.open_incidents()
        .select_related("commander")
        .prefetch_related("services", "environments")
        .order_by(unacknowledged_first, "severity", "opened_at")
    )
    mine = [i for i in incidents if actor.user_id and i.commander_id == actor.user_id]
    context = {"incidents": incidents, "mine": mine, "now": timezone.now()}
    template = "htmx/mon_oncall.html" if _htmx(request) else "monitoring/oncall.html"
    return render(request, template, context)


def incident_list(request):
    form = forms.IncidentFilterForm(request.GET or None)
    incidents = Incident.objects.select_related("commander").prefetch_related(
        "services", "environments"
    )
    if form.is_valid():
        data = form.cleaned_data
        if data["state"] == "open":
            incidents = incidents.filter(state__in=Incident.OPEN)
        elif data["state"]:
            incidents = incidents.filter(state=data["state"])
        if data["severity"]:
            incidents = incidents.filter(severity=data["severity"])
        if data["service"]:
            incidents = incidents.filter(services__name=data["service"])
        if data["environment"]:
            incidents = incidents.filter(environments__name=data["environment"])
    page = Paginator(incidents.distinct(), 50).get_page(request.GET.get("page"))
    return render(request, "monitoring/incidents.html", {"form": form, "page": page})


def incident_create(request):
    actor = actor_for(request)
    if not actor.allows(INCIDENTS_WRITE):
        return _forbidden(request, INCIDENTS_WRITE)
    form = forms.IncidentForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            opened = services.open_incident(
                actor,
                data["title"],
                severity=data["severity"],
                services=list(data["services"]),
                environments=list(data["environments"]),
                description=data["description"],
            )
        except DomainError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, f"Incident #{opened.incident.pk} opened.")
            return redirect("monitoring:incident", pk=opened.incident.pk)
    return render(
        request, "monitoring/incident_form.html", {"form": form}, status=400 if form.errors else 200
    )


def _incident_context(request, incident: Incident) -> dict:
    return {
        "incident": incident,
        "events": list(incident.events.all()),
        "changes": services.what_changed(incident),
        "pairs": [(s, e) for s in incident.services.all() for e in incident.environments.all()],
        "now": timezone.now(),
    }


def incident_detail(request, pk: int):
    incident = _incident(pk)
    context = _incident_context(request, incident)
    context.update(
        note_form=forms.NoteForm(auto_id="note-%s"),
        edit_form=forms.IncidentEditForm(
            initial={
                "severity": incident.severity,
                "commander": incident.commander.get_username() if incident.commander else "",
            },
            auto_id="edit-%s",
        ),
        postmortem_form=forms.PostmortemForm(
            initial={f: getattr(incident, f) for f in services.POSTMORTEM_FIELDS},
            auto_id="pm-%s",
        ),
    )
    return render(request, "monitoring/incident.html", context)


def incident_timeline(request, pk: int):
    """The part of the incident page that refreshes itself: state, timeline, what changed."""
    incident = _incident(pk)
    return render(request, "htmx/mon_incident_live.html", _incident_context(request, incident))


@require_POST
def incident_action(request, pk: int, action: str):
    """acknowledge, resolve, reopen, note, edit, postmortem, rollback, freeze."""
    actor = actor_for(request)
    if not actor.allows(INCIDENTS_WRITE):
        return _forbidden(request, INCIDENTS_WRITE)
    incident = _incident(pk)
    post = request.POST
    try:
        if action == "acknowledge":
            services.acknowledge(actor, incident)
            done = "Acknowledged."
        elif action == "resolve":
            services.resolve(actor, incident, post.get("note", ""))
            done = "Resolved. Write the postmortem below."
        elif action == "reopen":
            services.reopen(actor, incident, post.get("note", ""))
            done = "Reopened."
        elif action == "note":
            services.add_event(actor, incident, "note", post.get("message", ""))
            done = "Note added."
        elif action == "edit":
            form = forms.IncidentEditForm(post)
            if not form.is_valid():
                raise DomainError("Invalid severity or commander.")
            services.update_incident(actor, incident, **form.cleaned_data)
            done = "Saved."
        elif action == "postmortem":
            form = forms.PostmortemForm(post)
            form.is_valid()
            services.update_incident(actor, incident, **form.cleaned_data)
            done = "Postmortem saved."
        elif action == "rollback":
            d = services.remediate_rollback(
                actor, incident, post.get("service", ""), post.get("environment", "")
            )
            done = f"Rollback #{d.pk} to {d.release.version} started."
        elif action == "freeze":
            window = services.remediate_freeze(
                actor, incident, post.get("service", ""), post.get("environment", "")
            )
            done = (
                f"{window.environment.name} frozen until {window.ends_at:%H:%M} UTC "
                "(every service there)."
            )
        else:
            raise Http404(f"No incident action {action!r}.")
    except DomainError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, done)
    return redirect("monitoring:incident", pk=incident.pk)


def _show_errors(form, exc: DomainError) -> None:
    """The service's field errors next to the form's fields; its message on top otherwise."""
    placed = False
    for name, errors in exc.fields.items():
        if name in form.fields:
            for error in errors:
                form.add_error(name, error)
            placed = True
    if not placed:
        form.add_error(None, exc.message)


def _policy(pk: int) -> AlertPolicy:
    try:
        return services.get_alert_policy(pk)
    except DomainError:
        raise Http404(f"No alert policy {pk}.") from None


def _check(pk: int) -> HealthCheck:
    try:
        return services.get_health_check(pk)
    except DomainError:
        raise Http404(f"No health check {pk}.") from None


def _submit(request, form, save, done_message, next_url):
    """For a valid POSTed form: `save(cleaned_data)`, a success message and a redirect to
    `next_url`. Refusals from the service land on the form's fields; then None."""
    if request.method != "POST" or not form.is_valid():
        return None
    try:
        saved = save(dict(form.cleaned_data))
    except DomainError as exc:
        _show_errors(form, exc)
        return None
    messages.success(request, done_message(saved))
    return redirect(next_url)


def alert_policies(request):
    """The policies; a POST (incidents:write) creates one from the form under the list."""
    actor = actor_for(request)
    form = forms.AlertPolicyForm(request.POST or None, auto_id="policy-%s")
    if request.method == "POST" and not actor.allows(INCIDENTS_WRITE):
        return _forbidden(request, INCIDENTS_WRITE)
    done = _submit(
        request,
        form,
        lambda data: services.create_alert_policy(actor, **data),
        lambda policy: f"Alert policy {policy.name} created.",
        "monitoring:alert-policies",
    )
    if done:
        return done
    policies = AlertPolicy.objects.select_related("service", "environment")
    return render(
        request,
        "monitoring/alert_policies.html",
        {"policies": policies, "form": form},
        status=400 if form.errors else 200,
    )


def alert_policy_edit(request, pk: int):
    actor = actor_for(request)
    if not actor.allows(INCIDENTS_WRITE):
        return _forbidden(request, INCIDENTS_WRITE)
    policy = _policy(pk)
    form = forms.AlertPolicyForm(
        request.POST or None, initial=forms.AlertPolicyForm.initial_for(policy), auto_id="policy-%s"
    )
    done = _submit(
        request,
        form,
        lambda data: services.update_alert_policy(actor, policy, **data),
        lambda saved: f"Alert policy {saved.name} saved.",
        "monitoring:alert-policies",
    )
    if done:
        return done
    return render(
        request,
        "monitoring/alert_policy_form.html",
        {"policy": policy, "form": form},
        status=400 if form.errors else 200,
    )


@require_POST
def alert_policy_delete(request, pk: int):
    actor = actor_for(request)
    if not actor.allows(INCIDENTS_WRITE):
        return _forbidden(request, INCIDENTS_WRITE)
    policy = _policy(pk)
    services.delete_alert_policy(actor, policy)
    messages.success(request, f"Alert policy {policy.name} deleted.")
    return redirect("monitoring:alert-policies")


def health_checks(request):
    """Every health check with its status; a POST (incidents:write) creates one."""
    actor = actor_for(request)
    form = forms.HealthCheckForm(request.POST or None, auto_id="check-%s")
    if request.method == "POST" and not actor.allows(INCIDENTS_WRITE):
        return _forbidden(request, INCIDENTS_WRITE)
    done = _submit(
        request,
        form,
        lambda data: services.create_health_check(
            actor, data.pop("service"), data.pop("environment"), **data
        ),
        lambda check: f"Health check {check} created.",
        "monitoring:health-checks",
    )
    if done:
        return done
    checks = HealthCheck.objects.select_related("service", "environment")
    return render(
        request,
        "monitoring/health_checks.html",
        {"checks": checks, "form": form},
        status=400 if form.errors else 200,
    )


def health_check_edit(request, pk: int):
    actor = actor_for(request)
    if not actor.allows(INCIDENTS_WRITE):
        return _forbidden(request, INCIDENTS_WRITE)
    check = _check(pk)
    form = forms.HealthCheckForm(
        request.POST or None, initial=forms.HealthCheckForm.initial_for(check), auto_id="check-%s"
    )
    done = _submit(
        request,
        form,
        lambda data: services.update_health_check(actor, check, **data),
        lambda saved: f"Health check {saved} saved.",
        "monitoring:health-checks",
    )
    if done:
        return done
    return render(
        request,
        "monitoring/health_check_form.html",
        {"check": check, "form": form},
        status=400 if form.errors else 200,
    )


@require_POST
def health_check_delete(request, pk: int):
    actor = actor_for(request)
    if not actor.allows(INCIDENTS_WRITE):
        return _forbidden(request, INCIDENTS_WRITE)
    check = _check(pk)
    label = str(check)
    services.delete_health_check(actor, check)
    messages.success(request, f"Health check {label} deleted.")
    return redirect("monitoring:health-checks")


def _service(name: str) -> Service:
    service = Service.objects.filter(name=name).first()
    if service is None:
        raise Http404(f"No service named {name!r}.")
    return service


def _environment(request) -> Environment:
    name = request.GET.get("environment")
    environments = Environment.objects.all()
    environment = environments.filter(name=name).first() if name else environments.first()
    if environment is None:
        raise Http404(f"No environment named {name!r}." if name else "No environment yet.")
    return environment


def service_health(request, name: str):
    """Charts over ?range=1h|6h|24h|7d with deployment markers, and the health checks."""
    service = _service(name)
    environment = _environment(request)
    range_key = request.GET.get("range", "1h")
    if range_key not in dashboards.RANGES:
        range_key = "1h"
    data = dashboards.service_page(service, environment, range_key)
    chart_data = {
        "series": data["series"],
        "markers": data["markers"],
        "agent": data["agent"],
        "history": data["history"],
        "since": data["since"].timestamp() * 1000,
        "until": timezone.now().timestamp() * 1000,
    }
    context = {
        "service": service,
        "environment": environment,
        "environments": Environment.objects.all(),
        "range": range_key,
        "ranges": list(dashboards.RANGES),
        "chart_data": chart_data,
        **data,
    }
    return render(request, "monitoring/service_health.html", context)


def service_logs(request, name: str):
    """The service's revision logs: ?environment=&q=&since=&revision= (HTMX: the list)."""
    service = _service(name)
    environment = _environment(request)
    form = forms.LogFilterForm(request.GET or None)
    q, since, revision = "", None, ""
    if form.is_valid():
        q = form.cleaned_data["q"]
        since = form.cleaned_data["since"]
        revision = form.cleaned_data["revision"]
    since = since or timezone.now() - timedelta(hours=1)
    logs = dashboards.service_logs(
        environment, service.name, revision=revision or None, since=since, query=q or None
    )
    context = {
        "service": service,
        "environment": environment,
        "environments": Environment.objects.all(),
        "form": form,
        "logs": logs,
        "since": since,
    }
    template = "htmx/mon_logs.html" if _htmx(request) else "monitoring/logs.html"
    return render(request, template, context)


def service_dashboard_export(request, name: str):
    """A Cloud Monitoring dashboard JSON for the service, as a download."""
    service = _service(name)
    response = JsonResponse(dashboards.cloud_dashboard(service), json_dumps_params={"indent": 2})
    response["Content-Disposition"] = f'attachment; filename="{service.name}-dashboard.json"'
    return response


def revisions_chart(request, name: str):
    """The deployment page's chart fragment: error rate and p95 latency of ?revisions=new,stable
    in ?environment= from ?since= until ?until= (or now). With ?deployment=, it refreshes itself
    every 10 s while that deployment is active, ends the window when it finished, and charts
    the deployment's own revisions when ?revisions= is empty."""
    service = _service(name)
    form = forms.RevisionsChartForm(request.GET)
    if not form.is_valid():
        context = {"service": service, "form": form, "chart": None, "live": False}
        return render(request, "htmx/mon_revisions_chart.html", context, status=400)
    query = form.cleaned_data
    environment = Environment.objects.filter(name=query["environment"]).first()
    if environment is None:
        raise Http404(f"No environment named {query['environment']!r}.")
    revisions, until, live = query["revisions"], query["until"], query["until"] is None
    deployment = None
    if query["deployment"]:
        deployment = Deployment.objects.filter(pk=query["deployment"], service=service).first()
    if deployment is not None:
        # A page opened before the engine created the new revision learns it on a refresh.
        if not revisions and deployment.new_revision:
            revisions = [r for r in (deployment.new_revision, deployment.stable_revision) if r]
        if not deployment.is_active:
            live = False
            until = until or deployment.finished_at
    until = until or timezone.now()
    chart = dashboards.revisions_chart(service, environment, revisions, query["since"], until)
    context = {
        "service": service,
        "environment": environment,
        "revisions": revisions,
        "chart": chart,
        "live": live,
        "url": request.get_full_path(),
    }
    return render(request, "htmx/mon_revisions_chart.html", context)
