"""Small helpers for the monitoring templates."""

from django import template
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

register = template.Library()


@register.simple_tag
def deployment_url(pk) -> str:
    """The deployment's page when the releases pages are installed, else its API resource."""
    for name in ("releases:deployment", "deployments:detail", "api:deployment"):
        try:
            return reverse(name, args=[pk])
        except NoReverseMatch:
            continue
    return ""


@register.filter
def age(value, now=None) -> str:
    """ "4m", "2h 5m", "3d 1h": how long ago."""
    if value is None:
        return ""
    seconds = int(((now or timezone.now()) - value).total_seconds())
    if seconds < 60:
        return f"{max(seconds, 0)}s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if days:
        return f"{days}d {hours % 24}h"
    if hours:
        return f"{hours}h {minutes % 60}m"
    return f"{minutes}m"


@register.filter
def pct(value, digits: int = 1) -> str:
    if value is None:
        return "no data"
    return f"{value * 100:.{digits}f}%"


@register.filter
def ms(value) -> str:
    if value is None:
        return "no data"
    return f"{value:.0f} ms"


@register.filter
def rate(value) -> str:
    if value is None:
        return "no data"
    return f"{value:.2f}/s"
