"""The fleet store on SQLite and on PostgreSQL: migrations, pragmas, idempotent writes,
seq gaps, stale wills, quarantine and the hourly roll-up.

PostgreSQL runs against the machine's server in a database made for each test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from _fleet_support import Windows, manifest_of, store_url
from _mqtt_support import make_bundle
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select, text

from edgeml.fleet.db import SchemaMismatchError, Store, open_store
from edgeml.fleet.ingest import Parsed, Rejected, classify
from edgeml.fleet.migrate import head_revision, upgrade
from edgeml.fleet.retention import roll_up
from edgeml.fleet.schema import Base, Device, MetricsHourly, MetricsWindow, Quarantine
from edgeml.fleet.views import devices_table, lost_windows_by_device
from edgeml.fleet.writer import Item, Writer
from edgeml.runtime import payloads
from edgeml.runtime.topics import DeviceTopics

BASE = "edgeml"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with store_url(request.param, tmp_path) as url:
        upgrade(url)
        s = open_store(url)
        try:
            yield s
        finally:
            s.dispose()


def _items(*messages: tuple[str, bytes] | tuple[str, bytes, str]) -> list[Item]:
    out = []
    for m in messages:
        topic, body = m[0], m[1]
        session = m[2] if len(m) > 2 else None  # type: ignore[misc]
        out.append(Item(topic, body, classify(BASE, topic, body, session)))
    return out


def test_migrations_create_exactly_the_models(store: Store) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
        assert MigrationContext.configure(conn).get_current_revision() == head_revision()
    assert upgrade(store.url) == (head_revision(), head_revision())  # a no-op the second time


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_upgrade_from_the_first_release_keeps_its_rows(kind: str, tmp_path: Path) -> None:
    """A store made by revision 0001 (telemetry only) upgrades to the head with its rows."""
    with store_url(kind, tmp_path) as url:
        assert upgrade(url, "0001") == (None, "0001")
        now = datetime.now(timezone.utc)
        old = open_store(url, check=False)
        with old.engine.begin() as conn:
            conn.execute(Device.__table__.insert().values(
                fleet="f", device="d1", first_seen=now, last_seen=now))
        old.dispose()
        assert upgrade(url) == ("0001", head_revision())
        store = open_store(url)
        try:
            with store.engine.connect() as conn:
                assert conn.execute(select(Device.device)).scalars().all() == ["d1"]
                assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        finally:
            store.dispose()


def test_sqlite_connections_get_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'f.db'}"
    upgrade(url)
    s = open_store(url)
    with s.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 5000
    s.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_parallel_upgrades_do_not_race(kind: str, tmp_path: Path) -> None:
    with store_url(kind, tmp_path) as url:
        procs = [subprocess.Popen([sys.executable, "-m", "edgeml", "fleet", "db", "upgrade",
                                   "--db", url, "--json"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        results = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], results
        outs = [json.loads(out) for out, _ in results]
        assert {o["to"] for o in outs} == {head_revision()}
        assert sorted(str(o["from"]) for o in outs) == [head_revision(), head_revision(), "None"]


def test_unmigrated_store_says_which_command_fixes_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(SchemaMismatchError, match="run: edgeml fleet db upgrade --db "):
        open_store(url)
    proc = subprocess.run([sys.executable, "-m", "edgeml", "fleet", "devices", "--db", url],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: database {url} has no fleet schema; run: edgeml fleet db upgrade --db {url}"]


def test_unreachable_postgresql_is_one_line_exit_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "edgeml", "fleet", "status", "--db",
                           "postgresql+psycopg://postgres@127.0.0.1:1/nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: database ") and "unreachable" in lines[0]


def test_redelivered_windows_are_stored_once_and_gaps_are_lost_windows(
        store: Store, bundle: Path) -> None:
    w = Windows(manifest_of(bundle), BASE, "plant", "pump-1")
    sent = {seq: w.payload(seq, requests=seq) for seq in (1, 2, 3, 6, 7)}  # 4 and 5 never sent
    writer = Writer(store)
    first = writer.write(_items(*((w.topic, sent[s]) for s in (1, 2, 3))))
    again = writer.write(_items(*((w.topic, sent[s]) for s in (3, 2, 6, 7, 7))))
    assert (first.stored["metrics"], first.duplicates["metrics"]) == (3, 0)
    assert (again.stored["metrics"], again.duplicates["metrics"]) == (2, 3)
    with store.session() as s:
        t = MetricsWindow.__table__
        rows = s.execute(select(t.c.seq, t.c.requests).order_by(t.c.seq)).all()
        assert [tuple(r) for r in rows] == [(1, 1), (2, 2), (3, 3), (6, 6), (7, 7)]
        assert lost_windows_by_device(s) == {("plant", "pump-1"): 2}
    # the two missing windows arrive late (a spool flushing after an outage): nothing is lost
    late = writer.write(_items((w.topic, w.payload(4)), (w.topic, w.payload(5))))
    assert late.stored["metrics"] == 2
    with store.session() as s:
        assert lost_windows_by_device(s) == {("plant", "pump-1"): 0}
    row = next(r for r in devices_table(store) if r["device"] == "pump-1")
    assert row["requests"] == 1 + 2 + 3 + 6 + 7 and row["lost_windows"] == 0


def test_a_lost_will_from_an_older_session_is_ignored(store: Store, bundle: Path) -> None:
    t = DeviceTopics.create(BASE, "plant", "pump-2")
    writer = Writer(store)
    writer.write(_items((t.state, b"ready", "5")))
    stale = writer.write(_items((t.state, b"lost", "4")))
    assert stale.stale_states == 1
    with store.session() as s:
        assert s.execute(select(Device.state, Device.state_session)).one() == ("ready", 5)
    fresh = writer.write(_items((t.state, b"lost", "5")))  # this session's own will counts
    assert fresh.stale_states == 0
    with store.session() as s:
        assert s.execute(select(Device.state)).scalar() == "lost"


def test_malformed_messages_are_quarantined_with_their_reason(store: Store, bundle: Path) -> None:
    w = Windows(manifest_of(bundle), BASE, "plant", "pump-3")
    good = json.loads(w.payload(1))
    t = w.topics

    def variant(**changes: object) -> bytes:
        body = {**good, **changes}
        return json.dumps({k: v for k, v in body.items() if v is not None}).encode()

    cases = {
        "not-json": (t.metrics, b"\x00\xffnot json"),
        "not-object": (t.metrics, b"[1, 2, 3]"),
        "unknown-schema": (t.metrics, variant(schema="edgeml.metrics/99")),
        "missing-field": (t.metrics, variant(seq=None)),
        "wrong-type": (t.metrics, variant(seq="seven")),
        "topic-mismatch": (t.metrics, variant(device="someone-else")),
        "too-large": (t.metrics, b"{" + b" " * (300 * 1024) + b"}"),
        "bad-state": (t.state, b"exploded"),
    }
    result = Writer(store).write(_items(*cases.values(), (t.metrics, w.payload(2))))
    assert result.stored["metrics"] == 1
    assert dict(result.quarantined) == dict.fromkeys(cases, 1)
    with store.session() as s:
        q = Quarantine.__table__
        kept = {r.reason: r for r in s.execute(select(q))}
    assert set(kept) == set(cases)
    assert kept["not-json"].payload == b"\x00\xffnot json"
    assert kept["too-large"].size > 300 * 1024 and len(kept["too-large"].payload) == 64 * 1024
    assert kept["bad-state"].topic == t.state


def test_classify_accepts_every_schema_version_up_to_the_devices(bundle: Path) -> None:
    w = Windows(manifest_of(bundle), BASE, "plant", "pump-4")
    body = json.loads(w.payload(1))
    family = payloads.METRICS_SCHEMA.rpartition("/")[0]
    assert isinstance(classify(BASE, w.topic, json.dumps(body).encode()), Parsed)
    body["schema"] = f"{family}/1"
    assert isinstance(classify(BASE, w.topic, json.dumps(body).encode()), Parsed)
    body["schema"] = f"{family}/{int(payloads.METRICS_SCHEMA.rpartition('/')[2]) + 1}"
    result = classify(BASE, w.topic, json.dumps(body).encode())
    assert isinstance(result, Rejected) and result.reason == "unknown-schema"


def test_retention_rolls_old_windows_up_per_hour(store: Store, bundle: Path) -> None:
    w = Windows(manifest_of(bundle), BASE, "plant", "pump-5")
    now = datetime.now(timezone.utc)
    old_hour = (now - timedelta(days=10)).replace(minute=0, second=0, microsecond=0)
    items = []
    for seq in range(1, 13):  # 12 windows of 5 minutes in one hour, 10 days ago
        body = json.loads(w.payload(seq, requests=seq))
        body["window"]["end"] = (old_hour + timedelta(minutes=5 * seq - 1)).isoformat()
        items.append((w.topic, json.dumps(body).encode()))
    items.append((w.topic, w.payload(13, requests=100)))  # today's window stays
    Writer(store).write(_items(*items))
    rolled = roll_up(store, retain_days=7, now=now)
    assert (rolled.windows, rolled.hours) == (12, 1)
    with store.session() as s:
        h = s.execute(select(MetricsHourly)).scalars().one()
        assert (h.windows, h.requests, h.hour) == (12, sum(range(1, 13)), old_hour)
        assert (h.model_name, h.model_version) == ("pump", 1)
        assert s.execute(select(func.count()).select_from(MetricsWindow)).scalar() == 1
        assert lost_windows_by_device(s) == {("plant", "pump-5"): 0}  # not gaps: rolled up
    assert roll_up(store, retain_days=7, now=now).windows == 0  # idempotent


def test_a_row_the_database_refuses_is_quarantined_alone(store: Store, bundle: Path) -> None:
    w = Windows(manifest_of(bundle), BASE, "plant", "pump-6")
    bad = json.loads(w.payload(1))
    bad["model"]["name"] = "a\u0000b"  # valid JSON; PostgreSQL text cannot hold NUL
    result = Writer(store).write(_items((w.topic, json.dumps(bad).encode()),
                                        (w.topic, w.payload(2)), (w.topic, w.payload(3))))
    if store.dialect == "postgresql":
        assert (result.stored["metrics"], dict(result.quarantined)) == (2, {"db-rejected": 1})
        with store.session() as s:
            (row,) = s.execute(select(Quarantine)).scalars().all()
        assert row.reason == "db-rejected" and "\x00" not in (row.text or "")
        assert row.payload == json.dumps(bad).encode()
    else:  # SQLite stores NUL in text: nothing to refuse
        assert (result.stored["metrics"], dict(result.quarantined)) == (3, {})
