"""Fleet test helpers: a bundle with a real (quantile) reference profile and holdout metrics,
and a fresh fleet store per test on SQLite or on the machine's PostgreSQL (own schema).

The bundle's features are drawn independently (tests/bundle_factory.make_frame), so a
simulator sampling each feature from the reference profile sees the training distribution:
nothing drifts until a test injects drift. Host-side test helper (scikit-learn, skl2onnx).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from bundle_factory import (
    MANIFEST,
    MODEL,
    NUMERIC,
    SELFTEST,
    LogisticRegression,
    Manifest,
    OnnxInfo,
    OutputSpec,
    Pipeline,
    TargetInfo,
    _inputs,
    _preprocess,
    _to_onnx,
    _zip,
    make_frame,
)

from edgeml.bundle.manifest import Metrics
from edgeml.fleet.ingest import classify
from edgeml.fleet.simspec import DriftSpec, ReferenceSampler
from edgeml.fleet.writer import Item, Writer
from edgeml.runtime import payloads
from edgeml.runtime.predictor import Predictor
from edgeml.runtime.stats import RuntimeStats
from edgeml.runtime.system import platform_info
from edgeml.runtime.topics import DeviceTopics
from edgeml.train.reference import reference_profile

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BASE = "edgeml"
T0 = 1_800_000_000.0  # a fixed simulated start (2027-01-15)
KINDS = {"temp": "numeric", "pressure": "numeric", "color": "categorical"}


def make_fleet_bundle(out_dir: Path, *, name: str = "toy-fleet", version: int = 1,
                      n: int = 4000, seed: int = 0) -> tuple[Path, Manifest]:
    """A classifier bundle with the edgeml.train.reference profile of its training split."""
    import json

    from sklearn.metrics import accuracy_score, f1_score

    frame, y = make_frame(n, seed)
    cut = int(n * 0.75)
    train, hold = frame.iloc[:cut], frame.iloc[cut:]
    pipe = Pipeline([("preprocess", _preprocess()), ("model", LogisticRegression(max_iter=500))])
    pipe.fit(train, y[:cut])
    pred = pipe.predict(hold)
    proba = pipe.predict_proba(hold)
    profile = reference_profile(train, KINDS, task="classification", predictions=pred, proba=proba,
                                y_true=y[cut:])
    metrics = Metrics.from_dict({
        "primary": "accuracy",
        "holdout": {"accuracy": float(accuracy_score(y[cut:], pred)),
                    "f1_macro": float(f1_score(y[cut:], pred, average="macro"))},
        "holdout_rows": len(hold)})
    onnx_bytes = _to_onnx(pipe, {id(pipe.named_steps["model"]): {"zipmap": False}})
    head = hold.head(8)
    selftest = {"rows": head.to_dict(orient="records"),
                "expected": {"label": [str(v) for v in pipe.predict(head)],
                             "probabilities": pipe.predict_proba(head).tolist()},
                "atol": 1e-4}
    members = {MODEL: onnx_bytes,
               SELFTEST: (json.dumps(selftest, sort_keys=True, indent=2) + "\n").encode()}
    manifest = Manifest(
        name=name, version=version, task="classification", created_at="2026-11-28T17:00:00Z",
        edgeml_version="0.1.0", target=TargetInfo(name="x86_64", arch="x86_64"),
        onnx=OnnxInfo(opset=17, ir_version=8, min_onnxruntime="1.16"),
        inputs=_inputs(train, True),
        outputs=OutputSpec(label="label", probabilities="probabilities",
                           classes=[str(c) for c in pipe.classes_], label_dtype="string"),
        files={k: hashlib.sha256(v).hexdigest() for k, v in members.items()},
        metrics=metrics, reference_profile=profile)
    members[MANIFEST] = manifest.to_json()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / manifest.filename
    _zip(path, members)
    assert set(NUMERIC) <= set(KINDS)
    return path, manifest


@contextmanager
def fresh_store(url: str, tmp_path: Path) -> Iterator[Any]:
    """An upgraded fleet store: a SQLite file under tmp_path, or a new PostgreSQL schema."""
    from sqlalchemy import create_engine, text

    from edgeml.fleet.db import open_store
    from edgeml.fleet.migrate import upgrade

    schema = None
    if url.startswith("sqlite"):
        path = tmp_path / f"fleet-{uuid.uuid4().hex[:8]}.db"
        url = f"sqlite:///{path}"
    else:
        schema = f"t_{uuid.uuid4().hex[:12]}"
        admin = create_engine(url)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        admin.dispose()
    try:
        upgrade(url, schema=schema) if schema else upgrade(url)
        store = open_store(url, schema=schema) if schema else open_store(url)
        try:
            yield store
        finally:
            store.dispose()
    finally:
        if schema:
            admin = create_engine(url)
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


class Fleet:
    """Devices that report windows straight into a store through ingest + writer."""

    def __init__(self, store: Any, predictor: Predictor) -> None:
        self.store = store
        self.writer = Writer(store)
        self.p = predictor
        self.sampler = ReferenceSampler(predictor.manifest)
        self.rng = np.random.default_rng(1)
        self.seq: dict[str, int] = {}

    def _agent(self, device: str, now: float) -> Any:
        return SimpleNamespace(topics=DeviceTopics.create(BASE, "plant", device), session=1,
                               started_at=payloads.iso_utc(now), predictor=self.p, broker=SimpleNamespace(display="x"),
                               http_url=None, protocol=None, metrics_interval=10.0,
                               sampler=SimpleNamespace(rate=0.0, max_per_minute=0))

    def state(self, device: str, state: str, session: int = 1) -> None:
        self._store(self._agent(device, T0).topics.state, state.encode(), str(session))

    def _store(self, topic: str, body: bytes, session: str | None = None) -> None:
        parsed = classify(BASE, topic, body, session)
        assert parsed is not None and not hasattr(parsed, "reason"), parsed
        self.writer.write([Item(topic, body, parsed)])

    def announce(self, device: str, now: float = T0) -> None:
        agent = self._agent(device, now)
        self._store(agent.topics.state, b"ready", "1")
        self._store(agent.topics.info, payloads.dumps(payloads.info(agent, platform_info())))

    def window(self, device: str, end: float, rows: int, *, drift: DriftSpec | None = None,
               errors: int = 0, seconds: float = 10.0, latency: float = 0.002, dropped: int = 0,
               seq: int | None = None) -> None:
        stats = RuntimeStats(self.p.manifest, clock=lambda: end - seconds)
        stats._w = type(stats._w)(stats)  # the window starts at end - seconds
        if rows:
            cols = self.sampler.sample(rows, self.rng)
            if drift is not None:
                cols = drift.apply(cols)
            feeds = self.p.feeds(cols)
            stats.record("/v1/predict", latency, feeds, self.p.run(feeds))
        for _ in range(errors):
            stats.record_error("/v1/predict", "input")
        stats.clock = lambda: end
        rest, times = payloads.split_window(stats.window(reset=True))
        agent = self._agent(device, end)
        self.seq[device] = self.seq.get(device, 0) + 1 if seq is None else seq
        extra = {"window": times, "spool": {"queued": 0, "dropped_total": dropped}}
        body = payloads.dumps(payloads.metrics(agent, self.seq[device], rest, extra))
        self._store(agent.topics.metrics, body)
