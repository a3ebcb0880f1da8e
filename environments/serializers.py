"""Request and response shapes of the environments API. Requests are validated here so that a
bad field comes back named; the rules themselves live in environments.services."""

from drf_spectacular.utils import extend_schema_field, inline_serializer
from rest_framework import serializers

from core.errors import ValidationFailed
from environments import services
from environments.models import KEY_RE, ConfigVar, Environment, FreezeWindow, Secret

KEY_HELP = "Expected UPPER_SNAKE_CASE: letters A-Z, digits and _, not starting with a digit."


def _as_field_errors(exc: ValidationFailed, prefix: str):
    """A service's {"variables.KEY": [...]} as DRF detail nested under `prefix`, so that the
    API's error body names the same field."""
    nested: dict[str, list[str]] = {}
    for name, errors in exc.fields.items():
        if name == prefix:
            return serializers.ValidationError(errors)
        nested[name.removeprefix(prefix + ".")] = errors
    return serializers.ValidationError(nested or [exc.message])


def _environment_named(name: str) -> Environment:
    environment = Environment.objects.filter(name=name).first()
    if environment is None:
        raise serializers.ValidationError(f"No environment named {name!r}.")
    return environment


class ServiceField(serializers.CharField):
    """A Cloud Run service name, or "" for every service of the environment."""

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("allow_blank", True)
        kwargs.setdefault("default", "")
        kwargs.setdefault("max_length", 63)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        try:
            return services.validate_service(value)
        except ValidationFailed as exc:
            raise serializers.ValidationError(exc.fields["service"]) from None


class OverrideReasonField(serializers.CharField):
    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("allow_blank", True)
        kwargs.setdefault("default", "")
        kwargs.setdefault("max_length", 300)
        kwargs.setdefault(
            "help_text", "Needed (admins only) to change an environment during a freeze window."
        )
        super().__init__(**kwargs)


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"type": "string", "nullable": True},
        "example": {"LOG_LEVEL": "info", "OLD_FLAG": None},
    }
)
class VariablesField(serializers.JSONField):
    """{KEY: value}; a null value removes the key."""


# Environments


class EnvironmentSerializer(serializers.ModelSerializer):
    platform_settings = serializers.DictField(read_only=True)
    frozen = serializers.SerializerMethodField()
    config_count = serializers.IntegerField(read_only=True, default=None)
    secret_count = serializers.IntegerField(read_only=True, default=None)

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
            "platform_settings",
            "frozen",
            "config_count",
            "secret_count",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]
        extra_kwargs = {"order": {"required": False, "help_text": "Place in the promotion chain."}}

    @extend_schema_field(
        {
            "type": "object",
            "nullable": True,
            "properties": {
                "id": {"type": "integer"},
                "window": {"type": "string"},
                "reason": {"type": "string"},
            },
        }
    )
    def get_frozen(self, environment) -> dict | None:
        window = environment.active_freeze()
        if window is None:
            return None
        return {"id": window.pk, "window": window.describe(), "reason": window.reason}

    def validate_name(self, value: str) -> str:
        if self.instance is not None and value != self.instance.name:
            raise serializers.ValidationError("An environment cannot be renamed.")
        return value


class EnvironmentFilterSerializer(serializers.Serializer):
    protected = serializers.BooleanField(required=False, allow_null=True, default=None)
    platform = serializers.ChoiceField(choices=Environment.Platform.choices, required=False)
    name = serializers.CharField(required=False, help_text="Names containing this text.")


# Configuration


class ConfigVarSerializer(serializers.ModelSerializer):
    class Meta:
        model = ConfigVar
        fields = ["service", "key", "value", "version", "updated_by", "updated_at"]


class ScopeFilterSerializer(serializers.Serializer):
    service = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="Only this service's entries; empty: only the environment-wide ones.",
    )


class ConfigWriteSerializer(serializers.Serializer):
    variables = VariablesField(help_text="KEY: value; a null value removes the key.")
    service = ServiceField()
    override_reason = OverrideReasonField()

    def validate_variables(self, value):
        try:
            return services.validate_variables(value)
        except ValidationFailed as exc:
            raise _as_field_errors(exc, "variables") from None


class ConfigWriteResultSerializer(serializers.Serializer):
    environment = serializers.CharField()
    service = serializers.CharField()
    changed = serializers.ListField(child=serializers.CharField())
    variables = ConfigVarSerializer(many=True)


# Secrets


class SecretSerializer(serializers.ModelSerializer):
    """A secret as anyone may see it: never its value."""

    class Meta:
        model = Secret
        fields = ["service", "name", "version", "updated_by", "updated_at"]


class SecretWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=128)
    value = serializers.CharField(
        allow_null=True,
        trim_whitespace=False,
        max_length=65536,
        style={"input_type": "password"},
        write_only=True,
        help_text="The new value; null removes the secret. Never returned.",
    )
    service = ServiceField()
    override_reason = OverrideReasonField()

    def validate_name(self, value: str) -> str:
        if not KEY_RE.match(value):
            raise serializers.ValidationError(KEY_HELP)
        return value


class SecretWriteResultSerializer(serializers.Serializer):
    environment = serializers.CharField()
    service = serializers.CharField()
    name = serializers.CharField()
    version = serializers.IntegerField(allow_null=True, help_text="null: the secret was removed")


# Freeze windows


class FreezeWindowSerializer(serializers.ModelSerializer):
    kind = serializers.SerializerMethodField()
    window = serializers.CharField(source="describe", read_only=True)
    active = serializers.SerializerMethodField()

    class Meta:
        model = FreezeWindow
        fields = [
            "id",
            "kind",
            "reason",
            "starts_at",
            "ends_at",
            "weekday",
            "start_time",
            "end_time",
            "window",
            "active",
            "created_by",
            "created_at",
        ]
        read_only_fields = ["id", "created_by", "created_at"]
        extra_kwargs = {"reason": {"required": True, "allow_blank": False}}

    def get_kind(self, window) -> str:
        return "weekly" if window.is_weekly else "once"

    def get_active(self, window) -> bool:
        return window.covers(self.context["now"])

    def validate_weekday(self, value):
        if value is not None and not 0 <= value <= 6:
            raise serializers.ValidationError("Expected 0 (Monday) to 6 (Sunday).")
        return value


# Parity and promotion


class ParityQuerySerializer(serializers.Serializer):
    a = serializers.CharField(help_text="An environment name, e.g. staging.")
    b = serializers.CharField(help_text="The environment to compare it with, e.g. production.")

    def validate_a(self, value: str) -> Environment:
        return _environment_named(value)

    def validate_b(self, value: str) -> Environment:
        return _environment_named(value)

    def validate(self, data):
        if data["a"].pk == data["b"].pk:
            raise serializers.ValidationError({"b": ["Choose an environment other than a."]})
        return data


class ParityEntrySerializer(serializers.Serializer):
    service = serializers.CharField(allow_null=True)
    key = serializers.CharField()
    kind = serializers.ChoiceField(choices=["config", "secret"])


class ParityDiffSerializer(ParityEntrySerializer):
    a = serializers.CharField(required=False, help_text="config only")
    b = serializers.CharField(required=False, help_text="config only")
    a_version = serializers.CharField(required=False, help_text="secrets only, e.g. v3")
    b_version = serializers.CharField(required=False, help_text="secrets only, e.g. v3")


class ParitySerializer(serializers.Serializer):
    a = serializers.CharField()
    b = serializers.CharField()
    missing_in_a = ParityEntrySerializer(many=True)
    missing_in_b = ParityEntrySerializer(many=True)
    differs = ParityDiffSerializer(many=True)
    same = serializers.IntegerField(help_text="How many keys and secrets match.")


class PromoteSerializer(serializers.Serializer):
    source = serializers.CharField(help_text="The environment to copy from.")
    keys = serializers.ListField(
        child=serializers.CharField(max_length=128), allow_empty=False, max_length=500
    )
    service = ServiceField()
    dry_run = serializers.BooleanField(
        default=False, help_text="Only show what would change; write nothing."
    )
    override_reason = OverrideReasonField()

    def validate_source(self, value: str) -> Environment:
        return _environment_named(value)

    def validate_keys(self, value: list[str]) -> list[str]:
        errors = {str(i): [KEY_HELP] for i, key in enumerate(value) if not KEY_RE.match(key)}
        if errors:
            raise serializers.ValidationError(errors)
        return list(dict.fromkeys(value))


class PromotionSerializer(serializers.Serializer):
    source = serializers.CharField()
    target = serializers.CharField()
    service = serializers.CharField(allow_null=True)
    dry_run = serializers.BooleanField()
    # inline: "from" is a Python keyword, so it cannot be a class attribute.
    changes = inline_serializer(
        "PromotionChange",
        {
            "key": serializers.CharField(),
            "from": serializers.CharField(allow_null=True, help_text="null: not set in target"),
            "to": serializers.CharField(),
        },
        many=True,
    )
