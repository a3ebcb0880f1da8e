"""Failed-login throttling, counted in the cache (Redis) per username and per source IP."""

from django.conf import settings
from django.core.cache import cache


def _keys(username: str, ip: str | None) -> list[str]:
    return [f"login-fail:user:{username.lower()}", f"login-fail:ip:{ip or 'unknown'}"]


def is_locked(username: str, ip: str | None) -> bool:
    limit = settings.LOGIN_FAILURE_LIMIT
    return any((cache.get(key) or 0) >= limit for key in _keys(username, ip))


def record_failure(username: str, ip: str | None) -> None:
    for key in _keys(username, ip):
        # add() starts the window on the first failure; incr() keeps its expiry.
        if not cache.add(key, 1, timeout=settings.LOGIN_FAILURE_WINDOW_S):
            try:
                cache.incr(key)
            except ValueError:
                cache.set(key, 1, timeout=settings.LOGIN_FAILURE_WINDOW_S)


def clear(username: str) -> None:
    cache.delete(f"login-fail:user:{username.lower()}")
