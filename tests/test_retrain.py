"""`edgeml retrain` and champion/challenger: field rows from a real fleet store (ingest + writer),
validation counted per reason, lineage in model.json, aliases, and the retrain_runs row."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from fleet_support import BASE, fresh_store
from sqlalchemy import insert, select

from edgeml.cli import main
from edgeml.errors import DataError, UsageError
from edgeml.fleet.ingest import classify
from edgeml.fleet.schema import RetrainRun
from edgeml.fleet.writer import Item, Writer
from edgeml.runtime import payloads
from edgeml.runtime.topics import DeviceTopics
from edgeml.train.compare import METRICS, paired
from edgeml.train.field import load_field_rows
from edgeml.train.registry import Registry
from edgeml.train.retrain import retrain
from edgeml.train.workflow import train

T0 = 1_800_000_000.0
NAME = "shift"


def _rule(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """The true labelling rule: up to x1 = 10 "hi" means x2 > 5; beyond it, x2 < 5."""
    return np.where((x1 <= 10) == (x2 > 5), "hi", "lo")


def _recipe(tmp_path: Path, n: int = 300) -> Path:
    rng = np.random.default_rng(0)
    x1, x2 = rng.uniform(0, 10, n), rng.uniform(0, 10, n)
    frame = pd.DataFrame({"x1": x1.round(3), "x2": x2.round(3),
                          "color": rng.choice(["red", "green", "blue"], n),
                          "label": _rule(x1, x2)})
    frame.to_csv(tmp_path / "shift.csv", index=False)
    recipe = {"name": NAME, "task": "classification",
              "data": {"source": "shift.csv", "target": "label",
                       "columns": {"color": "categorical"}},
              "split": {"holdout": 0.25, "stratify": True, "cv": 3, "seed": 42},
              "search": {"method": "grid", "scoring": "accuracy"},
              "candidates": [{"family": "random_forest",
                              "params": {"n_estimators": [30], "max_depth": [8]}}],
              "gates": {"accuracy": ">= 0.5"}}
    path = tmp_path / "shift.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


class Devices:
    """Field devices that capture samples and get labels, stored through ingest + writer."""

    def __init__(self, store: Any) -> None:
        self.writer = Writer(store)
        self.manifest = SimpleNamespace(name=NAME, version=1)

    def _agent(self, device: str) -> Any:
        return SimpleNamespace(topics=DeviceTopics.create(BASE, "plant", device),
                               predictor=SimpleNamespace(manifest=self.manifest))

    def _store(self, topic: str, body: dict[str, Any]) -> None:
        blob = payloads.dumps(body)
        parsed = classify(BASE, topic, blob)
        assert parsed is not None and not hasattr(parsed, "reason"), parsed
        result = self.writer.write([Item(topic, blob, parsed)])
        assert result is not None

    def sample(self, device: str, features: dict[str, Any] | None, ts: float,
               sample_id: str | None = None) -> dict[str, Any]:
        agent = self._agent(device)
        captured = {"id": sample_id or uuid.uuid4().hex, "ts": payloads.iso_utc(ts),
                    "features": features, "prediction": {"label": "hi"}}
        body = payloads.sample(agent, captured)
        self._store(agent.topics.samples, body)
        return body

    def label(self, device: str, record: dict[str, Any], label: Any, ts: float,
              with_features: bool = True) -> None:
        agent = self._agent(device)
        body = payloads.feedback(agent, record if with_features else
                                 {**record, "features": None}, label, ts=ts)
        if not with_features:
            body.pop("features")
        self._store(agent.topics.feedback, body)

    def field_rows(self, n: int, *, x1: tuple[float, float], seed: int, t0: float = T0,
                   flip_band: bool = False) -> None:
        rng = np.random.default_rng(seed)
        a, b = rng.uniform(*x1, n), rng.uniform(0, 10, n)
        labels = _rule(a, b)
        if flip_band:  # a different rule where 3 < x2 < 7
            band = (b > 3) & (b < 7)
            labels = np.where(band, np.where(labels == "hi", "lo", "hi"), labels)
        for i in range(n):
            feats = {"x1": round(float(a[i]), 3), "x2": round(float(b[i]), 3),
                     "color": ["red", "green", "blue"][i % 3]}
            dev = f"dev-{i % 3}"
            rec = self.sample(dev, feats, t0 + 60 * i)
            self.label(dev, rec, str(labels[i]), t0 + 60 * i + 30)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    root = tmp_path_factory.mktemp("retrain")
    recipe = _recipe(root)
    return root, train(recipe, registry=root / "registry")


@pytest.fixture
def world(tmp_path: Path, trained: tuple[Path, Any]) -> Iterator[SimpleNamespace]:
    import shutil

    root, first = trained
    for name in ("shift.csv", "shift.yaml"):
        shutil.copy(root / name, tmp_path / name)
    recipe, reg = tmp_path / "shift.yaml", tmp_path / "registry"
    shutil.copytree(root / "registry", reg)
    with fresh_store("sqlite", tmp_path) as store:
        yield SimpleNamespace(recipe=recipe, reg=reg, store=store, db=store.url,
                              devices=Devices(store), first=first)


def _runs(store: Any) -> list[Any]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(RetrainRun.__table__).order_by(RetrainRun.id)).mappings())


def test_new_labelling_rule_in_the_field_makes_a_challenger_with_lineage(
        world: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    # the inputs moved to x1 in 10..20, where the rule is reversed: v1 gets them all wrong
    world.devices.field_rows(160, x1=(10, 20), seed=1)
    with world.store.engine.begin() as conn:  # what the monitor's trigger inserts
        run_id = conn.execute(insert(RetrainRun).values(
            model_name=NAME, state="running", trigger="decay", started_at=pd.Timestamp.now(
                tz="UTC").to_pydatetime()).returning(RetrainRun.id)).scalar_one()

    result = retrain(world.recipe, db=world.db, registry=world.reg, min_labels=40,
                     field_weight=2.0, margin=0.05, run_id=run_id)

    assert result.state == "registered" and result.ref == f"{NAME}@2"
    recipe_cmp, field_cmp = result.comparison["holdouts"]
    assert field_cmp["holdout"] == "field" and field_cmp["rows"] == 40
    assert field_cmp["champion"] < 0.2 and field_cmp["challenger"] > 0.8
    assert field_cmp["ci_low"] > 0 and field_cmp["mcnemar_p"] < 1e-6
    assert recipe_cmp["rows"] == 75 and recipe_cmp["delta"] >= -0.01
    reg = Registry(world.reg)
    assert reg.aliases(NAME) == {"champion": 1, "challenger": 2}
    assert reg.resolve(f"{NAME}@challenger").version == 2
    meta = json.loads((result.entry.path / "model.json").read_text())
    lineage = meta["lineage"]
    assert lineage["parent"] == f"{NAME}@1" and lineage["run_id"] == run_id
    assert lineage["recipe_data_sha256"] == world.first.entry.record.data.sha256
    assert lineage["field"]["train_rows"] == 120 and lineage["field"]["holdout_rows"] == 40
    assert lineage["field"]["devices"] == ["plant/dev-0", "plant/dev-1", "plant/dev-2"]
    assert lineage["field"]["first_ts"] == "2027-01-15T08:00:00Z"
    assert lineage["field"]["weighting"] == "sample_weight"
    assert meta["comparison"]["decision"] == "challenger"
    assert (result.entry.path / "field_holdout.parquet").is_file()
    assert "Challenger vs champion" in (result.entry.path / "report.html").read_text()

    (row,) = _runs(world.store)
    assert row["state"] == "registered" and row["version"] == 2 and row["finished_at"]
    assert row["outcome"]["lineage"]["field"]["sha256"] == lineage["field"]["sha256"]
    assert row["outcome"]["comparison"]["holdouts"][1]["delta"] == field_cmp["delta"]

    # the registry reads it back: compare shows both holdouts, show the lineage
    with pytest.raises(SystemExit) as exc:
        main(["models", "compare", f"{NAME}@champion", f"{NAME}@challenger",
              "--registry", str(world.reg), "--json"])
    assert exc.value.code == 0
    cmp = json.loads(capsys.readouterr().out)
    assert [h["holdout"] for h in cmp["holdouts"]["holdouts"]] == ["recipe", "field"]
    assert cmp["holdouts"]["holdouts"][1]["delta"] == pytest.approx(field_cmp["delta"])
    with pytest.raises(SystemExit):
        main(["models", "show", f"{NAME}@challenger", "--registry", str(world.reg)])
    out = capsys.readouterr().out
    assert f"parent: {NAME}@1" in out and "alias:  challenger" in out
    with pytest.raises(SystemExit):
        main(["models", "list", "--registry", str(world.reg)])
    out = capsys.readouterr().out
    assert f"{NAME}@1 (champion)" in out and f"{NAME}@2 (challenger)" in out


def test_a_worse_challenger_is_registered_without_alias_and_says_why(
        world: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    # field labels contradict the recipe in a band; trained on them alone it loses the recipe holdout
    world.devices.field_rows(80, x1=(0, 10), seed=2, flip_band=True)
    with pytest.raises(SystemExit) as exc:
        main(["retrain", str(world.recipe), "--db", world.db, "--registry", str(world.reg),
              "--min-labels", "20", "--field-only"])
    out = capsys.readouterr().out
    assert exc.value.code == 1
    assert f"{NAME}@2: rejected: worse on the recipe holdout beyond the margin 0.01" in out
    reg = Registry(world.reg)
    assert reg.aliases(NAME) == {"champion": 1}  # no challenger alias
    assert reg.resolve(f"{NAME}@2").record.comparison.decision == "rejected"
    (row,) = _runs(world.store)
    assert row["state"] == "rejected" and row["trigger"] == "manual" and row["version"] == 2
    assert row["reason"].startswith("worse on the recipe holdout")


@pytest.mark.slow
def test_a_challenger_that_is_not_better_on_the_field_is_rejected(world: SimpleNamespace) -> None:
    world.devices.field_rows(80, x1=(0, 10), seed=3)  # the old rule: v1 is right already
    result = retrain(world.recipe, db=world.db, registry=world.reg, min_labels=20)
    assert result.state == "rejected" and result.reason.startswith("not better on the field")
    assert "challenger" not in Registry(world.reg).aliases(NAME)


def test_bad_field_rows_are_counted_and_left_out(world: SimpleNamespace) -> None:
    _bad_rows_are_counted(world)


def test_bad_field_rows_are_counted_on_postgresql(tmp_path: Path,
                                                  trained: tuple[Path, Any]) -> None:
    from _fleet_support import pg_database

    from edgeml.fleet.db import open_store
    from edgeml.fleet.migrate import upgrade

    root, _ = trained
    with pg_database() as url:  # a database of its own: `retrain --db URL` opens it as is
        upgrade(url)
        store = open_store(url)
        try:
            _bad_rows_are_counted(SimpleNamespace(recipe=root / "shift.yaml",
                                                  reg=root / "registry", store=store, db=url,
                                                  devices=Devices(store)))
        finally:
            store.dispose()


def _bad_rows_are_counted(world: SimpleNamespace) -> None:
    d = world.devices
    d.field_rows(40, x1=(10, 20), seed=4)
    good = {"x1": 15.0, "x2": 2.0, "color": "red"}
    bad = [({**good, "x1": "fifteen"}, "hi"),  # wrong type
           ({**good, "x1": True}, "hi"),  # a boolean is not a number
           ({**good, "color": "purple"}, "hi"),  # unknown category
           ({k: v for k, v in good.items() if k != "x2"}, "hi"),  # missing feature
           (good, "maybe"),  # label outside the classes
           (good, 7)]
    t = T0 + 10_000
    for i, (feats, label) in enumerate(bad):
        d.label("dev-9", d.sample("dev-9", feats, t + i), label, t + i + 1)
    d.sample("dev-9", good, t + 20)  # never labelled
    rec = d.sample("dev-9", {**good, "x2": 3.0}, t + 30)
    d.label("dev-9", rec, "hi", t + 31)
    d.label("dev-9", {**rec, "id": uuid.uuid4().hex}, "hi", t + 32)  # the same reading again
    lonely = {"id": uuid.uuid4().hex, "ts": payloads.iso_utc(t + 40), "features": None,
              "model": {"name": NAME, "version": 1}}
    d.label("dev-9", lonely, "hi", t + 41, with_features=False)  # no features, no sample
    rec2 = d.sample("dev-9", {**good, "x2": 4.0}, t + 50)
    d.label("dev-9", rec2, "hi", t + 51, with_features=False)  # features from its sample

    record = Registry(world.reg).resolve(NAME).record
    rows = load_field_rows(world.store, model=NAME, features=record.features,
                           task="classification", classes=record.classes)
    assert rows.excluded == {
        "no-features": 1, "missing-feature": 1, "wrong-type": 2, "unknown-category": 1,
        "bad-label": 2, "duplicate": 1, "no-feedback": 1}
    assert len(rows) == 42 and rows.ts == sorted(rows.ts)
    assert rows.X.dtypes.to_dict() == {"x1": "float64", "x2": "float64", "color": "object"}
    assert set(rows.y) <= {"hi", "lo"}
    assert rows.X.iloc[-1].to_dict() == {"x1": 15.0, "x2": 4.0, "color": "red"}  # from its sample
    # the run itself is not broken by them
    with pytest.raises(DataError, match=r"42 valid labelled field rows, fewer than --min-labels 43 "
                       r"\(excluded: no-features 1, missing-feature 1, wrong-type 2, "
                       r"unknown-category 1, bad-label 2, duplicate 1, no-feedback 1\)"):
        retrain(world.recipe, db=world.db, registry=world.reg, min_labels=43)


def test_too_few_labels_exit_2_in_one_line(world: SimpleNamespace,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    world.devices.field_rows(12, x1=(10, 20), seed=5)
    with pytest.raises(SystemExit) as exc:
        main(["retrain", str(world.recipe), "--db", world.db, "--registry", str(world.reg),
              "--min-labels", "50"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err == (f"error: {NAME}: 12 valid labelled field rows, fewer than --min-labels 50 "
                   "(excluded: none)\n")
    (row,) = _runs(world.store)
    assert row["state"] == "failed" and "fewer than --min-labels 50" in row["reason"]
    assert Registry(world.reg).versions(NAME) == [1]


def test_aliases_are_set_resolved_and_refused_when_unknown(
        world: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    reg = Registry(world.reg)
    with pytest.raises(SystemExit) as exc:
        main(["models", "alias", f"{NAME}@1", "champion", "--registry", str(world.reg)])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"aliases of {NAME}: champion -> {NAME}@1\n"
    assert reg.resolve(f"{NAME}@champion").version == 1
    assert json.loads((world.reg / NAME / "aliases.json").read_text()) == {"champion": 1}
    with pytest.raises(UsageError, match="no such alias"):
        reg.resolve(f"{NAME}@challenger")
    with pytest.raises(SystemExit) as exc:
        main(["models", "alias", f"{NAME}@7", "challenger", "--registry", str(world.reg)])
    assert exc.value.code == 2 and "shift@7 not found" in capsys.readouterr().err
    with pytest.raises(UsageError, match="invalid alias"):
        reg.set_alias(NAME, "9lives", 1)


def test_paired_metrics_match_scikit_learn_and_the_bootstrap_is_seeded() -> None:
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    y = rng.choice(["a", "b", "c"], 200).astype(object)
    p1 = np.where(rng.random(200) < 0.7, y, rng.choice(["a", "b", "c"], 200)).astype(object)
    p2 = np.where(rng.random(200) < 0.9, y, rng.choice(["a", "b", "c"], 200)).astype(object)
    f1 = METRICS["classification"]["f1_macro"]
    assert f1(y, p1) == pytest.approx(f1_score(y, p1, average="macro"))
    assert METRICS["classification"]["accuracy"](y, p2) == pytest.approx(accuracy_score(y, p2))
    a = paired("classification", "f1_macro", y, p1, p2, holdout="field")
    assert a == paired("classification", "f1_macro", y, p1, p2, holdout="field")
    assert a["ci_low"] < a["delta"] < a["ci_high"] and a["ci_low"] > 0
    rmse = paired("regression", "rmse", [1.0, 2.0, 3.0], np.array([1.5, 2.5, 3.5]),
                  np.array([1.0, 2.0, 3.0]), holdout="recipe")
    assert rmse["delta"] == pytest.approx(0.5) and not rmse["higher_is_better"]


def test_since_and_a_running_retraining_are_checked(world: SimpleNamespace) -> None:
    world.devices.field_rows(30, x1=(10, 20), seed=6)
    with pytest.raises(DataError, match="0 valid labelled field rows"):
        retrain(world.recipe, db=world.db, registry=world.reg, min_labels=5,
                since="2030-01-01")
    with pytest.raises(UsageError, match="--since"):
        retrain(world.recipe, db=world.db, registry=world.reg, since="yesterday")
    with world.store.engine.begin() as conn:
        conn.execute(insert(RetrainRun).values(model_name=NAME, state="running",
                                               trigger="drift",
                                               started_at=pd.Timestamp.now(tz="UTC")))
    with pytest.raises(UsageError, match="already running"):
        retrain(world.recipe, db=world.db, registry=world.reg, min_labels=5)


def _second_version(reg: Path) -> None:
    """A copy of shift@1 registered as shift@2 (a stand-in challenger for promotion)."""
    import shutil

    shutil.copytree(reg / NAME / "1", reg / NAME / "2")
    meta = json.loads((reg / NAME / "2" / "model.json").read_text())
    meta["version"] = 2
    (reg / NAME / "2" / "model.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("state", ["completed", "halted"])
def test_a_finished_rollout_moves_the_champion_only_when_completed(
        world: SimpleNamespace, state: str) -> None:
    from edgeml.fleet.promotion import finished
    from edgeml.fleet.schema import Deployment

    _second_version(world.reg)
    reg = Registry(world.reg)
    reg.set_alias(NAME, "champion", 1)
    reg.set_alias(NAME, "challenger", 2)
    with world.store.engine.begin() as conn:
        run_id = conn.execute(insert(RetrainRun).values(
            model_name=NAME, state="registered", trigger="manual", version=2,
            started_at=pd.Timestamp.now(tz="UTC")).returning(RetrainRun.id)).scalar_one()
    dep = Deployment(id="dep-1", state=state, reason="gate error_rate 0.2 > 0.05",
                     details={"promote": {"registry": str(world.reg), "name": NAME,
                                          "version": 2, "run_id": run_id}})
    finished(world.store, dep)
    finished(world.store, Deployment(id="other", state="completed", details=None))  # not ours
    (row,) = _runs(world.store)
    assert row["deployment_id"] == "dep-1" and row["finished_at"] is not None
    if state == "completed":
        assert reg.aliases(NAME) == {"champion": 2}
        assert row["state"] == "promoted"
    else:
        assert reg.aliases(NAME) == {"champion": 1, "challenger": 2}
        assert row["state"] == "halted" and "gate error_rate" in row["reason"]


@pytest.mark.slow
def test_retrain_deploy_packages_for_the_champions_target_and_starts_a_rollout(
        world: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fleet_support import Fleet

    from edgeml.fleet.deploys import deployment_status
    from edgeml.package.builder import package
    from edgeml.runtime.predictor import Predictor

    v1 = package(f"{NAME}@1", target="x86_64", registry=world.reg, out_dir=tmp_path / "dist")
    fleet = Fleet(world.store, Predictor(v1.path))
    for dev in ("dev-0", "dev-1", "dev-2", "dev-3"):
        fleet.announce(dev)
    # the devices' $info says which target the champion runs on (flashed, never deployed)
    world.devices.field_rows(160, x1=(10, 20), seed=1)
    with pytest.raises(SystemExit) as exc:
        main(["retrain", str(world.recipe), "--db", world.db, "--registry", str(world.reg),
              "--min-labels", "40", "--margin", "0.05", "--deploy", "--fleet", "plant",
              "--stages", "50%,100%", "--out", str(tmp_path / "dist"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert exc.value.code == 0 and out["state"] == "registered"
    rollout = out["rollout"]
    assert rollout["target"] == "x86_64" and rollout["devices"] == ["dev-0", "dev-1", "dev-2",
                                                                     "dev-3"]
    status = deployment_status(world.store, rollout["deployment"])
    assert status["model"] == NAME and status["version"] == 2
    (row,) = _runs(world.store)
    assert row["deployment_id"] == rollout["deployment"] and row["state"] == "registered"


def test_the_triggers_row_is_failed_when_the_run_cannot_begin(world: SimpleNamespace,
                                                              tmp_path: Path) -> None:
    with world.store.engine.begin() as conn:
        run_id = conn.execute(insert(RetrainRun).values(
            model_name=NAME, state="running", trigger="decay",
            started_at=pd.Timestamp.now(tz="UTC")).returning(RetrainRun.id)).scalar_one()
    with pytest.raises(UsageError, match="train a first version"):
        retrain(world.recipe, db=world.db, registry=tmp_path / "empty", run_id=run_id)
    (row,) = _runs(world.store)
    assert row["state"] == "failed" and "no model 'shift'" in row["reason"]
    assert row["finished_at"] is not None
