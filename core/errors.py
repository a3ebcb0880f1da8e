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


class PermissionRefused(DomainError):
    status = 403
    code = "permission_denied"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class NotFoundError(DomainError):
    status = 404
    code = "not_found"
