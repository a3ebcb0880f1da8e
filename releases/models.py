from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from core.models import Job
from environments.models import Environment

# Cloud Run service ids: lowercase letters, digits and hyphens, starting with a letter.
SERVICE_NAME_RE = r"^[a-z]([a-z0-9-]{0,47}[a-z0-9])?$"


class Strategy(models.TextChoices):
    ALL_AT_ONCE = "all_at_once", "All at once"
    BLUE_GREEN = "blue_green", "Blue-green"
    CANARY = "canary", "Canary"
    PROGRESSIVE = "progressive", "Progressive"


class Service(models.Model):
    name = models.CharField(
        max_length=49,
        unique=True,
        validators=[RegexValidator(SERVICE_NAME_RE, "Lowercase letters, digits and dashes.")],
    )
    description = models.CharField(max_length=300, blank=True)
    repository_url = models.URLField(blank=True)
    health_path = models.CharField(max_length=200, default="/healthz")
    default_strategy = models.CharField(
        max_length=20, choices=Strategy.choices, default=Strategy.CANARY
    )
    # Steps used when a deployment names only the strategy; empty: the built-in safe defaults.
    default_steps = models.JSONField(default=dict, blank=True)
    owners = models.CharField(
        max_length=300, blank=True, help_text="Teams or people, comma-separated."
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Release(models.Model):
    """A build of a service, immutable once registered."""

    class CIStatus(models.TextChoices):
        UNKNOWN = "unknown"
        RUNNING = "running"
        PASSED = "passed"
        FAILED = "failed"

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="releases")
    version = models.CharField(max_length=100)
    # A container image (Google) or a command line (localcloud), e.g.
    # "python examples/demo_service.py".
    artifact = models.CharField(max_length=500)
    # Environment variables that belong to the build itself (as an image's ENV would).
    env = models.JSONField(default=dict, blank=True)
    commit_sha = models.CharField(max_length=64, blank=True)
    ci_status = models.CharField(max_length=10, choices=CIStatus.choices, default=CIStatus.UNKNOWN)
    ci_url = models.URLField(blank=True)
    notes = models.TextField(blank=True)
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["service", "version"], name="release_version_once")
        ]

    def __str__(self) -> str:
        return f"{self.service.name} {self.version}"

    def save(self, *args, **kwargs):
        if self.pk is not None and not kwargs.pop("allow_update", False):
            raise ValueError(f"release {self.pk} is immutable")
        super().save(*args, **kwargs)


class AnalysisTemplate(models.Model):
    """Metric checks run during a rollout. `metrics` is a list of checks:

    {"name": "error-rate", "kind": "error_rate" | "latency" | "request_rate" | "metric",
     "max": 0.02 | "min": 1 | "max_ratio_to_stable": 1.5, "percentile": 95,
     "interval_s": 10, "count": 3, "failure_limit": 0, "inconclusive_limit": 1,
     "min_requests": 20, "metric_type": "...", "filter": "..."}
    """

    name = models.CharField(max_length=100, unique=True)
    description = models.CharField(max_length=300, blank=True)
    metrics = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Deployment(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        AWAITING_APPROVAL = "awaiting_approval"
        RUNNING = "running"
        PAUSED = "paused"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        ABORTED = "aborted"
        ROLLED_BACK = "rolled_back"

    ACTIVE = (Status.PENDING, Status.AWAITING_APPROVAL, Status.RUNNING, Status.PAUSED)
    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.ABORTED, Status.ROLLED_BACK)

    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="deployments")
    environment = models.ForeignKey(
        Environment, on_delete=models.PROTECT, related_name="deployments"
    )
    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="deployments")
    strategy = models.CharField(max_length=20, choices=Strategy.choices)
    steps = models.JSONField(default=list)  # the plan, validated when requested
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    current_step = models.PositiveIntegerField(default=0)
    step_state = models.JSONField(default=dict, blank=True)
    # A rollback deployment puts a previous release back as one traffic update.
    is_rollback = models.BooleanField(default=False)
    rollback_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="rollbacks"
    )
    stable_release = models.ForeignKey(
        Release, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    stable_revision = models.CharField(max_length=100, blank=True)
    new_revision = models.CharField(max_length=100, blank=True)
    requested_by = models.CharField(max_length=150)
    requested_by_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    approved_by = models.CharField(max_length=150, blank=True)
    override_reason = models.CharField(max_length=300, blank=True)
    reason = models.TextField(blank=True)  # why it ended as it did, or why it waits
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    next_tick_at = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Moved by every save. The engine runs a step on the platform without the row lock, then
    # compares it to tell whether an operator acted meanwhile.
    version = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # One active deployment per service and environment, decided by the database.
            models.UniqueConstraint(
                fields=["service", "environment"],
                condition=Q(status__in=["pending", "awaiting_approval", "running", "paused"]),
                name="one_active_deployment",
            )
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.release} -> {self.environment.name}"

    def save(self, *args, **kwargs):
        self.version += 1
        if kwargs.get("update_fields") is not None:
            kwargs["update_fields"] = {*kwargs["update_fields"], "version"}
        super().save(*args, **kwargs)

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def current_step_def(self) -> dict | None:
        if self.current_step < len(self.steps):
            return self.steps[self.current_step]
        return None

    @property
    def new_weight(self) -> int:
        return int(self.step_state.get("weight", 0))


class DeploymentEvent(models.Model):
    """The timeline of a deployment."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=40)
    message = models.TextField()
    actor = models.CharField(max_length=150, blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message[:60]}"


class TrafficChange(models.Model):
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="traffic")
    created_at = models.DateTimeField(default=timezone.now)
    split = models.JSONField()  # {revision: percent}
    new_percent = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.deployment_id}: {self.split}"


class AnalysisRun(models.Model):
    class Result(models.TextChoices):
        RUNNING = "running"
        PASSED = "passed"
        FAILED = "failed"
        INCONCLUSIVE = "inconclusive"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="analyses")
    step_index = models.PositiveIntegerField()
    template = models.CharField(max_length=100)
    metrics = models.JSONField(default=list)  # the checks as they were when the run started
    result = models.CharField(max_length=15, choices=Result.choices, default=Result.RUNNING)
    summary = models.TextField(blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["started_at", "id"]

    def __str__(self) -> str:
        return f"{self.deployment_id}/{self.step_index} {self.result}"


class Measurement(models.Model):
    class Result(models.TextChoices):
        PASS = "pass"
        FAIL = "fail"
        INCONCLUSIVE = "inconclusive"

    run = models.ForeignKey(AnalysisRun, on_delete=models.CASCADE, related_name="measurements")
    metric = models.CharField(max_length=100)
    taken_at = models.DateTimeField(default=timezone.now)
    value = models.FloatField(null=True)
    stable_value = models.FloatField(null=True)
    sample_count = models.PositiveIntegerField(default=0)
    threshold = models.CharField(max_length=100)
    result = models.CharField(max_length=15, choices=Result.choices)
    detail = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["taken_at", "id"]

    def __str__(self) -> str:
        return f"{self.metric}={self.value} {self.result}"
