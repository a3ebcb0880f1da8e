"""Forms of the monitoring pages. They check the shape of the input; the rules are the
services' and come back as DomainError."""

from django import forms

from environments.models import Environment
from monitoring.models import Incident, Severity
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
    revision = forms.CharField(required=False, max_length=100)
