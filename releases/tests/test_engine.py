"""The deployment engine end to end on localcloud: pauses and promotion, abort, analysis
that cannot decide, a revision that crashes, operator actions that do not wait for the
platform, and the durability promises (a killed worker or a lost tick delays a rollout, never
loses it, never runs a step twice)."""

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import django_rq
import requests
from django.db import connection
from rq import SimpleWorker

from agents.devops import cd_pipeline
from releases import services
from releases.models import Deployment
from releases.tests.conftest import DEMO, ROOT, Load, run_queues, wait_for

S = Deployment.Status
DONE = {S.SUCCEEDED, S.FAILED, S.PAUSED, S.ABORTED}


def first_release(actor, demo, env) -> Deployment:
    d = services.request_deployment(actor, demo["service"], env, demo["1.0.0"], "all_at_once")
    d = wait_for(d, DONE)
    assert d.status == S.SUCCEEDED, d.reason
    return d


def canary(actor, demo, env, steps, version="1.1.0") -> Deployment:
    return services.request_deployment(
        actor, demo["service"], env, demo[version], "canary", {"steps": steps}
    )


def versions(url: str, n: int = 10) -> set[str]:
    return {requests.get(url, timeout=5).json()["version"] for _ in range(n)}


def percents(d: Deployment) -> list[int]:
    return [t.new_percent for t in d.traffic.all()]


def steps_done(d: Deployment) -> Counter:
    return Counter(e.data["step"] for e in d.events.filter(kind="step_done"))


# Pauses and promotion


def test_a_pause_without_duration_waits_for_promote(environments, demo_service, admin_actor):
    dev = environments["dev"]
    first = first_release(admin_actor, demo_service, dev)
    d = canary(
        admin_actor, demo_service, dev, [{"set_weight": 20}, {"pause": {}}, {"set_weight": 60}]
    )

    d = wait_for(d, DONE, 30)
    assert (d.status, d.reason) == (S.PAUSED, "waiting for an operator to promote")
    assert percents(d) == [20]
    assert d.next_tick_at is None  # nothing scheduled: it waits for a person
    time.sleep(1)
    d.refresh_from_db()
    assert (d.status, percents(d)) == (S.PAUSED, [20])
    state = services.platform_state(demo_service["service"], dev)
    assert (state.percent(d.new_revision), state.percent(first.new_revision)) == (20, 80)

    services.promote(admin_actor, d)
    d = wait_for(d, DONE, 30)

    assert d.status == S.SUCCEEDED, d.reason
    assert percents(d) == [20, 60, 100]
    assert d.events.filter(kind="promoted", actor="tests").count() == 1
    assert set(steps_done(d).values()) == {1}
    assert versions(state.uri) == {"1.1.0"}


def test_promote_full_skips_the_remaining_steps_to_100(environments, demo_service, admin_actor):
    dev = environments["dev"]
    first_release(admin_actor, demo_service, dev)
    d = canary(
        admin_actor,
        demo_service,
        dev,
        [{"set_weight": 10}, {"pause": {}}, {"set_weight": 50}, {"pause": {}}],
    )
    d = wait_for(d, DONE, 30)
    assert (d.status, percents(d)) == (S.PAUSED, [10])

    services.promote(admin_actor, d, full=True)
    d = wait_for(d, DONE, 30)

    assert d.status == S.SUCCEEDED, d.reason
    assert percents(d) == [10, 100]  # 50% never happened
    assert d.events.filter(message="promoted to 100%: remaining steps skipped").exists()
    state = services.platform_state(demo_service["service"], dev)
    assert state.percent(d.new_revision) == 100
    assert "canary" not in state.tag_uris


# Abort and analysis


def test_abort_mid_canary_puts_all_traffic_back_on_stable(environments, demo_service, admin_actor):
    dev = environments["dev"]
    first = first_release(admin_actor, demo_service, dev)
    d = canary(admin_actor, demo_service, dev, [{"set_weight": 30}, {"pause": {}}])
    d = wait_for(d, DONE, 30)
    assert (d.status, percents(d)) == (S.PAUSED, [30])
    uri = services.platform_state(demo_service["service"], dev).uri
    assert versions(uri, 30) == {"1.0.0", "1.1.0"}

    services.abort(admin_actor, d, reason="wrong build")
    d = wait_for(d, {S.ABORTED, S.FAILED, S.SUCCEEDED}, 30)

    assert (d.status, d.reason) == (S.ABORTED, "aborted by tests: wrong build")
    assert [t.split for t in d.traffic.all()][-1] == {first.new_revision: 100}
    assert percents(d) == [30, 0]
    state = services.platform_state(demo_service["service"], dev)
    assert state.percent(first.new_revision) == 100
    assert "canary" not in state.tag_uris
    assert versions(uri, 20) == {"1.0.0"}


def test_no_traffic_makes_analysis_inconclusive_and_it_never_passes(
    environments, demo_service, admin_actor
):
    dev = environments["dev"]
    first_release(admin_actor, demo_service, dev)
    d = canary(
        admin_actor,
        demo_service,
        dev,
        [{"set_weight": 20}, {"analysis": {"template": "fast"}}, {"set_weight": 50}],
    )

    d = wait_for(d, DONE, 40)  # nobody sends requests

    assert d.status == S.PAUSED
    assert d.reason.startswith("analysis inconclusive: too little traffic: 0 requests, need 5")
    assert percents(d) == [20]
    run = d.analyses.get()
    assert run.result == "inconclusive"
    assert set(run.measurements.values_list("result", flat=True)) == {"inconclusive"}

    # Resumed, it measures again from the start (and, still without traffic, pauses again).
    services.resume(admin_actor, d)
    d = wait_for(d, DONE, 40)
    assert d.status == S.PAUSED
    assert d.reason.startswith("analysis inconclusive: too little traffic: 0 requests")
    assert list(d.analyses.values_list("result", flat=True)) == ["inconclusive", "inconclusive"]
    second = d.analyses.last()
    assert second.measurements.count() == 6  # counted afresh: inconclusive_limit 5, then pause
    assert percents(d) == [20]

    # Promoted, the operator takes the decision the analysis could not: the step is skipped.
    services.promote(admin_actor, d)
    d = wait_for(d, DONE, 30)
    assert d.status == S.SUCCEEDED, d.reason
    assert percents(d) == [20, 50, 100]
    assert d.events.filter(kind="analysis_skipped").count() == 1
    assert not d.analyses.filter(result="passed").exists()


def test_an_analysis_resumed_under_load_passes(environments, demo_service, admin_actor):
    dev = environments["dev"]
    first_release(admin_actor, demo_service, dev)
    uri = services.platform_state(demo_service["service"], dev).uri
    d = canary(
        admin_actor, demo_service, dev, [{"set_weight": 50}, {"analysis": {"template": "fast"}}]
    )
    d = wait_for(d, DONE, 40)
    assert d.status == S.PAUSED

    with Load(uri, rps=40):
        services.resume(admin_actor, d)
        d = wait_for(d, DONE, 40)

    assert d.status == S.SUCCEEDED, d.reason
    assert list(d.analyses.values_list("result", flat=True)) == ["inconclusive", "passed"]


# Operator actions while the engine waits for the platform


def slow_first_traffic_update(monkeypatch, d: Deployment, seconds: float) -> threading.Event:
    """Makes the engine's next traffic update take `seconds` longer (the real update still
    happens, after the wait); the event is set when it starts."""
    adapter, _ = cd_pipeline.platform_for(d)
    real = adapter.set_traffic
    started = threading.Event()

    def set_traffic(service, split):
        if not started.is_set():
            started.set()
            time.sleep(seconds)
        return real(service, split)

    monkeypatch.setattr(adapter, "set_traffic", set_traffic)
    return started


def in_thread(target, *args) -> threading.Thread:
    """Runs target in a thread with its own database connection, as another process would."""

    def run():
        try:
            target(*args)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_an_abort_during_a_slow_traffic_update_answers_at_once(
    environments, demo_service, admin_actor, monkeypatch
):
    dev = environments["dev"]
    first = first_release(admin_actor, demo_service, dev)
    d = canary(admin_actor, demo_service, dev, [{"set_weight": 30}, {"pause": {}}])
    updating = slow_first_traffic_update(monkeypatch, d, seconds=5)
    took = []

    def abort_while_updating():
        assert updating.wait(60)
        started = time.monotonic()
        services.abort(admin_actor, Deployment.objects.get(pk=d.pk), reason="pager")
        took.append(time.monotonic() - started)

    operator = in_thread(abort_while_updating)
    d = wait_for(d, {S.ABORTED, S.FAILED, S.SUCCEEDED}, 60)
    operator.join(10)

    assert took and took[0] < 2, took  # it did not wait for the 5 s update
    assert (d.status, d.reason) == (S.ABORTED, "aborted by tests: pager")
    # The update under way when the abort came is on the record, then traffic went back.
    assert percents(d) == [30, 0]
    assert [t.split for t in d.traffic.all()][-1] == {first.new_revision: 100}
    state = services.platform_state(demo_service["service"], dev)
    assert state.percent(first.new_revision) == 100
    assert "canary" not in state.tag_uris


def test_a_promote_during_a_slow_traffic_update_is_not_lost(
    environments, demo_service, admin_actor, monkeypatch
):
    dev = environments["dev"]
    first_release(admin_actor, demo_service, dev)
    d = canary(
        admin_actor, demo_service, dev, [{"set_weight": 30}, {"pause": {}}, {"set_weight": 60}]
    )
    updating = slow_first_traffic_update(monkeypatch, d, seconds=3)

    def promote_while_updating():
        assert updating.wait(60)
        services.promote(admin_actor, Deployment.objects.get(pk=d.pk))

    operator = in_thread(promote_while_updating)
    d = wait_for(d, DONE, 60)
    operator.join(10)

    # Applied where the rollout stood once the update was recorded: the pause.
    assert d.status == S.SUCCEEDED, d.reason
    assert percents(d) == [30, 60, 100]
    assert set(steps_done(d).values()) == {1}


def test_two_ticks_racing_do_a_step_once(environments, demo_service, admin_actor, monkeypatch):
    dev = environments["dev"]
    first_release(admin_actor, demo_service, dev)
    d = canary(admin_actor, demo_service, dev, [{"set_weight": 30}, {"pause": {}}])
    updating = slow_first_traffic_update(monkeypatch, d, seconds=3)
    statuses = {}

    def run_tick(name):
        statuses[name] = cd_pipeline.tick(d.pk)

    first = in_thread(run_tick, "first")
    assert updating.wait(60)
    second = in_thread(run_tick, "second")
    second.join(10)
    assert first.is_alive()  # the second tick did not wait for the first one's update
    first.join(30)

    assert statuses == {"first": S.PAUSED, "second": S.RUNNING}
    d = wait_for(d, DONE, 30)  # the tick enqueued when it was requested finds nothing to do
    assert (d.status, percents(d)) == (S.PAUSED, [30])
    assert list(steps_done(d).values()) == [1, 1]
    assert d.events.filter(kind="revision_ready").count() == 1


# A revision that does not start


def test_a_revision_that_crashes_on_start_fails_and_traffic_is_untouched(
    environments, demo_service, admin_actor
):
    dev, svc = environments["dev"], demo_service["service"]
    first = first_release(admin_actor, demo_service, dev)
    crash = services.register_release(
        admin_actor, svc, "1.3.0-crash", DEMO, env={"EXIT_ON_START": "3"}, ci_status="passed"
    )
    uri = services.platform_state(svc, dev).uri

    d = services.request_deployment(admin_actor, svc, dev, crash, "canary")
    d = wait_for(d, DONE, 60)

    assert d.status == S.FAILED
    assert "new revision not ready" in d.reason
    assert "exited with code 3" in d.reason
    assert percents(d) == []
    state = services.platform_state(svc, dev)
    assert state.percent(first.new_revision) == 100
    assert "canary" not in state.tag_uris
    assert versions(uri) == {"1.0.0"}
    assert d.job.status == "failed" and "exited with code 3" in d.job.error


def test_a_failed_first_deployment_says_there_is_nothing_to_go_back_to(
    environments, demo_service, admin_actor
):
    dev, svc = environments["dev"], demo_service["service"]
    d = services.request_deployment(
        admin_actor,
        svc,
        dev,
        demo_service["bad"],
        "canary",
        {"steps": [{"set_weight": 50}, {"analysis": {"template": "fast"}}]},
    )
    d = run_until_serving(d)
    with Load(services.platform_state(svc, dev).uri, rps=40):
        d = wait_for(d, DONE, 40)

    assert d.status == S.FAILED
    assert "analysis failed" in d.reason
    assert "no earlier revision" in d.reason
    # The only revision there is keeps serving: there is nothing to put back.
    assert services.platform_state(svc, dev).percent(d.new_revision) == 100


def run_until_serving(d: Deployment) -> Deployment:
    def serving() -> bool:
        d.refresh_from_db()
        return bool(d.new_revision) or not d.is_active

    run_queues(serving, 30)
    return d


# Durability


def _database_url() -> str:
    """The test database, for a worker in another process."""
    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    host = s.get("HOST") or ""
    if host.startswith("/"):
        return f"postgresql://{auth}@/{s['NAME']}?host={host}"
    return f"postgresql://{auth}@{host or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


def _start_worker(log_path) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": _database_url()}
    log = open(log_path, "ab")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, "manage.py", "rqworker", "deploy", "--with-scheduler"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the work horse dies with it
    )


def _poll(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not after {timeout:g} s")


def test_a_worker_killed_mid_canary_loses_nothing_and_repeats_nothing(
    environments, demo_service, admin_actor, tmp_path
):
    dev = environments["dev"]
    first_release(admin_actor, demo_service, dev)
    uri = services.platform_state(demo_service["service"], dev).uri
    worker = _start_worker(tmp_path / "worker-1.log")
    replacement = None
    try:
        with Load(uri, rps=40) as load:
            d = canary(
                admin_actor,
                demo_service,
                dev,
                [
                    {"set_weight": 20},
                    {"analysis": {"template": "fast"}},
                    {"set_weight": 50},
                    {"pause": {"duration_s": 2}},
                    {"set_weight": 100},
                ],
            )

            def measuring() -> bool:
                d.refresh_from_db()
                return (
                    d.current_step == 2 and d.analyses.filter(measurements__isnull=False).exists()
                )

            _poll(measuring, 30, f"deployment {d.pk} measuring")
            os.killpg(worker.pid, signal.SIGKILL)  # no goodbye: a lost machine
            worker.wait(10)
            d.refresh_from_db()
            assert (d.status, percents(d)) == (S.RUNNING, [20])

            # RQ keeps a dead worker's scheduler lock for about a minute; waiting it out is
            # what production does, deleting it is what this test does instead.
            django_rq.get_connection("deploy").delete("rq:scheduler-lock:deploy")
            _poll(lambda: cd_pipeline.reconcile(grace_s=0) == [d.pk], 10, "tick overdue")
            replacement = _start_worker(tmp_path / "worker-2.log")

            def finished() -> bool:
                d.refresh_from_db()
                return not d.is_active

            _poll(finished, 40, f"deployment {d.pk} finished")
    finally:
        for proc in (worker, replacement):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)

    assert d.status == S.SUCCEEDED, (d.reason, (tmp_path / "worker-2.log").read_text()[-2000:])
    # Each traffic change once, each step once, in order.
    assert percents(d) == [20, 50, 100]
    assert list(steps_done(d).values()) == [1] * (len(d.steps) - 1)
    assert list(d.analyses.values_list("result", flat=True)) == ["passed"]
    assert load.failed == 0, load.statuses


def test_a_lost_tick_is_found_by_the_reconciler(environments, demo_service, admin_actor):
    """A Redis restart loses the scheduled tick: the rollout waits, never runs a step twice,
    and continues once the reconciler enqueues the overdue tick again."""
    dev = environments["dev"]
    first_release(admin_actor, demo_service, dev)
    d = canary(
        admin_actor,
        demo_service,
        dev,
        [{"set_weight": 20}, {"pause": {"duration_s": 1}}, {"set_weight": 100}],
    )

    def pausing() -> bool:
        d.refresh_from_db()
        return d.current_step == 2 or not d.is_active

    run_queues(pausing, 30)
    assert d.steps[d.current_step]["type"] == "pause"
    django_rq.get_connection("deploy").flushdb()  # Redis came back empty

    time.sleep(1.5)
    queue = django_rq.get_queue("deploy")
    SimpleWorker([queue], connection=queue.connection).work(burst=True, with_scheduler=True)
    d.refresh_from_db()
    assert (d.status, d.current_step, percents(d)) == (S.RUNNING, 2, [20])
    assert cd_pipeline.reconcile(grace_s=60) == []  # not overdue by a minute yet

    assert cd_pipeline.reconcile(grace_s=0) == [d.pk]
    d = wait_for(d, DONE, 30)
    assert d.status == S.SUCCEEDED, d.reason
    assert percents(d) == [20, 100]
    assert set(steps_done(d).values()) == {1}


def test_reconcile_leaves_paused_and_finished_deployments_alone(
    environments, demo_service, admin_actor
):
    dev = environments["dev"]
    first = first_release(admin_actor, demo_service, dev)
    d = canary(admin_actor, demo_service, dev, [{"set_weight": 20}, {"pause": {}}])
    d = wait_for(d, DONE, 30)
    assert d.status == S.PAUSED

    assert cd_pipeline.reconcile(grace_s=0) == []
    assert django_rq.get_queue("deploy").count == 0
    first.refresh_from_db()
    assert first.next_tick_at is None
