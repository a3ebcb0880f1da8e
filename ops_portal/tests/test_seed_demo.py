import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command

from core.actors import Actor
from core.jobs import JobContext
from core.models import AuditEvent, Job
from environments.models import Environment
from monitoring.models import AlertPolicy, HealthCheck
from ops_portal.demo import bad_release_scenario
from releases.models import Deployment, Release, Service


@pytest.fixture
def seeded(db, settings):
    settings.DEMO_PASSWORD = "demo-pass-123"
    call_command("seed_demo", "--run-endpoint", "http://127.0.0.1:9", stdout=open("/dev/null", "w"))


def test_seed_demo_creates_the_demo_once(seeded, capsys):
    assert list(Environment.objects.values_list("name", "protected")) == [
        ("dev", False),
        ("staging", False),
        ("production", True),
    ]
    for role in ("admin", "operator", "approver", "viewer"):
        user = authenticate(username=role, password="demo-pass-123")
        assert user is not None and user.groups.filter(name=role).exists()
    demo = Service.objects.get(name="demo")
    assert dict(Release.objects.filter(service=demo).values_list("version", "ci_status")) == {
        "1.0.0": "passed",
        "1.1.0": "passed",
        "1.2.0": "passed",
        "1.3.0": "failed",
    }
    assert Release.objects.get(version="1.2.0").env == {"ERROR_RATE": "0.3"}
    # The first release goes everywhere; production's waits for nobody: the approver approved.
    assert sorted(Deployment.objects.values_list("environment__name", "status")) == [
        ("dev", "running"),
        ("production", "running"),
        ("staging", "running"),
    ]
    assert Deployment.objects.get(environment__name="production").approved_by == "approver"
    assert HealthCheck.objects.filter(service=demo).count() == 3
    assert AlertPolicy.objects.filter(environment__name="production").count() == 1
    assert Job.objects.filter(func="ops_portal.demo.bad_release_scenario").count() == 1

    counts = (
        Environment.objects.count(),
        Release.objects.count(),
        Deployment.objects.count(),
        Job.objects.count(),
        AuditEvent.objects.count(),
    )
    call_command("seed_demo", stdout=open("/dev/null", "w"))
    assert (
        Environment.objects.count(),
        Release.objects.count(),
        Deployment.objects.count(),
        Job.objects.count(),
        AuditEvent.objects.count(),
    ) == counts


def test_the_scenario_sends_the_bad_release_once_the_good_one_runs(seeded, settings):
    dev = Environment.objects.get(name="dev")
    first = Deployment.objects.get(environment=dev)
    Deployment.objects.filter(pk=first.pk).update(status="succeeded", new_revision="demo-r1")
    job = Job.objects.get(func="ops_portal.demo.bad_release_scenario")
    ctx = JobContext(job=job, actor=Actor.system("seed_demo"))

    result = bad_release_scenario(ctx, "demo", "dev", "1.0.0", "1.2.0", wait_s=5, baseline_s=0)

    bad = Deployment.objects.get(pk=result["deployment"])
    assert (bad.release.version, bad.environment, bad.strategy, bad.status) == (
        "1.2.0",
        dev,
        "canary",
        "running",
    )
    # The service's default canary, with analysis: the bad release is caught by it.
    assert [s["type"] for s in bad.steps].count("analysis") == 2
