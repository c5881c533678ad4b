"""Store-and-forward: a bounded, ordered, on-disk queue of outgoing MQTT telemetry.

paho-mqtt keeps in-flight messages only in memory (eclipse-paho/paho.mqtt.python#634),
so this SQLite queue is the source of truth: every QoS-1 telemetry message is appended
here first and deleted only when the broker's PUBACK for it arrives. A crash, a restart
or a broker outage therefore loses nothing; messages are sent again, in order, when a
connection is back (at-least-once: a message whose PUBACK was lost in a crash is sent
twice; consumers deduplicate on ``(device, seq)`` or the sample/feedback ``id``).

The queue is bounded (messages and bytes); when full, the oldest rows are dropped and
``dropped_total`` (persisted) grows. The same database holds the device's persistent
counters (session, metrics seq) and the small ring of captured samples that feedback
is joined with. One process owns a spool folder at a time (an exclusive lock file).

Database: ``<dir>/spool.sqlite3`` in WAL mode with ``synchronous=FULL`` (every commit is
fsynced: durable across process crashes and power failures). Device-safe:
standard library only. All methods are thread-safe; the serving hot path never calls them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeml.errors import RuntimeServiceError

try:  # POSIX only; without it the folder is simply not locked.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_MESSAGES",
    "DEFAULT_MAX_SAMPLES",
    "Spool",
    "SpooledMessage",
    "default_spool_dir",
]

DEFAULT_MAX_MESSAGES = 10_000
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_SAMPLES = 1_000
DB_NAME = "spool.sqlite3"
LOCK_NAME = "spool.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    record TEXT NOT NULL
);
"""


def default_spool_dir(device_id: str) -> Path:
    """``$XDG_STATE_HOME/edgeml/<device>``, else ``~/.local/state/edgeml/<device>``."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "edgeml" / device_id


@dataclass(frozen=True)
class SpooledMessage:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Spool:
    """A bounded on-disk FIFO of MQTT messages plus persistent counters and a sample ring."""

    def __init__(
        self,
        directory: str | Path,
        *,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_samples: int = DEFAULT_MAX_SAMPLES,
    ) -> None:
        if max_messages < 1 or max_bytes < 1 or max_samples < 1:
            raise RuntimeServiceError("spool bounds must be positive")
        self.directory = Path(directory).expanduser()
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_samples = max_samples
        self._lock = threading.Lock()
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock_fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise RuntimeServiceError(f"cannot use spool folder {self.directory}: {exc}") from exc
        if fcntl is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(self._lock_fd)
                raise RuntimeServiceError(
                    f"spool folder {self.directory} is in use by another edgeml process"
                ) from exc
        try:
            self._db = sqlite3.connect(
                self.directory / DB_NAME, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: each commit fsyncs the WAL, so a power cut loses no queued message and never
            # rolls back the session counter (NORMAL keeps the file consistent but may)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            count, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM queue"
            ).fetchone()
        except sqlite3.Error as exc:
            self._release()
            raise RuntimeServiceError(f"cannot open spool {self.directory / DB_NAME}: {exc}") from exc
        self._count = int(count)
        self._bytes = int(size)

    def _recount(self) -> None:
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM queue"
        ).fetchone()
        self._count = int(count)
        self._bytes = int(size)

    # -- lifecycle ------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None  # type: ignore[assignment]
            self._release()

    def _release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                raise RuntimeServiceError("spool is closed")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    self._recount()
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise RuntimeServiceError(f"spool {self.directory}: {exc}") from exc

    # -- the queue ------------------------------------------------------------

    def append(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int | None:
        """Queue one message; return its row id (None if it alone exceeds ``max_bytes``).

        When the queue is full the oldest messages are dropped and counted.
        """
        size = len(payload)
        with self._tx() as db:
            if size > self.max_bytes:
                self._add_counter(db, "dropped_total", 1)
                return None
            cur = db.execute(
                "INSERT INTO queue (topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?)",
                (topic, payload, int(qos), int(bool(retain)), time.time()),
            )
            row_id = int(cur.lastrowid or 0)
            self._count += 1
            self._bytes += size
            self._enforce_bounds(db, row_id)
            return row_id

    def append_counted(
        self, counter: str, build: Any, topic: str, qos: int = 1
    ) -> tuple[int, int | None]:
        """Increment ``counter`` and queue ``build(value) -> bytes`` in ONE transaction.

        Used for metrics: the seq number and its message are persisted together, so a
        crash can neither skip a seq nor send one twice with different contents.
        """
        with self._tx() as db:
            value = self._add_counter(db, counter, 1)
            payload: bytes = build(value)
            if len(payload) > self.max_bytes:
                self._add_counter(db, "dropped_total", 1)
                return value, None
            cur = db.execute(
                "INSERT INTO queue (topic, payload, qos, retain, created) VALUES (?, ?, ?, 0, ?)",
                (topic, payload, int(qos), time.time()),
            )
            row_id = int(cur.lastrowid or 0)
            self._count += 1
            self._bytes += len(payload)
            self._enforce_bounds(db, row_id)
            return value, row_id

    def _enforce_bounds(self, db: sqlite3.Connection, newest: int) -> None:
        if self._count <= self.max_messages and self._bytes <= self.max_bytes:
            return
        dropped = 0
        last = None
        # Oldest first, never the message just added.
        for row_id, size in db.execute(
            "SELECT id, LENGTH(payload) FROM queue WHERE id < ? ORDER BY id", (newest,)
        ):
            if self._count <= self.max_messages and self._bytes <= self.max_bytes:
                break
            self._count -= 1
            self._bytes -= int(size)
            dropped += 1
            last = row_id
        if last is not None:
            db.execute("DELETE FROM queue WHERE id <= ?", (last,))
            self._add_counter(db, "dropped_total", dropped)

    def pending(self, after_id: int = 0, limit: int = 100) -> list[SpooledMessage]:
        """The oldest queued messages with ``id > after_id``, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain FROM queue WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [SpooledMessage(int(i), t, bytes(p), int(q), bool(r)) for i, t, p, q, r in rows]

    def ack(self, row_id: int) -> bool:
        """Delete a message once the broker has acknowledged it. False if it was gone."""
        with self._tx() as db:
            row = db.execute("SELECT LENGTH(payload) FROM queue WHERE id = ?", (row_id,)).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM queue WHERE id = ?", (row_id,))
            self._count -= 1
            self._bytes -= int(row[0])
            return True

    def __len__(self) -> int:
        return self._count

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    @property
    def dropped_total(self) -> int:
        return self.counter("dropped_total")

    # -- persistent counters --------------------------------------------------

    def counter(self, name: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def increment(self, name: str, by: int = 1) -> int:
        """Add ``by`` to a persistent counter and return the new value."""
        with self._tx() as db:
            return self._add_counter(db, name, by)

    @staticmethod
    def _add_counter(db: sqlite3.Connection, name: str, by: int) -> int:
        # Plain UPSERT then SELECT (no RETURNING): works with SQLite >= 3.24 (older devices).
        db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )
        row = db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0])

    # -- the sample ring ------------------------------------------------------

    def put_sample(self, sample_id: str, record: dict[str, Any]) -> None:
        """Keep a captured sample (newest ``max_samples``) so feedback can be joined with it."""
        text = json.dumps(record, separators=(",", ":"), allow_nan=False)
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO samples (id, record) VALUES (?, ?)", (sample_id, text))
            db.execute(
                "DELETE FROM samples WHERE seq <= (SELECT MAX(seq) FROM samples) - ?",
                (self.max_samples,),
            )

    def get_sample(self, sample_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM samples WHERE id = ?", (sample_id,)).fetchone()
        if row is None:
            return None
        record: dict[str, Any] = json.loads(row[0])
        return record
