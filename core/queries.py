"""Read-side filters shared by pages and the API."""

from django.db.models import QuerySet


def filter_audit(events: QuerySet, params: dict) -> QuerySet:
    if params.get("actor"):
        events = events.filter(actor__icontains=params["actor"])
    if params.get("action"):
        events = events.filter(action__startswith=params["action"])
    if params.get("object_type"):
        events = events.filter(object_type=params["object_type"])
    if params.get("object_id"):
        events = events.filter(object_id=params["object_id"])
    if params.get("since"):
        events = events.filter(created_at__gte=params["since"])
    if params.get("until"):
        events = events.filter(created_at__lte=params["until"])
    return events
