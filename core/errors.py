"""Errors raised by service functions; the API and the views turn them into answers."""


class DomainError(Exception):
    """A request that the rules refuse. `fields` maps a field name to what was expected."""

    status = 400
    code = "invalid"

    def __init__(self, message: str, *, fields: dict | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        if code:
            self.code = code


class ValidationFailed(DomainError):
    status = 400
    code = "invalid"


def validate_model(obj, what: str, **options) -> None:
    """Runs the model's field validation; its errors become ValidationFailed naming each field.
    Uniqueness is left to the database (callers turn IntegrityError into a 409)."""
    from django.core.exceptions import ValidationError

    try:
        obj.full_clean(validate_unique=False, **options)
    except ValidationError as exc:
        raise ValidationFailed(
            f"Invalid {what}: " + ", ".join(exc.message_dict), fields=exc.message_dict
        ) from None


class PermissionRefused(DomainError):
    status = 403
    code = "permission_denied"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class NotFoundError(DomainError):
    status = 404
    code = "not_found"
