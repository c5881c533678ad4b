"""The monitor's fast ingest paths give exactly what the checked paths give.

``classify`` validates a well-formed ``edgeml.metrics`` window with a few exact type
checks and packs its counts with one ``array("i")``; anything unusual goes through the
checked path, which names the quarantine reason. These tests mutate real windows (built
by the runtime's own stats code from real predictions) leaf by leaf and compare both
paths, and run ``edgeml monitor --workers 2`` against the real broker.
"""

from __future__ import annotations

import copy
import json
import random
import uuid
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from _fleet_support import Publisher, count_rows, scrape, start_monitor, wait_until
from _mqtt_support import make_bundle
from sqlalchemy.dialects import sqlite

from edgeml.fleet import ingest, layout
from edgeml.fleet.bulk import sqlite_utc
from edgeml.fleet.migrate import upgrade
from edgeml.fleet.schema import UTCDateTime
from edgeml.runtime import payloads
from edgeml.runtime.predictor import Predictor
from edgeml.runtime.stats import RuntimeStats
from edgeml.runtime.topics import DeviceTopics

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
ODD: list[Any] = [None, 1.5, 4.0, True, "x", 2**40, 2**63, -3, [], {}, 0, [1, 2],
                  "2026-12-02T14:56:36Z", "bogus"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


def _windows(bundle: Path, base: str, n: int, devices: int = 5) -> list[tuple[str, bytes]]:
    predictor = Predictor(bundle)
    with zipfile.ZipFile(bundle) as zf:
        rows = json.loads(zf.read("selftest.json"))["rows"]
    feeds = predictor.feeds((rows * 8)[:8])
    prediction = predictor.run(feeds)
    agents = []
    for i in range(devices):
        topics = DeviceTopics.create(base, "lab", f"dev-{i}")
        agents.append((SimpleNamespace(topics=topics, session=1, predictor=predictor),
                       RuntimeStats.for_predictor(predictor)))
    out = []
    for k in range(n):
        agent, stats = agents[k % devices]
        stats.record("v2/models/infer", 0.001 * (1 + k % 3), feeds, prediction)
        rest, times = payloads.split_window(stats.window(reset=True))
        body = payloads.metrics(agent, k // devices + 1, rest, {
            "window": times, "process": {"rss_bytes": 5_000_000, "cpu_percent": 2.5},
            "system": {"temperature_c": 41.0, "load1": 0.2},
            "spool": {"queued": 0, "dropped_total": 0}})
        out.append((agent.topics.metrics, payloads.dumps(body)))
    return out


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(obj, dict):
        for key, value in obj.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            found += _paths(value, (*prefix, i))
    return found


def _mutants(doc: dict[str, Any], count: int, seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    paths = _paths(doc)
    out = []
    for _ in range(count):
        mutant = copy.deepcopy(doc)
        path = rnd.choice(paths)
        parent = mutant
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and rnd.random() < 0.2:
            del parent[path[-1]]
        else:
            parent[path[-1]] = rnd.choice(ODD)
        out.append(mutant)
    return out


def _row(fn: Any, doc: dict[str, Any]) -> Any:
    try:
        row = fn(doc, "lab", "dev-0", "{}", NOW)
    except ingest._Bad as exc:
        return ("rejected", exc.reason)
    except ingest._Odd:
        return "declined"
    row.pop("payload")
    return row


def test_fast_metrics_row_is_the_checked_row_for_every_mutant(bundle: Path) -> None:
    docs = [json.loads(body) for _, body in _windows(bundle, "t", 5, devices=1)]
    accepted = 0
    for i, doc in enumerate(docs):
        assert _row(ingest._fast_metrics, doc) == _row(ingest._metrics, doc)
        for mutant in _mutants(doc, 300, seed=i):
            fast = _row(ingest._fast_metrics, mutant)
            if fast == "declined" or isinstance(fast, tuple):
                continue  # the checked path decides (and names the reason)
            accepted += 1
            assert fast == _row(ingest._metrics, mutant), mutant
    assert accepted > 300  # most mutants the fast path vouches for (numbers, absent keys)


def test_classify_never_raises_and_rejects_like_the_checked_path(bundle: Path) -> None:
    topic, body = _windows(bundle, "t", 1, devices=1)[0]
    doc = json.loads(body)
    for mutant in [*_mutants(doc, 200, seed=7), {**doc, "schema": ["a", "list"]}]:
        result = ingest.classify("t", topic, json.dumps(mutant).encode(), now=NOW)
        checked = _row(ingest._metrics, mutant)
        if isinstance(checked, tuple):
            assert isinstance(result, ingest.Rejected) and result.reason == checked[1]
        else:
            assert isinstance(result, ingest.Parsed)
            row = dict(result.row)
            row.pop("payload")
            assert row == checked


def test_packed_window_is_the_checked_packing_for_every_mutant(
        bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = [json.loads(body) for _, body in _windows(bundle, "t", 4, devices=1)]
    mutants = [m for i, d in enumerate(docs) for m in [d, *_mutants(d, 150, seed=10 + i)]]
    big = copy.deepcopy(docs[0])
    big["features"]["temp"]["counts"][0] = 2**40  # clipped to int32 by the checked path
    mutants.append(big)

    def pack_all() -> list[Any]:
        out: list[Any] = []
        for m in mutants:
            try:
                out.append(layout.pack_window(m))
            except Exception as exc:
                out.append(type(exc))
        return out

    fast = pack_all()
    monkeypatch.setattr(layout, "_NATIVE", False)
    assert fast == pack_all()
    assert len(set(fast)) > 10


def test_sqlite_timestamps_are_stored_as_sqlalchemy_stores_them() -> None:
    proc = UTCDateTime()._cached_bind_processor(sqlite.dialect())  # what SQLAlchemy runs
    assert proc is not None
    for value in (NOW, NOW.replace(microsecond=0), NOW + timedelta(microseconds=7),
                  NOW.astimezone(timezone(timedelta(hours=2))),
                  datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc),
                  datetime(2026, 1, 1, 0, 0)):  # naive: taken as UTC
        assert sqlite_utc(value) == proc(value), value


def test_workers_split_one_group_and_store_every_window_once(
        bundle: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    upgrade(db)
    base = f"test-{uuid.uuid4().hex[:8]}"
    monitor = start_monitor("mqtt://127.0.0.1:1883", db, base, f"mon-{uuid.uuid4().hex[:6]}",
                            "--workers", "2", "--group", f"g{uuid.uuid4().hex[:6]}")
    try:
        wait_until(lambda: monitor.output().count("connected to") >= 2, 30, "both workers")
        wait_until(lambda: monitor.output().count("metrics: ") >= 2, 30, "both /metrics")
        urls = [line.split()[1] for line in monitor.output().splitlines()
                if line.startswith("metrics: ")]
        assert len(set(urls)) == 2
        windows = _windows(bundle, base, 400, devices=20)
        pub = Publisher(1883)
        for topic, body in windows:
            pub.send(topic, body)
        for topic, body in windows[:50]:  # redelivered windows make no second row
            pub.send(topic, body)
        pub.close()
        wait_until(lambda: count_rows(db, "metrics_windows") == 400, 60, "400 windows")
        shares = [scrape(url).get('edgeml_monitor_messages_total{leaf="metrics"}', 0.0)
                  for url in urls]
        assert sum(shares) == 450 and min(shares) > 0, shares
        assert count_rows(db, "metrics_windows") == 400
    finally:
        assert monitor.terminate() == 0
