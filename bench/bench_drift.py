"""Drift evaluation cost: 1,000 devices x 10 features over the last hour (target: under 1 s).

    python bench/bench_drift.py                       # 1,000 devices, a window every 60 s
    python bench/bench_drift.py --interval 10         # every 10 s: 360,000 windows in the hour
    python bench/bench_drift.py --db postgresql+psycopg://postgres@127.0.0.1:5432/test

A fresh store (SQLite file in a temporary folder, or a new PostgreSQL schema) gets one
model whose reference has 10 numeric features (deciles: 10 bins each) and 3 classes, and
``devices x 3600 / interval`` metrics windows whose packed counts are multinomial draws
from the reference (10 % of the devices drifted on one feature). Timed, over ``--rounds``
rounds: :func:`edgeml.fleet.drift.evaluate_drift` (one query, sums, every statistic for
every device, fleet and model) and the whole :func:`edgeml.fleet.evaluate.evaluate`
(plus health, decay, alerts). Printed: medians and the ratio to the 1 s target.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, insert, select, text  # noqa: E402

from edgeml.fleet.db import open_store  # noqa: E402
from edgeml.fleet.drift import evaluate_drift  # noqa: E402
from edgeml.fleet.evaluate import EvaluationConfig, References, evaluate  # noqa: E402
from edgeml.fleet.layout import DTYPE, MILLI  # noqa: E402
from edgeml.fleet.migrate import upgrade  # noqa: E402
from edgeml.fleet.schema import Device, MetricsWindow, Model  # noqa: E402
from edgeml.fleet.thresholds import load_thresholds  # noqa: E402

FEATURES = 10
CLASSES = ["a", "b", "c"]
ROWS_PER_WINDOW = 60


def _reference() -> dict[str, object]:
    edges = [float(e) for e in np.linspace(-1.28, 1.28, 9)]
    features = {f"f{i}": {"kind": "numeric", "binning": "quantile", "bin_edges": edges,
                          "counts": [100] * 10, "min": -5.0, "max": 5.0, "missing_rate": 0.0}
                for i in range(FEATURES)}
    return {"task": "classification", "inputs": list(features), "classes": CLASSES,
            "categories": {}, "metrics": {"primary": "accuracy", "holdout": {"accuracy": 0.9}},
            "profile": {"format": 2, "features": features, "prediction": {
                "kind": "classification", "frequencies": {"a": 0.3, "b": 0.3, "c": 0.4},
                "confidence": {"counts": [0] * 5 + [10, 10, 20, 30, 30], "mean": 0.85}}}}


def _vectors(n: int, rng: np.random.Generator, drifted: np.ndarray) -> np.ndarray:
    """[n, width] packed windows: per feature [count, missing, oor, 10 bins], then prediction."""
    parts = []
    for i in range(FEATURES):
        p = np.full(10, 0.1)
        bins = rng.multinomial(ROWS_PER_WINDOW, p, size=n)
        if i == 0:
            bins[drifted] = rng.multinomial(ROWS_PER_WINDOW, [0.01] * 5 + [0.19] * 5,
                                            size=int(drifted.sum()))
        head = np.column_stack([np.full(n, ROWS_PER_WINDOW), np.zeros(n), np.zeros(n)])
        parts += [head, bins]
    classes = rng.multinomial(ROWS_PER_WINDOW, [0.3, 0.3, 0.4], size=n)
    conf = rng.multinomial(ROWS_PER_WINDOW, [0] * 5 + [0.1, 0.1, 0.2, 0.3, 0.3], size=n)
    parts += [np.full((n, 1), ROWS_PER_WINDOW), classes, np.full((n, 1), ROWS_PER_WINDOW),
              np.full((n, 1), int(0.85 * ROWS_PER_WINDOW * MILLI)), conf]
    return np.column_stack(parts).astype(DTYPE)


def _fill(store: object, devices: int, interval: float, now: datetime, seed: int) -> int:
    rng = np.random.default_rng(seed)
    engine = store.engine  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(insert(Model.__table__), [{
            "name": "bench", "version": 1, "task": "classification", "classes": CLASSES,
            "reference": _reference(), "first_seen": now}])
        conn.execute(insert(Device.__table__), [{
            "fleet": "bench", "device": f"d{i:05d}", "state": "ready", "session": 1,
            "model_name": "bench", "model_version": 1, "first_seen": now, "last_seen": now}
            for i in range(devices)])
    per_device = int(3600 // interval)
    drifted = np.zeros(devices, dtype=bool)
    drifted[: devices // 10] = True
    total = 0
    for k in range(per_device):
        end = now - timedelta(seconds=interval * k)
        vectors = _vectors(devices, rng, drifted)
        rows = [{"fleet": "bench", "device": f"d{i:05d}", "session": 1, "seq": per_device - k,
                 "model_name": "bench", "model_version": 1, "window_start": end - timedelta(
                     seconds=interval), "window_end": end, "seconds": interval,
                 "requests": ROWS_PER_WINDOW, "errors": 0, "rows": ROWS_PER_WINDOW, "p95_ms": 1.0,
                 "spool_dropped_total": 0, "received_at": now, "payload": {},
                 "bins": vectors[i].tobytes()} for i in range(devices)]
        with engine.begin() as conn:
            conn.execute(insert(MetricsWindow.__table__), rows)
        total += len(rows)
    return total


def _time(fn: object, rounds: int, cpu: list[float] | None = None) -> list[float]:
    """Wall seconds of each round; the process's CPU seconds appended to ``cpu``."""
    out = []
    for _ in range(rounds):
        c = time.process_time()
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - t)
        if cpu is not None:
            cpu.append(time.process_time() - c)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=60.0, help="seconds between a device's windows")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--db", default=None, help="PostgreSQL URL (default: a SQLite file)")
    args = ap.parse_args()
    now = datetime(2027, 1, 1, tzinfo=timezone.utc)
    schema = None
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{tmp}/bench.db"
        if args.db:
            schema = f"bench_{uuid.uuid4().hex[:10]}"
            with create_engine(args.db).begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            upgrade(url, schema=schema)
            store = open_store(url, schema=schema)
            t = time.perf_counter()
            windows = _fill(store, args.devices, args.interval, now, seed=1)
            print(f"{windows} windows ({args.devices} devices x {FEATURES} features, one every "
                  f"{args.interval:g} s) written in {time.perf_counter() - t:.1f} s "
                  f"({store.dialect})", flush=True)
            th = load_thresholds()
            alerts = 0

            def drift_only() -> None:
                with store.session() as s:
                    r = evaluate_drift(s, now, th, References(s))
                    assert len(r.sums[("bench", 1)].devices) == args.devices

            def everything() -> None:
                nonlocal alerts
                with store.session() as s:
                    alerts = evaluate(s, now, EvaluationConfig(th)).open_alerts

            def query_only() -> None:
                t = MetricsWindow.__table__
                with store.session() as s:
                    s.execute(select(t.c.model_name, t.c.model_version, t.c.fleet, t.c.device,
                                     t.c.bins, t.c.id).where(
                        t.c.window_end > now - timedelta(seconds=th.window_s),
                        t.c.window_end <= now)).all()

            cq: list[float] = []
            cd: list[float] = []
            ce: list[float] = []
            q = statistics.median(_time(query_only, args.rounds, cq))
            d = statistics.median(_time(drift_only, args.rounds, cd))
            e = statistics.median(_time(everything, args.rounds, ce))
            cq_, cd_, ce_ = (statistics.median(c) for c in (cq, cd, ce))
            print(f"the query alone (fetch {windows} packed windows as Rows) median {q:.3f} s "
                  f"(CPU {cq_:.3f} s)")
            print(f"evaluate_drift median {d:.3f} s, CPU {cd_:.3f} s  ({d / 1.0:.2f} x the 1 s "
                  f"target)")
            print(f"evaluate (drift+decay+health+alerts) median {e:.3f} s, CPU {ce_:.3f} s  "
                  f"({e / 1.0:.2f} x)")
            print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on "
                  f"{os.cpu_count()} cores")
            print(f"open alerts: {alerts} ({args.devices // 10} devices drifted on f0)")
            store.dispose()
        finally:
            if schema:
                with create_engine(args.db).begin() as conn:
                    conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
