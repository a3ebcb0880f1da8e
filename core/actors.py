"""Who is acting: a person or an agent token. Passed to every service function."""

from __future__ import annotations

from dataclasses import dataclass

from core import roles


@dataclass(frozen=True)
class Actor:
    user: object | None = None  # django.contrib.auth User
    token: object | None = None  # core.models.AgentToken
    label: str = "system"
    scopes: frozenset[str] = frozenset()

    @classmethod
    def for_user(cls, user) -> Actor:
        return cls(user=user, label=user.get_username(), scopes=roles.user_scopes(user))

    @classmethod
    def for_token(cls, token) -> Actor:
        return cls(token=token, label=f"token:{token.name}", scopes=frozenset(token.scopes))

    @classmethod
    def system(cls, label: str = "system") -> Actor:
        return cls(label=label, scopes=frozenset(roles.SCOPES))

    def allows(self, scope: str) -> bool:
        return roles.ADMIN in self.scopes or scope in self.scopes

    def require(self, scope: str) -> None:
        """Raises PermissionRefused, naming what is missing, unless this actor has `scope`."""
        from core.errors import PermissionRefused

        if not self.allows(scope):
            raise PermissionRefused(self.missing_scope_message(scope))

    @property
    def is_admin(self) -> bool:
        return roles.ADMIN in self.scopes

    @property
    def user_id(self):
        return getattr(self.user, "pk", None)

    def missing_scope_message(self, scope: str) -> str:
        if self.token is not None:
            have = ", ".join(sorted(self.scopes)) or "none"
            return f"token '{self.token.name}' lacks the '{scope}' scope (it has: {have})"
        return f"this needs the {roles.role_for_scope(scope)} role ('{scope}')"


def actor_for(request) -> Actor:
    """The actor of a Django or DRF request."""
    from core.models import AgentToken

    auth = getattr(request, "auth", None)
    if isinstance(auth, AgentToken):
        return Actor.for_token(auth)
    return Actor.for_user(request.user)
