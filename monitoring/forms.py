"""Forms of the monitoring pages. They check the shape of the input; the rules are the
services' and come back as DomainError."""

from django import forms

from environments.models import Environment
from monitoring.models import AlertPolicy, HealthCheck, Incident, Severity
from releases.models import Service


class IncidentForm(forms.Form):
    title = forms.CharField(max_length=200)
    severity = forms.ChoiceField(choices=Severity.choices, initial=Severity.SEV3)
    services = forms.ModelMultipleChoiceField(
        queryset=Service.objects.all(), required=False, to_field_name="name"
    )
    environments = forms.ModelMultipleChoiceField(
        queryset=Environment.objects.all(), required=False, to_field_name="name"
    )
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)


class IncidentFilterForm(forms.Form):
    state = forms.ChoiceField(
        required=False,
        choices=[("", "any"), ("open", "open"), *Incident.State.choices],
    )
    severity = forms.ChoiceField(required=False, choices=[("", "any"), *Severity.choices])
    service = forms.CharField(required=False)
    environment = forms.CharField(required=False)


class NoteForm(forms.Form):
    message = forms.CharField(
        label="Note", widget=forms.Textarea(attrs={"rows": 2}), max_length=10000
    )


class IncidentEditForm(forms.Form):
    severity = forms.ChoiceField(choices=Severity.choices)
    commander = forms.CharField(
        required=False, max_length=150, help_text="A username; empty for none."
    )


class PostmortemForm(forms.Form):
    summary = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    impact = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    root_cause = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    action_items = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), required=False, help_text="One per line."
    )


class LogFilterForm(forms.Form):
    environment = forms.CharField(required=False)
    q = forms.CharField(required=False, max_length=200, label="Text")
    since = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    revision = forms.CharField(required=False, max_length=300)


def _by_name(model):
    return forms.ModelChoiceField(queryset=model.objects.all(), to_field_name="name")


class AlertPolicyForm(forms.Form):
    """The condition, severity, channels and scope of an alert policy; names match the model's
    fields so that the services' field errors land next to them."""

    name = forms.CharField(max_length=100)
    service = _by_name(Service)
    environment = _by_name(Environment)
    metric = forms.CharField(
        max_length=200,
        initial="error_rate",
        help_text="error_rate, request_rate, latency_p50/p95/p99, or a metric agents post.",
    )
    window_s = forms.IntegerField(label="Window (s)", min_value=1, initial=300)
    comparison = forms.ChoiceField(choices=AlertPolicy.Comparison.choices, initial=">")
    threshold = forms.FloatField()
    duration_s = forms.IntegerField(
        label="For (s)", min_value=0, initial=0, help_text="How long it must hold before firing."
    )
    severity = forms.ChoiceField(choices=Severity.choices, initial=Severity.SEV3)
    webhook_url = forms.URLField(
        label="Webhook URL", required=False, max_length=500, assume_scheme="https"
    )
    emails = forms.CharField(
        label="E-mail addresses", required=False, max_length=500, help_text="Comma-separated."
    )
    enabled = forms.BooleanField(required=False, initial=True)

    def clean_emails(self) -> str:
        value = self.cleaned_data["emails"]
        field = forms.EmailField()
        for address in [e.strip() for e in value.split(",") if e.strip()]:
            try:
                field.clean(address)
            except forms.ValidationError:
                raise forms.ValidationError(f"{address!r} is not an e-mail address.") from None
        return value

    @classmethod
    def initial_for(cls, policy: AlertPolicy) -> dict:
        initial = {name: getattr(policy, name) for name in cls.base_fields}
        initial.update(service=policy.service.name, environment=policy.environment.name)
        return initial


class HealthCheckForm(forms.Form):
    service = _by_name(Service)
    environment = _by_name(Environment)
    path = forms.CharField(max_length=200, initial="/healthz")
    base_url = forms.URLField(
        label="Base URL",
        required=False,
        max_length=300,
        assume_scheme="https",
        help_text="Empty: the service's URL as the platform reports it.",
    )
    interval_s = forms.IntegerField(label="Interval (s)", min_value=1, initial=30)
    timeout_s = forms.FloatField(label="Timeout (s)", min_value=0, initial=5.0)
    expected_status = forms.IntegerField(min_value=100, max_value=599, initial=200)
    failure_threshold = forms.IntegerField(
        label="Failures before an incident", min_value=1, max_value=100, initial=3
    )
    severity = forms.ChoiceField(choices=Severity.choices, initial=Severity.SEV2)
    enabled = forms.BooleanField(required=False, initial=True)

    @classmethod
    def initial_for(cls, check: HealthCheck) -> dict:
        initial = {name: getattr(check, name) for name in cls.base_fields}
        initial.update(service=check.service.name, environment=check.environment.name)
        return initial


class RevisionsChartForm(forms.Form):
    """The query of the revisions chart: which revisions of the service, where, over when."""

    environment = forms.CharField(max_length=40)
    revisions = forms.CharField(
        max_length=500, required=False, help_text="new,stable; empty: the deployment's"
    )
    since = forms.DateTimeField()
    until = forms.DateTimeField(required=False)
    deployment = forms.IntegerField(required=False, min_value=1)

    MAX_WINDOW_S = 7 * 86400

    def clean_revisions(self) -> list[str]:
        names = [r.strip() for r in self.cleaned_data["revisions"].split(",") if r.strip()]
        if len(names) > 4:
            raise forms.ValidationError("At most 4 revisions.")
        return list(dict.fromkeys(names))

    def clean(self):
        data = super().clean()
        since, until = data.get("since"), data.get("until")
        if since and until:
            if until <= since:
                self.add_error("until", "Expected a time after since.")
            elif (until - since).total_seconds() > self.MAX_WINDOW_S:
                self.add_error("until", "Expected a window of at most 7 days.")
        return data
