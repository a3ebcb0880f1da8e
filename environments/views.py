"""Environment pages. Each view parses a form, calls one service function and renders; a
refused change (DomainError) comes back as form errors next to the fields, with status 400."""

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from core.actors import Actor, actor_for
from core.errors import DomainError
from core.roles import ADMIN, ENVIRONMENTS_WRITE, SECRETS_WRITE, role_for_scope
from environments import forms, services
from environments.models import ConfigVar, Environment, Secret


def _forbidden(request, scope: str):
    return render(request, "core/forbidden.html", {"need": role_for_scope(scope)}, status=403)


def _environment(name: str) -> Environment:
    environment = Environment.objects.filter(name=name).prefetch_related("freeze_windows").first()
    if environment is None:
        raise Http404(f"No environment named {name!r}.")
    return environment


def _show_errors(form, exc: DomainError, aliases: dict[str, str] | None = None) -> None:
    """The service's field errors next to the form's fields; the message on top when no field
    of the form is named."""
    placed = False
    for name, errors in exc.fields.items():
        name = (aliases or {}).get(name, name)
        if name in form.fields:
            for error in errors:
                form.add_error(name, error)
            placed = True
    if not placed:
        form.add_error(None, exc.message)


def _names() -> list[str]:
    return list(Environment.objects.values_list("name", flat=True))


def _detail_url(environment: Environment, anchor: str = "") -> str:
    url = reverse("environments:detail", args=[environment.name])
    return f"{url}#{anchor}" if anchor else url


def environment_list(request):
    """Every environment in promotion order, with counts, in a fixed number of queries."""
    return render(
        request,
        "environments/list.html",
        {"environments": Environment.objects.with_summary()},
    )


def _may_change(actor: Actor, environment: Environment, scope: str) -> bool:
    return actor.allows(scope) and (actor.is_admin or not environment.protected)


def _render_detail(request, environment: Environment, *, status: int = 200, **forms_):
    actor = actor_for(request)
    frozen = environment.active_freeze()
    context = {
        "environment": environment,
        "frozen": frozen,
        "config": ConfigVar.objects.filter(environment=environment),
        "secrets": Secret.objects.filter(environment=environment),
        "windows": environment.freeze_windows.all(),
        "edit_config": _may_change(actor, environment, ENVIRONMENTS_WRITE),
        "edit_secrets": _may_change(actor, environment, SECRETS_WRITE),
        "next_environment": Environment.objects.filter(order__gt=environment.order).first(),
        "previous_environment": Environment.objects.filter(order__lt=environment.order).last(),
        "config_form": forms.ConfigVarForm(frozen=bool(frozen), auto_id="config-%s"),
        "secret_form": forms.SecretForm(frozen=bool(frozen), auto_id="secret-%s"),
        "freeze_form": forms.FreezeWindowForm(auto_id="freeze-%s"),
        **forms_,
    }
    return render(request, "environments/detail.html", context, status=status)


def environment_detail(request, name: str):
    """The environment; ?key=&service= fills the config form with that variable to edit."""
    environment = _environment(name)
    key, service = request.GET.get("key"), request.GET.get("service", "")
    current = (
        ConfigVar.objects.filter(environment=environment, service=service, key=key).first()
        if key
        else None
    )
    if current is None:
        return _render_detail(request, environment)
    form = forms.ConfigVarForm(
        initial={"key": current.key, "value": current.value, "service": current.service},
        frozen=environment.active_freeze() is not None,
        auto_id="config-%s",
    )
    return _render_detail(request, environment, config_form=form)


def environment_create(request):
    actor = actor_for(request)
    if not actor.is_admin:
        return _forbidden(request, ADMIN)
    form = forms.EnvironmentForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        fields = dict(form.cleaned_data)
        try:
            environment = services.create_environment(actor, fields.pop("name"), **fields)
        except DomainError as exc:
            _show_errors(form, exc)
        else:
            messages.success(request, f"Environment {environment.name} created.")
            return redirect(_detail_url(environment))
    return render(
        request,
        "environments/form.html",
        {"form": form, "environment": None},
        status=400 if form.errors else 200,
    )


def environment_edit(request, name: str):
    actor = actor_for(request)
    if not actor.is_admin:
        return _forbidden(request, ADMIN)
    environment = _environment(name)
    form = forms.EnvironmentForm(request.POST or None, instance=environment)
    if request.method == "POST" and form.is_valid():
        try:
            services.update_environment(actor, environment, **form.cleaned_data)
        except DomainError as exc:
            _show_errors(form, exc)
        else:
            messages.success(request, f"Environment {environment.name} saved.")
            return redirect(_detail_url(environment))
    return render(
        request,
        "environments/form.html",
        # The form changed the instance in memory; the page names the stored environment.
        {"form": form, "environment": _environment(name)},
        status=400 if form.errors else 200,
    )


@require_POST
def config_change(request, name: str):
    """Sets one variable, or removes it when `remove` is ticked."""
    actor = actor_for(request)
    if not actor.allows(ENVIRONMENTS_WRITE):
        return _forbidden(request, ENVIRONMENTS_WRITE)
    environment = _environment(name)
    form = forms.ConfigVarForm(
        request.POST, frozen=environment.active_freeze() is not None, auto_id="config-%s"
    )
    if form.is_valid():
        data = form.cleaned_data
        value = None if data["remove"] else data["value"]
        try:
            services.set_config(
                actor,
                environment,
                {data["key"]: value},
                service=data["service"],
                override_reason=data.get("override_reason"),
            )
        except DomainError as exc:
            _show_errors(form, exc, {f"variables.{data['key']}": "key"})
        else:
            done = "removed" if value is None else "saved"
            messages.success(request, f"{environment.name}: {data['key']} {done}.")
            return redirect(_detail_url(environment, "config"))
    return _render_detail(request, environment, status=400, config_form=form)


@require_POST
def secret_change(request, name: str):
    """Sets one secret's value (a new version), or removes the secret."""
    actor = actor_for(request)
    if not actor.allows(SECRETS_WRITE):
        return _forbidden(request, SECRETS_WRITE)
    environment = _environment(name)
    form = forms.SecretForm(
        request.POST, frozen=environment.active_freeze() is not None, auto_id="secret-%s"
    )
    if form.is_valid():
        data = form.cleaned_data
        value = None if data["remove"] else data["value"]
        try:
            change = services.set_secret(
                actor,
                environment,
                data["name"],
                value,
                service=data["service"],
                override_reason=data.get("override_reason"),
            )
        except DomainError as exc:
            _show_errors(form, exc, {f"secret.{data['name']}": "name"})
        else:
            done = "removed" if change.version is None else f"set (version {change.version})"
            messages.success(request, f"{environment.name}: secret {change.name} {done}.")
            return redirect(_detail_url(environment, "secrets"))
    return _render_detail(request, environment, status=400, secret_form=form)


@require_POST
def freeze_add(request, name: str):
    actor = actor_for(request)
    if not actor.allows(ENVIRONMENTS_WRITE):
        return _forbidden(request, ENVIRONMENTS_WRITE)
    environment = _environment(name)
    form = forms.FreezeWindowForm(request.POST, auto_id="freeze-%s")
    if form.is_valid():
        fields = dict(form.cleaned_data)
        try:
            window = services.add_freeze_window(actor, environment, fields.pop("reason"), **fields)
        except DomainError as exc:
            _show_errors(form, exc)
        else:
            messages.success(request, f"{environment.name}: freeze {window.describe()} added.")
            return redirect(_detail_url(environment, "freeze"))
    return _render_detail(request, environment, status=400, freeze_form=form)


@require_POST
def freeze_remove(request, name: str, pk: int):
    actor = actor_for(request)
    if not actor.is_admin:
        return _forbidden(request, ADMIN)
    environment = _environment(name)
    form = forms.FreezeRemoveForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    try:
        window = services.get_freeze_window(environment, pk)
    except DomainError:
        raise Http404(f"{environment.name} has no freeze window {pk}.") from None
    services.remove_freeze_window(actor, window, reason)
    messages.success(request, f"{environment.name}: freeze {window.describe()} lifted.")
    return redirect(_detail_url(environment, "freeze"))


def parity_page(request):
    """Two environments side by side: what one has and the other lacks, and what differs."""
    names = _names()
    form = forms.ParityForm(request.GET or None, names=names)
    result = None
    if form.is_bound and form.is_valid():
        result = services.parity(
            _environment(form.cleaned_data["a"]), _environment(form.cleaned_data["b"])
        )
    elif not form.is_bound and len(names) >= 2:
        # A first look: the last two steps of the promotion chain, usually staging->production.
        form = forms.ParityForm(initial={"a": names[-2], "b": names[-1]}, names=names)
    return render(
        request,
        "environments/parity.html",
        {"form": form, "result": result, "names": names},
        status=400 if form.errors else 200,
    )


def promote_page(request):
    """Copy config variables from one environment to another.

    1. GET: choose source, target, service (the keys follow the source; HTMX refreshes them).
    2. POST step=preview: show each key's value in the target now and after.
    3. POST step=apply: copy them, then go to the target's page.
    """
    actor = actor_for(request)
    if not actor.allows(ENVIRONMENTS_WRITE):
        return _forbidden(request, ENVIRONMENTS_WRITE)
    names = _names()
    if request.method != "POST":
        initial = {**request.GET.dict(), "keys": request.GET.getlist("keys")}
        form = forms.PromoteForm(initial=initial, names=names)
        template = (
            "htmx/env_promote_keys.html"
            if request.headers.get("HX-Request")
            else "environments/promote.html"
        )
        return render(request, template, {"form": form})

    form = forms.PromoteForm(request.POST, names=names)
    if not form.is_valid():
        return render(request, "environments/promote.html", {"form": form}, status=400)
    data = form.cleaned_data
    source, target = _environment(data["source"]), _environment(data["target"])
    try:
        preview = services.preview_promotion(source, target, data["keys"], data["service"])
    except DomainError as exc:
        _show_errors(form, exc)
        return render(request, "environments/promote.html", {"form": form}, status=400)

    if request.POST.get("step") == "apply":
        try:
            # Computes the changes again inside its transaction: the target may have moved on.
            applied = services.promote_config(
                actor,
                source,
                target,
                data["keys"],
                service=data["service"],
                override_reason=data["override_reason"],
            )
        except DomainError as exc:
            _show_errors(form, exc)  # shown on the preview, next to the override reason
        else:
            keys = ", ".join(c.key for c in applied.changes) or "nothing to change"
            messages.success(request, f"{target.name}: promoted from {source.name}: {keys}.")
            return redirect(_detail_url(target, "config"))
    return render(
        request,
        "environments/promote_preview.html",
        {
            "form": form,
            "preview": preview,
            "keys": data["keys"],
            "source": source,
            "target": target,
            "target_frozen": target.active_freeze(),
        },
        status=400 if form.errors else 200,
    )
