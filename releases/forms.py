"""Forms of the services and deployments pages. They check the shape of the input; the rules
(CI status, promotion order, freezes, approvals, who may) are the services' and come back as
DomainError."""

import json

from django import forms

from releases.models import SERVICE_NAME_RE, Deployment, Release, Strategy


class ServiceForm(forms.Form):
    name = forms.RegexField(
        regex=SERVICE_NAME_RE,
        max_length=49,
        help_text="The Cloud Run service id: lowercase letters, digits and dashes.",
        error_messages={"invalid": "Expected lowercase letters, digits and dashes."},
    )
    description = forms.CharField(required=False, max_length=300)
    owners = forms.CharField(
        required=False, max_length=300, help_text="Teams or people, comma-separated."
    )
    repository_url = forms.URLField(required=False, label="Repository URL", assume_scheme="https")
    health_path = forms.CharField(max_length=200, initial="/healthz")
    default_strategy = forms.ChoiceField(choices=Strategy.choices, initial=Strategy.CANARY)


class JSONObjectField(forms.CharField):
    """A JSON object typed into a textarea; empty means none."""

    widget = forms.Textarea(attrs={"rows": 3, "spellcheck": "false"})

    def to_python(self, value):
        value = super().to_python(value)
        if not value:
            return None
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc.msg} (line {exc.lineno}).") from None
        if not isinstance(parsed, dict):
            raise forms.ValidationError("Expected a JSON object: {...}.")
        return parsed


class ReleaseForm(forms.Form):
    version = forms.CharField(max_length=100)
    artifact = forms.CharField(
        max_length=500,
        help_text="A container image, or for localcloud a command line "
        "(e.g. python examples/demo_service.py).",
    )
    commit_sha = forms.CharField(required=False, max_length=64, label="Commit")
    ci_status = forms.ChoiceField(
        choices=Release.CIStatus.choices, initial=Release.CIStatus.UNKNOWN, label="CI status"
    )
    ci_url = forms.URLField(required=False, label="CI run URL", assume_scheme="https")
    env = JSONObjectField(
        required=False,
        label="Build environment",
        help_text='Variables of the build itself, as JSON: {"NAME": "value"}.',
    )
    notes = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))


class DeployForm(forms.Form):
    environment = forms.ChoiceField()
    version = forms.ChoiceField(help_text="Newest first.")
    strategy = forms.ChoiceField(required=False)
    params = JSONObjectField(
        required=False,
        label="Strategy parameters (JSON)",
        help_text='Empty: the service\'s defaults. Canary example: {"steps": [{"set_weight": '
        '20}, {"analysis": {"template": "default"}}, {"pause": {}}, {"set_weight": 100}]}',
    )
    override_reason = forms.CharField(
        required=False,
        max_length=300,
        label="Override reason",
        help_text="Admins only: passes the promotion order, a freeze or an open incident. Audited.",
    )

    def __init__(
        self,
        *args,
        environments: list[str],
        versions: list[str],
        default_strategy: str,
        may_override: bool,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.fields["environment"].choices = [(n, n) for n in environments]
        self.fields["version"].choices = [(v, v) for v in versions]
        default_label = Strategy(default_strategy).label
        self.fields["strategy"].choices = [("", f"Service default ({default_label})")] + list(
            Strategy.choices
        )
        if not may_override:
            del self.fields["override_reason"]


class RollbackForm(forms.Form):
    environment = forms.CharField(max_length=40)
    reason = forms.CharField(required=False, max_length=300)


class ActionForm(forms.Form):
    """The optional inputs of the deployment buttons."""

    reason = forms.CharField(required=False, max_length=300)
    full = forms.BooleanField(required=False)


class DeploymentFilterForm(forms.Form):
    service = forms.ChoiceField(required=False)
    environment = forms.ChoiceField(required=False)
    status = forms.ChoiceField(
        required=False, choices=[("", "Any status")] + list(Deployment.Status.choices)
    )

    def __init__(self, *args, services: list[str], environments: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["service"].choices = [("", "Any service")] + [(n, n) for n in services]
        self.fields["environment"].choices = [("", "Any environment")] + [
            (n, n) for n in environments
        ]
