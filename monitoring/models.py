"""Incidents and their timelines, alert policies, agent metrics and health checks."""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.db import models
from django.db.models import Q
from django.utils import timezone

from environments.models import Environment
from releases.models import Deployment, Service


class Severity(models.TextChoices):
    SEV1 = "sev1", "SEV1"
    SEV2 = "sev2", "SEV2"
    SEV3 = "sev3", "SEV3"
    SEV4 = "sev4", "SEV4"


# An open SEV1 or SEV2 incident holds new deployments of its services in its environments.
BLOCKING_SEVERITIES = (Severity.SEV1, Severity.SEV2)


class Incident(models.Model):
    class State(models.TextChoices):
        TRIGGERED = "triggered"
        ACKNOWLEDGED = "acknowledged"
        RESOLVED = "resolved"
        REOPENED = "reopened"

    class Source(models.TextChoices):
        ALERT = "alert"
        DEPLOYMENT = "deployment"
        HEALTH_CHECK = "health_check"
        AGENT = "agent"
        PERSON = "person"

    OPEN = (State.TRIGGERED, State.ACKNOWLEDGED, State.REOPENED)
    UNACKNOWLEDGED = (State.TRIGGERED, State.REOPENED)

    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    severity = models.CharField(max_length=4, choices=Severity.choices, default=Severity.SEV3)
    state = models.CharField(
        max_length=12, choices=State.choices, default=State.TRIGGERED, db_index=True
    )
    source = models.CharField(max_length=12, choices=Source.choices, default=Source.PERSON)
    # What opened it, for deduplication: "alert:7", "health:3", "deployment:42" or an agent's.
    key = models.CharField(max_length=200, blank=True, db_index=True)
    services = models.ManyToManyField(Service, blank=True, related_name="incidents")
    environments = models.ManyToManyField(Environment, blank=True, related_name="incidents")
    deployment = models.ForeignKey(
        Deployment, null=True, blank=True, on_delete=models.SET_NULL, related_name="incidents"
    )
    alert_policy = models.ForeignKey(
        "AlertPolicy", null=True, blank=True, on_delete=models.SET_NULL, related_name="incidents"
    )
    commander = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="commanded_incidents",
    )
    opened_by = models.CharField(max_length=150)
    opened_at = models.DateTimeField(default=timezone.now, db_index=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.CharField(max_length=150, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=150, blank=True)
    # The postmortem, written once the incident is resolved.
    summary = models.TextField(blank=True)
    impact = models.TextField(blank=True)
    root_cause = models.TextField(blank=True)
    action_items = models.TextField(blank=True, help_text="One per line.")

    class Meta:
        ordering = ["-opened_at", "-id"]
        constraints = [
            # One open incident per key, decided by the database when two alerts race.
            models.UniqueConstraint(
                fields=["key"],
                condition=Q(state__in=["triggered", "acknowledged", "reopened"]) & ~Q(key=""),
                name="one_open_incident_per_key",
            ),
            # One incident per failed deployment, however often the hook is called.
            models.UniqueConstraint(
                fields=["deployment"],
                condition=Q(source="deployment"),
                name="one_incident_per_deployment",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.get_severity_display()} {self.title}"

    @property
    def is_open(self) -> bool:
        return self.state in self.OPEN

    @property
    def is_acknowledged(self) -> bool:
        return self.state == self.State.ACKNOWLEDGED

    @property
    def blocks_deployments(self) -> bool:
        return self.is_open and self.severity in BLOCKING_SEVERITIES

    def age_seconds(self, now=None) -> float:
        return ((now or timezone.now()) - self.opened_at).total_seconds()


class IncidentEvent(models.Model):
    """One line of an incident's timeline: what happened, who did it, when."""

    class Kind(models.TextChoices):
        OPENED = "opened"
        ALERT_FIRED = "alert_fired"
        ALERT_CLEARED = "alert_cleared"
        HEALTH_CHECK_FAILED = "health_check_failed"
        DEPLOYMENT_STARTED = "deployment_started"
        DEPLOYMENT_FAILED = "deployment_failed"
        ROLLED_BACK = "rolled_back"
        NOTE = "note"
        ACKNOWLEDGED = "acknowledged"
        RESOLVED = "resolved"
        REOPENED = "reopened"
        CHANGED = "changed"
        REMEDIATION = "remediation"
        NOTIFICATION_SENT = "notification_sent"
        NOTIFICATION_FAILED = "notification_failed"

    # What an agent or a person may post through the API; the rest the portal writes itself.
    POSTABLE = (
        Kind.NOTE,
        Kind.ALERT_FIRED,
        Kind.DEPLOYMENT_STARTED,
        Kind.ROLLED_BACK,
        Kind.REMEDIATION,
        Kind.HEALTH_CHECK_FAILED,
    )

    incident = models.ForeignKey(Incident, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=24, choices=Kind.choices)
    message = models.TextField()
    actor = models.CharField(max_length=150, blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message[:60]}"


class AlertPolicy(models.Model):
    """A condition on a metric of a service in an environment; while it holds for `duration_s`
    the policy fires and opens (or adds to) the incident keyed "alert:<id>"."""

    class Comparison(models.TextChoices):
        GT = ">", "greater than"
        LT = "<", "less than"
        GE = ">=", "at least"
        LE = "<=", "at most"

    class State(models.TextChoices):
        OK = "ok"
        PENDING = "pending"  # breaching, not yet for duration_s
        FIRING = "firing"
        NO_DATA = "no_data"

    # Platform metrics read from Cloud Monitoring; any other name is a stored agent metric.
    PLATFORM_METRICS = ("error_rate", "request_rate", "latency_p95")

    name = models.CharField(max_length=100, unique=True)
    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="alert_policies")
    environment = models.ForeignKey(
        Environment, on_delete=models.CASCADE, related_name="alert_policies"
    )
    metric = models.CharField(max_length=200)
    window_s = models.PositiveIntegerField(default=300)
    comparison = models.CharField(max_length=2, choices=Comparison.choices, default=">")
    threshold = models.FloatField()
    duration_s = models.PositiveIntegerField(default=0)
    severity = models.CharField(max_length=4, choices=Severity.choices, default=Severity.SEV3)
    webhook_url = models.URLField(blank=True, max_length=500)
    emails = models.CharField(max_length=500, blank=True, help_text="Comma-separated.")
    enabled = models.BooleanField(default=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.OK)
    breaching_since = models.DateTimeField(null=True, blank=True)
    last_value = models.FloatField(null=True, blank=True)
    last_evaluated_at = models.DateTimeField(null=True, blank=True)
    # The policy's copy in Cloud Monitoring (projects/P/alertPolicies/ID), once synced.
    cloud_name = models.CharField(max_length=300, blank=True)
    cloud_sync_error = models.TextField(blank=True)
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def key(self) -> str:
        return f"alert:{self.pk}"

    @property
    def email_list(self) -> list[str]:
        return [e.strip() for e in self.emails.split(",") if e.strip()]

    def describe(self) -> str:
        hold = f" for {self.duration_s}s" if self.duration_s else ""
        return (
            f"{self.metric} over {self.window_s}s {self.comparison} {self.threshold:g}{hold} "
            f"({self.service.name} in {self.environment.name})"
        )

    def breaches(self, value: float) -> bool:
        return {
            ">": value > self.threshold,
            "<": value < self.threshold,
            ">=": value >= self.threshold,
            "<=": value <= self.threshold,
        }[self.comparison]


class MetricSample(models.Model):
    """A value posted by an agent. Kept for MONITORING_SAMPLE_RETENTION_DAYS, then pruned."""

    name = models.CharField(max_length=200)
    labels = models.JSONField(default=dict)
    value = models.FloatField()
    timestamp = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["name", "timestamp"], name="metric_sample_name_time")]

    def __str__(self) -> str:
        return f"{self.name}{self.labels}={self.value}@{self.timestamp}"


class MetricRollup(models.Model):
    """Per-minute count, sum, min and max of a metric and label set, upserted on ingest."""

    name = models.CharField(max_length=200)
    labels_key = models.CharField(max_length=500)  # canonical JSON of the labels
    labels = models.JSONField(default=dict)
    minute = models.DateTimeField()
    count = models.PositiveIntegerField()
    sum = models.FloatField()
    min = models.FloatField()
    max = models.FloatField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["name", "labels_key", "minute"], name="metric_rollup_once"
            )
        ]
        indexes = [
            models.Index(fields=["name", "minute"], name="metric_rollup_name_minute"),
            # Service pages ask for {"service": ..., "environment": ...} over days.
            GinIndex(fields=["labels"], opclasses=["jsonb_path_ops"], name="metric_rollup_labels"),
        ]

    def __str__(self) -> str:
        return f"{self.name}{self.labels_key}@{self.minute}"

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0


class HealthCheck(models.Model):
    """An HTTP probe of a service in an environment, run every `interval_s` by the worker."""

    class Status(models.TextChoices):
        UNKNOWN = "unknown"
        HEALTHY = "healthy"
        FAILING = "failing"  # failed, fewer than failure_threshold times in a row
        DOWN = "down"

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="health_checks")
    environment = models.ForeignKey(
        Environment, on_delete=models.CASCADE, related_name="health_checks"
    )
    path = models.CharField(max_length=200, default="/healthz")
    # Empty: the service's URL as the platform reports it; else a base URL to probe instead.
    base_url = models.URLField(blank=True, max_length=300)
    interval_s = models.PositiveIntegerField(default=30)
    timeout_s = models.FloatField(default=5.0)
    expected_status = models.PositiveSmallIntegerField(default=200)
    failure_threshold = models.PositiveSmallIntegerField(default=3)
    severity = models.CharField(max_length=4, choices=Severity.choices, default=Severity.SEV2)
    enabled = models.BooleanField(default=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.UNKNOWN)
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    next_run_at = models.DateTimeField(default=timezone.now, db_index=True)
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["service__name", "environment__order", "path"]
        constraints = [
            models.UniqueConstraint(
                fields=["service", "environment", "path"], name="health_check_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.service.name} {self.path} in {self.environment.name}"

    @property
    def key(self) -> str:
        return f"health:{self.pk}"


class HealthCheckResult(models.Model):
    health_check = models.ForeignKey(HealthCheck, on_delete=models.CASCADE, related_name="results")
    checked_at = models.DateTimeField(default=timezone.now)
    ok = models.BooleanField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-checked_at", "-id"]
        indexes = [
            models.Index(fields=["health_check", "checked_at"], name="health_result_check_time")
        ]

    def __str__(self) -> str:
        return f"{self.health_check_id} {'ok' if self.ok else 'failed'} @ {self.checked_at}"
