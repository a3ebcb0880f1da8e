"""Forms of the environments pages. They check the shape of the input; the rules (protected,
frozen, who may) are the services' and come back as DomainError."""

from django import forms
from django.core.validators import RegexValidator

from environments.models import KEY_RE, SERVICE_RE, ConfigVar, Environment

KEY_VALIDATOR = RegexValidator(
    KEY_RE, "Expected UPPER_SNAKE_CASE: letters A-Z, digits and _, not starting with a digit."
)
SERVICE_VALIDATOR = RegexValidator(
    SERVICE_RE, "Expected a service name: lowercase letters, digits and dashes."
)
WEEKDAYS = [
    (i, day)
    for i, day in enumerate(
        ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
    )
]


def service_field() -> forms.CharField:
    return forms.CharField(
        required=False,
        max_length=63,
        validators=[SERVICE_VALIDATOR],
        help_text="Leave empty for every service of the environment.",
    )


def override_field() -> forms.CharField:
    return forms.CharField(
        required=False,
        max_length=300,
        label="Override reason",
        help_text="The environment is frozen: an admin may change it with a reason (audited).",
    )


class FreezeAwareForm(forms.Form):
    """Shows the override reason field only while the environment is frozen."""

    override_reason = override_field()

    def __init__(self, *args, frozen: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if not frozen:
            del self.fields["override_reason"]


class EnvironmentForm(forms.ModelForm):
    class Meta:
        model = Environment
        fields = [
            "name",
            "description",
            "order",
            "protected",
            "platform",
            "gcp_project",
            "region",
            "run_endpoint",
            "monitoring_endpoint",
        ]
        help_texts = {"order": "Place in the promotion chain; empty puts it last."}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A new environment may leave its order empty: it then goes last.
        self.fields["order"].required = bool(self.instance.pk)
        if self.instance.pk:
            del self.fields["name"]  # environments are never renamed


class ConfigVarForm(FreezeAwareForm):
    service = service_field()
    key = forms.CharField(max_length=128, validators=[KEY_VALIDATOR])
    value = forms.CharField(required=False, strip=False, max_length=32768)
    remove = forms.BooleanField(required=False, label="Remove this variable")

    field_order = ["key", "value", "service", "remove", "override_reason"]


class SecretForm(FreezeAwareForm):
    service = service_field()
    name = forms.CharField(max_length=128, validators=[KEY_VALIDATOR])
    # render_value=False: a value typed in is never sent back to the browser, not even
    # when the form comes back with an error.
    value = forms.CharField(
        required=False,
        strip=False,
        max_length=65536,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: it is stored encrypted and never shown again.",
    )
    remove = forms.BooleanField(required=False, label="Remove this secret")

    field_order = ["name", "value", "service", "remove", "override_reason"]

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("remove") and not cleaned.get("value"):
            self.add_error("value", "Enter the new value (or tick Remove).")
        return cleaned


class FreezeWindowForm(forms.Form):
    reason = forms.CharField(max_length=300)
    starts_at = forms.DateTimeField(
        required=False,
        label="Starts (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="A one-off window: give start and end.",
    )
    ends_at = forms.DateTimeField(
        required=False,
        label="Ends (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )
    weekday = forms.TypedChoiceField(
        required=False,
        choices=[("", "—")] + WEEKDAYS,
        coerce=int,
        empty_value=None,
        help_text="A weekly window: give the day and the times instead.",
    )
    start_time = forms.TimeField(
        required=False, label="From (UTC)", widget=forms.TimeInput(attrs={"type": "time"})
    )
    end_time = forms.TimeField(
        required=False, label="Until (UTC)", widget=forms.TimeInput(attrs={"type": "time"})
    )


class FreezeRemoveForm(forms.Form):
    reason = forms.CharField(required=False, max_length=300)


class ParityForm(forms.Form):
    a = forms.ChoiceField(label="Environment A")
    b = forms.ChoiceField(label="Environment B")

    def __init__(self, *args, names: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("a", "b"):
            self.fields[name].choices = [(n, n) for n in names]

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("a") and cleaned.get("a") == cleaned.get("b"):
            self.add_error("b", "Choose an environment other than A.")
        return cleaned


class PromoteForm(forms.Form):
    """Source, target, service and the keys to copy; the key choices are the source's
    variables of that service."""

    source = forms.ChoiceField()
    target = forms.ChoiceField()
    service = service_field()
    keys = forms.MultipleChoiceField(required=True, widget=forms.CheckboxSelectMultiple)
    override_reason = override_field()

    def __init__(self, *args, names: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        choices = [("", "—")] + [(n, n) for n in names]
        self.fields["source"].choices = choices
        self.fields["target"].choices = choices
        values = self.data if self.is_bound else self.initial
        source, service = values.get("source"), values.get("service") or ""
        self.source_config = (
            list(ConfigVar.objects.filter(environment__name=source, service=service))
            if source in names
            else []
        )
        self.fields["keys"].choices = [(v.key, v.key) for v in self.source_config]
        self.chosen = set(
            values.getlist("keys") if hasattr(values, "getlist") else values.get("keys", [])
        )
