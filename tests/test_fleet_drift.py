"""Drift and decay on windows written through the monitor's ingest and writer (no MQTT here).

Each window is what a device's RuntimeStats reports on real predictions of the bundle,
wrapped by edgeml.runtime.payloads, classified by edgeml.fleet.ingest and stored by
edgeml.fleet.writer: the same rows the monitor writes.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from fleet_support import T0, Fleet, fresh_store, make_fleet_bundle
from sqlalchemy import update

from edgeml.fleet.drift import evaluate_drift
from edgeml.fleet.evaluate import EvaluationConfig, References, evaluate
from edgeml.fleet.layout import Reference, pack_window
from edgeml.fleet.schema import MetricsWindow
from edgeml.fleet.simspec import DriftSpec
from edgeml.fleet.thresholds import load_thresholds
from edgeml.runtime.predictor import Predictor


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    path, _ = make_fleet_bundle(tmp_path_factory.mktemp("drift-bundle"))
    return Predictor(path)


def _at(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)


def test_packed_windows_line_up_with_the_reference(predictor: Predictor, tmp_path: Path) -> None:
    with fresh_store("sqlite", tmp_path) as store:
        fleet = Fleet(store, predictor)
        fleet.announce("d1")
        fleet.window("d1", T0 + 10, 500)
        ref = References()
        ref.session = None
        with store.session() as s:
            refs = References(s)
            reference = refs("toy-fleet", 1)
            assert reference is not None
            result = evaluate_drift(s, _at(T0 + 10), load_thresholds(), refs)
    direct = Reference.from_manifest(predictor.manifest)
    assert (direct.width, [sg.nbins for sg in direct.segments]) == (
        reference.width, [sg.nbins for sg in reference.segments])
    sums = result.sums[("toy-fleet", 1)]
    temp = next(sg for sg in reference.segments if sg.name == "temp")
    assert sums.per_device[0, temp.start] == 500  # the count of the temp segment
    assert sums.per_device[0, temp.offset:temp.offset + temp.nbins].sum() == 500
    assert result.scores == []  # drawn from the reference: nothing drifts


def test_a_quiet_device_is_not_judged_and_a_drifted_one_is(predictor: Predictor, tmp_path: Path) -> None:
    shift = DriftSpec.parse("feature=temp,shift=+15")
    with fresh_store("sqlite", tmp_path) as store:
        fleet = Fleet(store, predictor)
        for d in ("quiet", "busy", "calm"):
            fleet.announce(d)
        for k in range(1, 4):
            fleet.window("quiet", T0 + 10 * k, 20, drift=shift)  # 60 rows: under min_rows
            fleet.window("busy", T0 + 10 * k, 200, drift=shift)
            fleet.window("calm", T0 + 10 * k, 200)
        with store.session() as s:
            result = evaluate_drift(s, _at(T0 + 30), load_thresholds(), References(s))
    device_alerts = {(sc.device, sc.feature, sc.statistic) for sc in result.scores
                     if sc.scope == "device" and sc.level == "alert"}
    assert ("busy", "temp", "psi") in device_alerts
    assert {d for d, _, _ in device_alerts} == {"busy"}
    judged = {k[2] for k in result.judged if k[0] == "device"}
    assert judged == {"busy", "calm"}  # the quiet device was not judged at all
    psi = next(sc for sc in result.scores if sc.device == "busy" and sc.statistic == "psi"
               and sc.feature == "temp")
    assert psi.value > 0.25 and psi.rows == 600 and psi.threshold == 0.25
    assert result.worst[("plant", "busy")][0] in ("temp", "prediction")


def test_a_window_without_packed_bins_is_packed_from_its_payload(predictor: Predictor,
                                                                 tmp_path: Path) -> None:
    with fresh_store("sqlite", tmp_path) as store:
        fleet = Fleet(store, predictor)
        fleet.announce("d1")
        fleet.window("d1", T0 + 10, 300, drift=DriftSpec.parse("feature=pressure,shift=+40"))
        with store.session() as s:
            before = evaluate_drift(s, _at(T0 + 10), load_thresholds(), References(s))
            s.execute(update(MetricsWindow.__table__).values(bins=None))
        with store.session() as s:
            after = evaluate_drift(s, _at(T0 + 10), load_thresholds(), References(s))
    assert before.scores and [sc.value for sc in before.scores] == [sc.value for sc in after.scores]
    g = after.sums[("toy-fleet", 1)]
    assert np.array_equal(before.sums[("toy-fleet", 1)].per_device, g.per_device)


def test_thresholds_per_model_override_the_defaults(predictor: Predictor, tmp_path: Path) -> None:
    path = tmp_path / "th.yaml"
    path.write_text("min_rows: 100\nmodels:\n  toy-fleet@1:\n    drift:\n      numeric:\n"
                    "        psi: {watch: 5, alert: 10}\n", encoding="utf-8")
    th = load_thresholds(path)
    assert th.rules(model="toy-fleet", version=1).drift("numeric")["psi"].alert == 10
    assert th.rules(model="toy-fleet", version=2).drift("numeric")["psi"].alert == 0.25
    with fresh_store("sqlite", tmp_path) as store:
        fleet = Fleet(store, predictor)
        fleet.announce("d1")
        fleet.window("d1", T0 + 10, 300, drift=DriftSpec.parse("feature=temp,shift=+15"))
        with store.session() as s:
            result = evaluate_drift(s, _at(T0 + 10), th, References(s))
    assert not [sc for sc in result.scores if sc.statistic == "psi" and sc.feature == "temp"]


def test_estimated_accuracy_sits_near_the_holdout_accuracy(predictor: Predictor, tmp_path: Path) -> None:
    with fresh_store("sqlite", tmp_path) as store:
        fleet = Fleet(store, predictor)
        fleet.announce("d1")
        for k in range(1, 6):
            fleet.window("d1", T0 + 10 * k, 400)
        with store.session() as s:
            result = evaluate(s, _at(T0 + 50), EvaluationConfig())
    holdout = predictor.manifest.metrics.holdout["accuracy"]
    est = result.estimated[(None, None, "toy-fleet", 1)]
    assert abs(est - holdout) < 0.05, (est, holdout)


def test_bad_thresholds_files_name_the_key(tmp_path: Path) -> None:
    from edgeml.errors import UsageError

    cases = {
        "window: soon\n": "window: 'soon' is not a duration",
        "nope: 1\n": "nope: unknown key",
        "defaults:\n  drift:\n    categorical:\n      psi: {alert: 1}\n":
            "drift.categorical.psi: psi does not accept categorical features",
        "min_rows: -1\n": "min_rows: expected a count >= 0",
    }
    for text, message in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(UsageError, match=message):
            load_thresholds(path)


def test_pack_window_ignores_garbage() -> None:
    assert pack_window({"features": {"x": "nonsense"}, "predictions": 3}) == np.zeros(3, "<i4").tobytes()


@pytest.mark.parametrize("task", ["classification", "regression", "anomaly"])
def test_every_task_packs_to_its_reference_width(task: str, tmp_path: Path) -> None:
    from bundle_factory import make_bundle

    from edgeml.runtime.stats import RuntimeStats

    p = Predictor(make_bundle(tmp_path, task).path)
    stats = RuntimeStats(p.manifest)
    feeds = p.feeds([{"temp": 20.0, "pressure": 1000.0, "color": "red"}] * 7)
    stats.record("/v1/predict", 0.001, feeds, p.run(feeds))
    window = stats.window()
    packed = np.frombuffer(pack_window(window), dtype="<i4")
    ref = Reference.from_manifest(p.manifest)
    assert packed.size == ref.width
    seg = ref.prediction
    assert seg is not None
    assert packed[seg.offset:seg.offset + seg.nbins].sum() in (0, 7)  # 0: no reference bins
    assert packed[ref.segments[0].start] == 7  # the first input's count
