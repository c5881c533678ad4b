"""The loop closes (make test-slow): agents serve champion v1, the field changes under them,
the monitor sees drift and decay, retrains on its own, ships the challenger as a staged
rollout, and the registry ends with champion v2 and its lineage.

Real processes throughout (the same :class:`edgeml.demo_fleet.ClosedLoop` as
``make demo-fleet``): a private Mosquitto, ``edgeml monitor`` with the trigger, four
``edgeml agent`` processes started from ``edgeml flash`` folders, ``edgeml retrain`` started
by the monitor. Every assertion reads the fleet database, the registry or the agents.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest

from edgeml.demo_fleet import MODEL, ClosedLoop, LoopSettings

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("mosquitto") is None
                                 and not Path("/usr/sbin/mosquitto").exists(),
                                 reason="needs the mosquitto binary")]


def _served(url: str) -> int:
    body = json.dumps({"instances": [{"line": "north", "thickness_mm": 2.7,
                                      "temperature_c": 69.0, "speed_m_min": 30.0}]}).encode()
    req = urllib.request.Request(url + "/v1/predict", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return int(json.loads(resp.read())["model"]["version"])


def test_drift_and_decay_retrain_canary_and_promote_on_their_own(tmp_path: Path) -> None:
    loop = ClosedLoop(LoopSettings(out=tmp_path / "loop", quiet=True, timeout_s=420))
    try:
        outcome = loop.run()
        served = {device: _served(url) for device, url in loop.agent_urls.items()}
        q = loop.query
        v1_alerts = q("SELECT kind, resolved_at FROM alerts WHERE model_name = :m "
                      "AND model_version = 1 AND kind IN ('decay', 'drift')", m=MODEL)
        v2_open = q("SELECT kind, device, feature FROM alerts WHERE model_name = :m "
                    "AND model_version = 2 AND kind IN ('decay', 'drift') "
                    "AND resolved_at IS NULL", m=MODEL)
        runs = q("SELECT state, trigger, version, deployment_id FROM retrain_runs "
                 "WHERE model_name = :m", m=MODEL)
        deployment = q("SELECT id, state, stages, model_version FROM deployments "
                       "WHERE model_name = :m", m=MODEL)
        per_device = q("SELECT device, stage, state, serving_version FROM deployment_devices "
                       "WHERE deployment_id = :d ORDER BY device", d=deployment[0].id)
        labels = q("SELECT count(*) AS n FROM feedback WHERE model_name = :m", m=MODEL)[0].n
    finally:
        loop.stop()

    # the monitor raised decay and drift on v1; they resolved once no device served v1
    assert {a.kind for a in v1_alerts} >= {"decay", "drift"}
    assert all(a.resolved_at is not None for a in v1_alerts)
    assert labels >= loop.settings.min_labels
    # one retraining, started by the monitor on an alert (not by hand), promoted
    assert len(runs) == 1
    run = runs[0]
    assert run.trigger in ("decay", "drift") and run.state == "promoted" and run.version == 2
    assert run.deployment_id == deployment[0].id == outcome["deployment"]["id"]
    # a staged rollout: canary first (1 of 4 for 25%), then everyone; all committed v2
    assert deployment[0].state == "completed" and deployment[0].model_version == 2
    assert json.loads(deployment[0].stages) == [0.25, 1.0]
    assert sorted(d.stage for d in per_device) == [0, 1, 1, 1]
    assert {d.state for d in per_device} == {"committed"}
    assert set(served.values()) == {2}
    # the registry: champion v2 with its lineage and the comparison that promoted it
    assert loop.champion() == 2
    record = json.loads((loop.registry / MODEL / "2" / "model.json").read_text())
    lineage, comparison = record["lineage"], record["comparison"]
    assert lineage["parent"] == f"{MODEL}@1"
    assert lineage["field"]["train_rows"] > 0 and lineage["field"]["holdout_rows"] > 0
    assert set(lineage["field"]["devices"]) <= {f"line/{d}" for d in loop.agent_urls} | set(
        loop.agent_urls)
    assert lineage["reference"]["source"] == "field"
    field_holdout = next(h for h in comparison["holdouts"] if h["holdout"] == "field")
    assert comparison["decision"] == "challenger"
    assert field_holdout["ci_low"] > 0 and field_holdout["challenger"] > field_holdout["champion"]
    # v2 was judged against the field it now sees: no decay or drift alert about it
    assert v2_open == []
