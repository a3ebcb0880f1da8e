"""Deployment plans: the steps a strategy takes, built from a request and validated before
anything is created, so that a bad step is a 400 naming it.

Requested parameters, by strategy:
- all_at_once: {}
- canary: {"steps": [{"set_weight": 10}, {"analysis": {"template": "default"}},
                     {"pause": {"duration_s": 60}}, {"pause": {}}, {"set_weight": 100}]}
  (a pause without duration waits until an operator promotes)
- blue_green: {"analysis": "default" | null, "smoke_path": "/healthz",
               "rollback_window_s": 3600}
- progressive: {"duration_s": 300, "increments": 5, "analysis": "default" | null}

The compiled plan is a list of {"type": ...} steps: deploy, set_weight, pause, analysis,
smoke, finalize; the engine runs them in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import ValidationFailed
from releases.models import AnalysisTemplate, Strategy

DEFAULT_TEMPLATE = "default"
CANARY_TAG = "canary"
PREVIEW_TAG = "preview"

# Safe by default: every strategy but all_at_once checks its release with analysis.
DEFAULT_PARAMS = {
    Strategy.ALL_AT_ONCE: {},
    Strategy.CANARY: {
        "steps": [
            {"set_weight": 10},
            {"analysis": {"template": DEFAULT_TEMPLATE}},
            {"set_weight": 50},
            {"analysis": {"template": DEFAULT_TEMPLATE}},
            {"set_weight": 100},
        ]
    },
    Strategy.BLUE_GREEN: {
        "analysis": DEFAULT_TEMPLATE,
        "smoke_path": "/healthz",
        "rollback_window_s": 3600,
    },
    Strategy.PROGRESSIVE: {"duration_s": 120, "increments": 4, "analysis": DEFAULT_TEMPLATE},
}

# The built-in analysis template: error rate at most 2% and p95 latency within 1.5x stable
# or within 25 ms of it, whichever is looser, so that a 1 ms baseline does not fail a release
# on noise.
DEFAULT_TEMPLATE_METRICS = [
    {
        "name": "error-rate",
        "kind": "error_rate",
        "max": 0.02,
        "interval_s": 5,
        "count": 3,
        "failure_limit": 0,
        "inconclusive_limit": 3,
        "min_requests": 10,
    },
    {
        "name": "p95-latency",
        "kind": "latency",
        "percentile": 95,
        "max_ratio_to_stable": 1.5,
        "slack_ms": 25,
        "interval_s": 5,
        "count": 3,
        "failure_limit": 1,
        "inconclusive_limit": 3,
        "min_requests": 10,
    },
]


@dataclass
class _Errors:
    fields: dict

    def add(self, name: str, message: str) -> None:
        self.fields.setdefault(name, []).append(message)


def _positive_number(value, name: str, errors: _Errors) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        errors.add(name, "Expected a positive number of seconds.")
        return False
    return True


def _template_name(value, name: str, errors: _Errors, known: set[str]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in known:
        errors.add(name, f"Unknown analysis template {value!r}; known: {', '.join(sorted(known))}.")
        return None
    return value


def known_templates() -> set[str]:
    return set(AnalysisTemplate.objects.values_list("name", flat=True)) | {DEFAULT_TEMPLATE}


def build_plan(strategy: str, params: dict | None, defaults: dict | None = None) -> list[dict]:
    """The compiled steps for a strategy and its params; ValidationFailed names each bad step
    as params.steps.<i>.<kind> (or params.<name>)."""
    if strategy not in Strategy.values:
        raise ValidationFailed(
            f"Unknown strategy {strategy!r}.",
            fields={"strategy": [f"Expected one of: {', '.join(Strategy.values)}."]},
        )
    if params is None or params == {}:
        params = (defaults or {}).get(strategy) or DEFAULT_PARAMS[strategy]
    if not isinstance(params, dict):
        raise ValidationFailed(
            "params must be an object", fields={"params": ["Expected an object."]}
        )
    errors = _Errors({})
    known = known_templates()
    builder = {
        Strategy.ALL_AT_ONCE: _all_at_once,
        Strategy.CANARY: _canary,
        Strategy.BLUE_GREEN: _blue_green,
        Strategy.PROGRESSIVE: _progressive,
    }[strategy]
    steps = builder(params, errors, known)
    if errors.fields:
        raise ValidationFailed(
            "Invalid deployment steps: " + ", ".join(errors.fields), fields=errors.fields
        )
    return steps


def _unknown_keys(params: dict, allowed: set[str], errors: _Errors) -> None:
    for key in params:
        if key not in allowed:
            errors.add(
                f"params.{key}", f"Unknown parameter; expected: {', '.join(sorted(allowed))}."
            )


def _all_at_once(params, errors, known) -> list[dict]:
    _unknown_keys(params, set(), errors)
    return [
        {"type": "deploy", "tag": CANARY_TAG},
        {"type": "set_weight", "weight": 100},
        {"type": "finalize"},
    ]


def _canary(params, errors, known) -> list[dict]:
    _unknown_keys(params, {"steps"}, errors)
    raw_steps = params.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        errors.add("params.steps", "Expected a non-empty list of steps.")
        return []
    steps: list[dict] = [{"type": "deploy", "tag": CANARY_TAG}]
    last_weight = 0
    for i, raw in enumerate(raw_steps):
        where = f"params.steps.{i}"
        if not isinstance(raw, dict) or len(raw) != 1:
            errors.add(
                where, 'Expected one of {"set_weight": N}, {"pause": {...}}, {"analysis": {...}}.'
            )
            continue
        kind, value = next(iter(raw.items()))
        if kind == "set_weight":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
                errors.add(f"{where}.set_weight", "Expected a whole percentage from 1 to 100.")
            elif value <= last_weight:
                errors.add(
                    f"{where}.set_weight", f"Weights must ascend: {value} after {last_weight}."
                )
            else:
                last_weight = value
                steps.append({"type": "set_weight", "weight": value})
        elif kind == "pause":
            value = value or {}
            if not isinstance(value, dict):
                errors.add(f"{where}.pause", 'Expected {} or {"duration_s": N}.')
            elif "duration_s" in value:
                if _positive_number(value["duration_s"], f"{where}.pause.duration_s", errors):
                    steps.append({"type": "pause", "duration_s": value["duration_s"]})
            else:
                steps.append({"type": "pause"})
        elif kind == "analysis":
            value = value or {}
            if not isinstance(value, dict):
                errors.add(f"{where}.analysis", 'Expected {"template": NAME}.')
                continue
            name = _template_name(
                value.get("template", DEFAULT_TEMPLATE), f"{where}.analysis.template", errors, known
            )
            if name:
                steps.append({"type": "analysis", "template": name})
        else:
            errors.add(where, f"Unknown step {kind!r}; expected set_weight, pause or analysis.")
    if last_weight != 100 and not errors.fields:
        steps.append({"type": "set_weight", "weight": 100})
    steps.append({"type": "finalize"})
    return steps


def _blue_green(params, errors, known) -> list[dict]:
    _unknown_keys(params, {"analysis", "smoke_path", "rollback_window_s"}, errors)
    smoke_path = params.get("smoke_path", "/healthz")
    if not isinstance(smoke_path, str) or not smoke_path.startswith("/"):
        errors.add("params.smoke_path", "Expected a path starting with /.")
    window = params.get("rollback_window_s", 3600)
    _positive_number(window, "params.rollback_window_s", errors)
    template = _template_name(params.get("analysis"), "params.analysis", errors, known)
    steps = [{"type": "deploy", "tag": PREVIEW_TAG}, {"type": "smoke", "path": smoke_path}]
    if template:
        # The preview has no user traffic: the engine sends requests to the preview URL before
        # each measurement, so that analysis judges the new revision before the switch.
        steps.append({"type": "analysis", "template": template, "preview_load": 20})
    steps.append({"type": "set_weight", "weight": 100})
    steps.append({"type": "finalize", "keep_previous_s": window})
    return steps


def _progressive(params, errors, known) -> list[dict]:
    _unknown_keys(params, {"duration_s", "increments", "analysis"}, errors)
    duration = params.get("duration_s", 120)
    increments = params.get("increments", 4)
    ok = _positive_number(duration, "params.duration_s", errors)
    if (
        isinstance(increments, bool)
        or not isinstance(increments, int)
        or not 1 <= increments <= 100
    ):
        errors.add("params.increments", "Expected a whole number from 1 to 100.")
        ok = False
    template = _template_name(
        params.get("analysis", DEFAULT_TEMPLATE), "params.analysis", errors, known
    )
    if not ok:
        return []
    steps: list[dict] = [{"type": "deploy", "tag": CANARY_TAG}]
    wait = duration / increments
    for i in range(1, increments + 1):
        weight = round(100 * i / increments)
        steps.append({"type": "set_weight", "weight": weight})
        if weight < 100:
            if template:
                steps.append({"type": "analysis", "template": template})
            steps.append({"type": "pause", "duration_s": wait})
    steps.append({"type": "finalize"})
    return steps


def describe_step(step: dict) -> str:
    kind = step["type"]
    if kind == "deploy":
        return f"deploy the new revision at 0% behind tag '{step['tag']}'"
    if kind == "set_weight":
        return f"shift {step['weight']}% of traffic to the new revision"
    if kind == "pause":
        if "duration_s" in step:
            return f"pause {step['duration_s']:g} s"
        return "pause until an operator promotes"
    if kind == "analysis":
        return f"analysis with template '{step['template']}'"
    if kind == "smoke":
        return f"smoke check {step['path']} on the preview URL"
    if kind == "finalize":
        return "finalize: remove the tag, the new revision becomes stable"
    if kind == "rollback":
        return f"put revision {step.get('revision', '?')} back at 100%"
    return kind
