"""Roles (Django groups) and scopes (what an agent token or a role may do)."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

READ = "read"
ENVIRONMENTS_WRITE = "environments:write"
SECRETS_WRITE = "secrets:write"
RELEASES_WRITE = "releases:write"
DEPLOYMENTS_WRITE = "deployments:write"
METRICS_WRITE = "metrics:write"
INCIDENTS_WRITE = "incidents:write"
ACTIONS_RUN = "actions:run"
APPROVE = "approve"
ADMIN = "admin"

SCOPES = (
    READ,
    ENVIRONMENTS_WRITE,
    SECRETS_WRITE,
    RELEASES_WRITE,
    DEPLOYMENTS_WRITE,
    METRICS_WRITE,
    INCIDENTS_WRITE,
    ACTIONS_RUN,
    APPROVE,
    ADMIN,
)

VIEWER, OPERATOR, APPROVER, ADMIN_ROLE = "viewer", "operator", "approver", "admin"
ROLES = (VIEWER, OPERATOR, APPROVER, ADMIN_ROLE)

# What each role may do, in scope terms, so people and tokens are checked the same way.
ROLE_SCOPES: dict[str, frozenset[str]] = {
    VIEWER: frozenset({READ}),
    OPERATOR: frozenset(
        {
            READ,
            ENVIRONMENTS_WRITE,
            SECRETS_WRITE,
            RELEASES_WRITE,
            DEPLOYMENTS_WRITE,
            METRICS_WRITE,
            INCIDENTS_WRITE,
            ACTIONS_RUN,
        }
    ),
    APPROVER: frozenset({READ, APPROVE}),
    ADMIN_ROLE: frozenset(SCOPES),
}

# The role a person needs for a scope, for error messages that say what to ask for.
SCOPE_ROLE = {
    READ: VIEWER,
    APPROVE: APPROVER,
    ADMIN: ADMIN_ROLE,
}


def role_for_scope(scope: str) -> str:
    return SCOPE_ROLE.get(scope, OPERATOR)


def user_roles(user: AbstractBaseUser | AnonymousUser) -> set[str]:
    if not user.is_authenticated:
        return set()
    if user.is_superuser:
        return {ADMIN_ROLE}
    cached = getattr(user, "_ops_roles", None)
    if cached is None:
        cached = set(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
        user._ops_roles = cached
    return cached


def user_scopes(user) -> frozenset[str]:
    scopes: set[str] = set()
    for role in user_roles(user):
        scopes |= ROLE_SCOPES[role]
    return frozenset(scopes)


def parse_scopes(raw: str | list[str]) -> list[str]:
    """Validates a list of scopes (or a comma-separated string); raises ValueError naming any
    unknown one."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    scopes = [s.strip() for s in items if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ValueError(
            f"unknown scope(s): {', '.join(unknown)}; expected some of: {', '.join(SCOPES)}"
        )
    if not scopes:
        raise ValueError(f"at least one scope is needed; expected some of: {', '.join(SCOPES)}")
    return sorted(set(scopes), key=SCOPES.index)
