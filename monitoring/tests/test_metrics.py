"""Agent metrics: batch validation (index and field), one bulk insert, per-minute rollups."""

import time

from core.roles import METRICS_WRITE, READ
from monitoring.models import MetricRollup, MetricSample

URL = "/api/v1/metrics/"


def _sample(i=0, **extra):
    sample = {
        "name": "queue_depth",
        "labels": {"service": "web", "environment": "dev"},
        "value": 10 + i,
        "timestamp": time.time() - 30,
    }
    sample.update(extra)
    return sample


def test_a_bad_sample_rejects_the_whole_batch_naming_index_and_field(token_client, db):
    api = token_client(METRICS_WRITE)
    batch = [_sample(i) for i in range(6)]
    batch[3]["value"] = "high"
    batch[4]["labels"] = {"zone": 7}
    batch[5]["timestamp"] = "yesterday-ish"
    response = api.post(URL, {"samples": batch}, format="json")
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert fields == {
        "samples.3.value": ["Expected a number."],
        "samples.4.labels.zone": ["Expected a string of at most 200 characters."],
        "samples.5.timestamp": [
            "Expected an ISO 8601 time (2026-01-31T12:00:00Z) or epoch seconds."
        ],
    }
    assert MetricSample.objects.count() == 0

    missing = api.post(URL, {"samples": [{"name": "", "value": True}]}, format="json")
    assert set(missing.json()["error"]["fields"]) == {
        "samples.0.name",
        "samples.0.value",
        "samples.0.timestamp",
    }
    assert api.post(URL, {"samples": []}, format="json").status_code == 400
    too_many = api.post(URL, {"samples": [_sample()] * 5001}, format="json")
    assert too_many.json()["error"]["fields"]["samples"][0].startswith("At most 5000")


def test_it_stores_a_batch_with_rollups_and_answers_queries(token_client, db):
    api = token_client(METRICS_WRITE)
    minute = (int(time.time()) // 60 - 1) * 60
    batch = [_sample(i, timestamp=minute + i) for i in range(4)]
    batch.append(_sample(0, labels={"service": "api", "environment": "dev"}, timestamp=minute))
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(minute))
    batch.append(_sample(0, name="cpu", timestamp=iso))
    response = api.post(URL, {"samples": batch}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json() == {"stored": 6, "rollups": 3}
    again = api.post(URL, {"samples": batch[:2]}, format="json")
    assert again.status_code == 201

    web = MetricRollup.objects.get(name="queue_depth", labels__service="web")
    assert (web.count, web.sum, web.min, web.max) == (6, 10 + 11 + 12 + 13 + 10 + 11, 10, 13)

    reader = token_client(READ, name="reader")
    samples = reader.get(URL, {"name": "queue_depth", "label.service": "web"}).json()
    assert samples["count"] == 6
    assert samples["results"][0]["labels"] == {"service": "web", "environment": "dev"}
    rollups = reader.get(
        URL, {"name": "queue_depth", "labels": '{"service": "api"}', "rollup": "1m"}
    ).json()
    assert rollups["count"] == 1 and rollups["results"][0]["mean"] == 10
    later = reader.get(URL, {"name": "queue_depth", "since": str(minute + 2)}).json()
    assert [r["value"] for r in later["results"]] == [13, 12]  # newest first
    assert reader.get(URL).status_code == 400
    assert reader.post(URL, {"samples": batch}, format="json").status_code == 403
