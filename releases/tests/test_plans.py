"""Deployment plans: what each strategy does by default, and every bad step named in the
error, before anything is created."""

import pytest

from agents.devops.deployment_strategies import measure
from agents.devops.monitoring import MetricResult
from core.actors import Actor
from core.errors import ValidationFailed
from releases import plans, services


@pytest.fixture
def fast_template(db):
    services.save_analysis_template(
        Actor.system("tests"),
        "fast",
        [{"name": "errors", "kind": "error_rate", "max": 0.05, "interval_s": 1, "count": 2}],
    )


def kinds(steps: list[dict]) -> list[str]:
    return [s["type"] for s in steps]


def errors_of(strategy: str, params) -> dict:
    with pytest.raises(ValidationFailed) as caught:
        plans.build_plan(strategy, params)
    return caught.value.fields


# Defaults: safe unless asked otherwise


def test_default_canary_shifts_10_then_50_then_100_with_analysis_after_each_shift(db):
    steps = plans.build_plan("canary", None)

    assert kinds(steps) == [
        "deploy",
        "set_weight",
        "analysis",
        "set_weight",
        "analysis",
        "set_weight",
        "finalize",
    ]
    assert [s["weight"] for s in steps if s["type"] == "set_weight"] == [10, 50, 100]
    assert {s["template"] for s in steps if s["type"] == "analysis"} == {"default"}
    assert steps[0]["tag"] == "canary"


def test_default_blue_green_deploys_behind_preview_smokes_analyses_then_switches(db):
    steps = plans.build_plan("blue_green", {})

    assert kinds(steps) == ["deploy", "smoke", "analysis", "set_weight", "finalize"]
    assert steps[0]["tag"] == "preview"
    assert steps[1]["path"] == "/healthz"
    assert steps[2]["template"] == "default"
    # The preview has no users: analysis sends its own requests there.
    assert steps[2]["preview_load"] > 0
    assert steps[3]["weight"] == 100
    assert steps[4]["keep_previous_s"] == 3600


def test_default_progressive_analyses_and_pauses_between_every_increment(db):
    steps = plans.build_plan("progressive", None)

    weights = [s["weight"] for s in steps if s["type"] == "set_weight"]
    assert weights == [25, 50, 75, 100]
    assert {s["template"] for s in steps if s["type"] == "analysis"} == {"default"}
    assert [s["duration_s"] for s in steps if s["type"] == "pause"] == [30, 30, 30]
    # Analysis comes after each shift below 100%, before the pause.
    assert kinds(steps)[1:5] == ["set_weight", "analysis", "pause", "set_weight"]


def test_all_at_once_has_no_analysis(db):
    assert kinds(plans.build_plan("all_at_once", None)) == ["deploy", "set_weight", "finalize"]


def test_a_service_default_steps_replace_the_built_in_ones(db):
    steps = plans.build_plan("canary", None, {"canary": {"steps": [{"set_weight": 30}]}})

    assert [s["weight"] for s in steps if s["type"] == "set_weight"] == [30, 100]
    assert "analysis" not in kinds(steps)


def test_the_default_template_is_error_rate_2_percent_and_p95_within_1_5_stable(db):
    template = services.ensure_default_template()

    by_kind = {m["kind"]: m for m in template.metrics}
    assert set(by_kind) == {"error_rate", "latency"}
    assert by_kind["error_rate"]["max"] == 0.02
    assert by_kind["latency"]["percentile"] == 95
    assert by_kind["latency"]["max_ratio_to_stable"] == 1.5
    assert "default" in plans.known_templates()


class Reader:
    """Metrics as a monitoring backend would answer them, per revision."""

    def __init__(self, errors: dict, latency: dict, samples: int = 100):
        self.errors, self.latency, self.samples = errors, latency, samples

    def error_rate(self, service, revision, window_s):
        return MetricResult(self.errors.get(revision), self.samples)

    def latency_percentile(self, service, revision, pct, window_s):
        return MetricResult(self.latency.get(revision), self.samples)


@pytest.mark.parametrize(
    ("error_rate", "expected"), [(0.0, "pass"), (0.02, "pass"), (0.021, "fail"), (0.5, "fail")]
)
def test_default_error_rate_check_allows_at_most_2_percent(error_rate, expected):
    metric = next(m for m in plans.DEFAULT_TEMPLATE_METRICS if m["kind"] == "error_rate")

    check = measure(metric, Reader({"new": error_rate}, {}), "svc", "new", "old", 5)

    assert check.result == expected


@pytest.mark.parametrize(
    ("new_ms", "expected"), [(100, "pass"), (150, "pass"), (151, "fail"), (400, "fail")]
)
def test_default_latency_check_allows_p95_up_to_1_5_times_stable(new_ms, expected):
    metric = next(m for m in plans.DEFAULT_TEMPLATE_METRICS if m["kind"] == "latency")

    check = measure(metric, Reader({}, {"new": new_ms, "old": 100}), "svc", "new", "old", 5)

    assert check.result == expected
    if expected == "fail":
        assert "above 150" in check.detail


def test_too_little_traffic_is_inconclusive_never_a_pass():
    for metric in plans.DEFAULT_TEMPLATE_METRICS:
        few = Reader({"new": 0.0}, {"new": 10, "old": 10}, samples=3)
        check = measure(metric, few, "svc", "new", "old", 5)
        assert check.result == "inconclusive", metric["name"]
        assert "too little traffic: 3 requests" in check.detail

        none = Reader({}, {}, samples=0)
        assert measure(metric, none, "svc", "new", "old", 5).result == "inconclusive"


def test_latency_without_stable_data_is_inconclusive_while_a_stable_revision_exists():
    metric = next(m for m in plans.DEFAULT_TEMPLATE_METRICS if m["kind"] == "latency")

    check = measure(metric, Reader({}, {"new": 100}), "svc", "new", "old", 5)

    assert check.result == "inconclusive"
    assert check.detail == "no stable data to compare with"


# Bad steps are named


@pytest.mark.parametrize(
    ("steps", "field", "says"),
    [
        ([{"set_weight": 50}, {"set_weight": 20}], "params.steps.1.set_weight", "ascend"),
        ([{"set_weight": 50}, {"set_weight": 50}], "params.steps.1.set_weight", "ascend"),
        ([{"set_weight": 0}], "params.steps.0.set_weight", "1 to 100"),
        ([{"set_weight": 101}], "params.steps.0.set_weight", "1 to 100"),
        ([{"set_weight": -5}], "params.steps.0.set_weight", "1 to 100"),
        ([{"set_weight": 12.5}], "params.steps.0.set_weight", "whole percentage"),
        ([{"set_weight": "10"}], "params.steps.0.set_weight", "whole percentage"),
        ([{"set_weight": True}], "params.steps.0.set_weight", "whole percentage"),
        (
            [{"set_weight": 10}, {"pause": {"duration_s": -1}}],
            "params.steps.1.pause.duration_s",
            "",
        ),
        ([{"pause": {"duration_s": 0}}], "params.steps.0.pause.duration_s", "positive"),
        ([{"pause": {"duration_s": "1m"}}], "params.steps.0.pause.duration_s", "positive"),
        ([{"pause": 30}], "params.steps.0.pause", "duration_s"),
        ([{"analysis": {"template": "nope"}}], "params.steps.0.analysis.template", "'nope'"),
        ([{"analysis": "fast"}], "params.steps.0.analysis", "template"),
        ([{"set_weight": 10}, {"wait": 5}], "params.steps.1", "Unknown step 'wait'"),
        ([{"set_weight": 10, "pause": {}}], "params.steps.0", "Expected one of"),
        (["set_weight"], "params.steps.0", "Expected one of"),
    ],
)
def test_a_bad_canary_step_is_named_with_its_index_and_kind(fast_template, steps, field, says):
    fields = errors_of("canary", {"steps": steps})

    assert field in fields, fields
    assert says in " ".join(fields[field])


def test_every_bad_step_is_reported_at_once(fast_template):
    fields = errors_of(
        "canary",
        {
            "steps": [
                {"set_weight": 200},
                {"analysis": {"template": "x"}},
                {"pause": {"duration_s": 0}},
            ]
        },
    )

    assert set(fields) == {
        "params.steps.0.set_weight",
        "params.steps.1.analysis.template",
        "params.steps.2.pause.duration_s",
    }


def test_an_unknown_template_error_lists_the_known_ones(fast_template):
    fields = errors_of("canary", {"steps": [{"analysis": {"template": "slow"}}]})

    assert fields["params.steps.0.analysis.template"] == [
        "Unknown analysis template 'slow'; known: default, fast."
    ]


@pytest.mark.parametrize(
    "params", [{"steps": []}, {"steps": None}, {"steps": {"set_weight": 10}}, {"weights": [10]}]
)
def test_a_canary_needs_a_list_of_steps(db, params):
    fields = errors_of("canary", params)

    assert "params.steps" in fields


def test_an_unknown_parameter_is_named(db):
    fields = errors_of("canary", {"steps": [{"set_weight": 10}], "stepz": []})

    assert list(fields) == ["params.stepz"]
    assert list(errors_of("all_at_once", {"weight": 100})) == ["params.weight"]


def test_an_unknown_strategy_is_named(db):
    with pytest.raises(ValidationFailed) as caught:
        plans.build_plan("rolling", None)

    assert "strategy" in caught.value.fields
    assert "canary" in caught.value.fields["strategy"][0]


def test_params_must_be_an_object(db):
    assert "params" in errors_of("canary", ["set_weight", 10])


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"increments": 0}, "params.increments"),
        ({"increments": 101}, "params.increments"),
        ({"increments": 2.5}, "params.increments"),
        ({"increments": "4"}, "params.increments"),
        ({"duration_s": 0}, "params.duration_s"),
        ({"duration_s": -60}, "params.duration_s"),
        ({"duration_s": "2m"}, "params.duration_s"),
        ({"analysis": "nope"}, "params.analysis"),
        ({"increment": 4}, "params.increment"),
    ],
)
def test_bad_progressive_params_are_named(fast_template, params, field):
    assert field in errors_of("progressive", params)


def test_progressive_spreads_its_duration_over_the_increments(fast_template):
    steps = plans.build_plan("progressive", {"duration_s": 10, "increments": 2, "analysis": None})

    assert kinds(steps) == ["deploy", "set_weight", "pause", "set_weight", "finalize"]
    assert [s.get("weight") or s.get("duration_s") for s in steps[1:4]] == [50, 5, 100]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"smoke_path": "healthz"}, "params.smoke_path"),
        ({"smoke_path": 200}, "params.smoke_path"),
        ({"rollback_window_s": 0}, "params.rollback_window_s"),
        ({"analysis": "nope"}, "params.analysis"),
        ({"preview": True}, "params.preview"),
    ],
)
def test_bad_blue_green_params_are_named(fast_template, params, field):
    assert field in errors_of("blue_green", params)


def test_blue_green_without_analysis_goes_from_smoke_to_switch(fast_template):
    steps = plans.build_plan("blue_green", {"analysis": None, "smoke_path": "/ready"})

    assert kinds(steps) == ["deploy", "smoke", "set_weight", "finalize"]
    assert steps[1]["path"] == "/ready"


def test_a_canary_that_stops_short_of_100_gets_a_final_shift(fast_template):
    steps = plans.build_plan(
        "canary", {"steps": [{"set_weight": 5}, {"pause": {}}, {"analysis": {}}]}
    )

    assert kinds(steps) == ["deploy", "set_weight", "pause", "analysis", "set_weight", "finalize"]
    assert steps[2] == {"type": "pause"}  # waits for an operator
    assert steps[3]["template"] == "default"
    assert steps[4]["weight"] == 100
    assert plans.describe_step(steps[2]) == "pause until an operator promotes"
