from core.actors import actor_for
from core.roles import SCOPES


def access(request):
    """`actor` and `can.<scope>` (":" written as "_") for templates: show only what works."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    actor = actor_for(request)
    return {
        "actor": actor,
        "can": {scope.replace(":", "_"): actor.allows(scope) for scope in SCOPES},
    }
