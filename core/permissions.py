"""Scope checks for API views: people are checked through their roles, tokens by scopes."""

from rest_framework import permissions

from core import roles
from core.actors import actor_for


class ScopePermission(permissions.BasePermission):
    """Needs `read` for safe methods and the view's `write_scope` for the others. A view may
    map HTTP methods to scopes with `scopes = {"POST": "...", ...}` (a tuple: any of them)."""

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        scope = self.scope_for(request, view)
        if scope is None and not hasattr(view, request.method.lower()):
            return True  # a method the view does not have: DRF answers 405, not 403
        actor = actor_for(request)
        request.actor = actor
        # A tuple means any one of those scopes will do.
        options = scope if isinstance(scope, tuple) else (scope,)
        if scope is None or not any(actor.allows(s) for s in options):
            self.message = (
                actor.missing_scope_message(" or ".join(options))
                if scope
                else "this endpoint does not accept this method"
            )
            return False
        return True

    @staticmethod
    def scope_for(request, view) -> str | tuple[str, ...] | None:
        mapping = getattr(view, "scopes", None) or {}
        if request.method in mapping:
            return mapping[request.method]
        if request.method in permissions.SAFE_METHODS:
            return roles.READ
        return getattr(view, "write_scope", None)
