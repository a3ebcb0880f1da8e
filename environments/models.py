from __future__ import annotations

import datetime
import re

from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

NAME_RE = r"^[a-z][a-z0-9-]{0,39}$"
KEY_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
# A service as Cloud Run names it; "" means every service of the environment.
SERVICE_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")


def _count_of(model) -> Coalesce:
    per_environment = (
        model.objects.filter(environment=OuterRef("pk"))
        .order_by()
        .values("environment")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(per_environment), 0)


class EnvironmentQuerySet(models.QuerySet):
    def with_summary(self) -> EnvironmentQuerySet:
        """Config and secret counts and the freeze windows, loaded in a fixed number of
        queries however many environments there are (lists and the API use this)."""
        return self.annotate(
            config_count=_count_of(ConfigVar), secret_count=_count_of(Secret)
        ).prefetch_related("freeze_windows")


class Environment(models.Model):
    """A place releases run: dev, staging, production. `order` is its place in the promotion
    chain: a release enters an environment only after it succeeded in the one before."""

    class Platform(models.TextChoices):
        LOCALCLOUD = "localcloud", "localcloud (on this machine)"
        GOOGLE = "google", "Google Cloud Run"

    name = models.CharField(
        max_length=40,
        unique=True,
        validators=[RegexValidator(NAME_RE, "Lowercase letters, digits and dashes.")],
    )
    description = models.CharField(max_length=300, blank=True)
    order = models.PositiveIntegerField(unique=True)
    protected = models.BooleanField(
        default=False, help_text="Changes need an approver; config changes need an admin."
    )
    platform = models.CharField(
        max_length=20, choices=Platform.choices, default=Platform.LOCALCLOUD
    )
    gcp_project = models.CharField("Google project", max_length=100, blank=True)
    region = models.CharField(max_length=50, default="us-central1")
    run_endpoint = models.CharField(
        "Cloud Run API endpoint",
        max_length=200,
        blank=True,
        help_text="For localcloud, e.g. http://127.0.0.1:8081; empty for Google.",
    )
    monitoring_endpoint = models.CharField(
        "Cloud Monitoring endpoint",
        max_length=200,
        blank=True,
        help_text="For localcloud, e.g. 127.0.0.1:8082; empty for Google.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = EnvironmentQuerySet.as_manager()

    class Meta:
        ordering = ["order"]

    def __str__(self) -> str:
        return self.name

    def platform_settings(self) -> dict:
        """What the Cloud Run and Monitoring adapters need; they build clients from it."""
        return {
            "kind": self.platform,
            "project": self.gcp_project or "local-project",
            "region": self.region,
            "run_endpoint": self.run_endpoint,
            "monitoring_endpoint": self.monitoring_endpoint,
        }

    def active_freeze(self, at=None):
        at = at or timezone.now()
        for window in self.freeze_windows.all():
            if window.covers(at):
                return window
        return None


class FreezeWindow(models.Model):
    """A time when changes to an environment are frozen: once (starts_at..ends_at) or every
    week (weekday, start_time..end_time, in UTC)."""

    environment = models.ForeignKey(
        Environment, on_delete=models.CASCADE, related_name="freeze_windows"
    )
    reason = models.CharField(max_length=300)
    starts_at = models.DateTimeField(null=True, blank=True)
    ends_at = models.DateTimeField(null=True, blank=True)
    weekday = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="0 = Monday … 6 = Sunday, for a weekly window."
    )
    start_time = models.TimeField(null=True, blank=True)
    end_time = models.TimeField(null=True, blank=True)
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.environment}: {self.describe()}"

    @property
    def is_weekly(self) -> bool:
        return self.weekday is not None

    def describe(self) -> str:
        if self.is_weekly:
            day = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][self.weekday]
            return f"every {day} {self.start_time:%H:%M}–{self.end_time:%H:%M} UTC"
        return f"{self.starts_at:%Y-%m-%d %H:%M} – {self.ends_at:%Y-%m-%d %H:%M} UTC"

    def covers(self, at) -> bool:
        if self.is_weekly:
            at_utc = at.astimezone(datetime.UTC)
            if at_utc.weekday() != self.weekday:
                return False
            return self.start_time <= at_utc.time() < self.end_time
        return self.starts_at <= at < self.ends_at


class ConfigVar(models.Model):
    """A plain configuration variable of an environment, for every service (service "") or
    for one service."""

    environment = models.ForeignKey(
        Environment, on_delete=models.CASCADE, related_name="config_vars"
    )
    service = models.CharField(max_length=63, blank=True, default="")
    key = models.CharField(max_length=128)
    value = models.TextField(blank=True)
    version = models.PositiveIntegerField(default=1)
    updated_by = models.CharField(max_length=150)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["service", "key"]
        constraints = [
            models.UniqueConstraint(
                fields=["environment", "service", "key"], name="config_key_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.environment}/{self.service or '*'}/{self.key}"


class Secret(models.Model):
    """A secret value, encrypted at rest. Only its name, version and who changed it are ever
    shown; the value is read only by the code that deploys it."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="secrets")
    service = models.CharField(max_length=63, blank=True, default="")
    name = models.CharField(max_length=128)
    ciphertext = models.TextField()
    version = models.PositiveIntegerField(default=1)
    updated_by = models.CharField(max_length=150)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["service", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["environment", "service", "name"], name="secret_name_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.environment}/{self.service or '*'}/{self.name} v{self.version}"


class SecretVersion(models.Model):
    """Every value a secret has had, encrypted, so a change can be traced and undone."""

    secret = models.ForeignKey(Secret, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    ciphertext = models.TextField()
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-version"]
        constraints = [
            models.UniqueConstraint(fields=["secret", "version"], name="secret_version_once")
        ]

    def __str__(self) -> str:
        return f"{self.secret} v{self.version}"
