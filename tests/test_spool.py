"""The store-and-forward spool: order, bounds, drop counter, persistence, one owner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeml.errors import RuntimeServiceError
from edgeml.runtime.spool import Spool


def _texts(spool: Spool) -> list[str]:
    return [m.payload.decode() for m in spool.pending(limit=1000)]


def test_fifo_order_and_ack(tmp_path: Path) -> None:
    with Spool(tmp_path / "s") as spool:
        ids = [spool.append("t/a", f"m{i}".encode()) for i in range(5)]
        assert ids == sorted(ids)
        assert _texts(spool) == ["m0", "m1", "m2", "m3", "m4"]
        assert [m.payload for m in spool.pending(after_id=ids[2])] == [b"m3", b"m4"]
        assert [m.payload for m in spool.pending(limit=2)] == [b"m0", b"m1"]
        # Acks may arrive in any order; only acknowledged rows go.
        assert spool.ack(ids[1]) is True
        assert spool.ack(ids[1]) is False
        assert _texts(spool) == ["m0", "m2", "m3", "m4"]
        assert len(spool) == 4
        msg = spool.pending(limit=1)[0]
        assert (msg.topic, msg.qos, msg.retain) == ("t/a", 1, False)


def test_bound_drops_oldest_and_counts(tmp_path: Path) -> None:
    with Spool(tmp_path / "s", max_messages=3) as spool:
        for i in range(7):
            spool.append("t", f"m{i}".encode())
        assert _texts(spool) == ["m4", "m5", "m6"]
        assert spool.dropped_total == 4
        assert len(spool) == 3


def test_byte_bound(tmp_path: Path) -> None:
    with Spool(tmp_path / "s", max_bytes=100) as spool:
        for i in range(5):
            spool.append("t", bytes([65 + i]) * 40)
        assert [m.payload[:1] for m in spool.pending()] == [b"D", b"E"]
        assert spool.queued_bytes == 80
        assert spool.dropped_total == 3
        # A message larger than the whole spool is refused and counted, the queue kept.
        assert spool.append("t", b"x" * 101) is None
        assert spool.dropped_total == 4
        assert len(spool) == 2


def test_survives_reopen(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    with Spool(folder, max_messages=2) as spool:
        for i in range(3):
            spool.append("t", f"m{i}".encode())
        first = spool.pending()[0]
        spool.ack(first.id)
        assert spool.increment("session") == 1
        seq, _ = spool.append_counted("seq", lambda n: json.dumps({"seq": n}).encode(), "t/metrics")
        assert seq == 1
    with Spool(folder, max_messages=2) as spool:
        assert _texts(spool) == ["m2", '{"seq": 1}']
        assert spool.dropped_total == 1
        assert spool.increment("session") == 2
        seq, _ = spool.append_counted("seq", lambda n: json.dumps({"seq": n}).encode(), "t/metrics")
        assert seq == 2
        assert spool.dropped_total == 2
        # Row ids keep growing after a reopen (AUTOINCREMENT): order holds across restarts.
        assert [m.payload for m in spool.pending()][-1] == b'{"seq": 2}'


def test_one_process_owns_a_folder(tmp_path: Path) -> None:
    with Spool(tmp_path / "s"), pytest.raises(RuntimeServiceError, match="in use"):
        Spool(tmp_path / "s")
    # Released on close.
    Spool(tmp_path / "s").close()


def test_sample_ring(tmp_path: Path) -> None:
    with Spool(tmp_path / "s", max_samples=3) as spool:
        for i in range(5):
            spool.put_sample(f"id-{i}", {"features": {"x": i}})
        assert spool.get_sample("id-0") is None
        assert spool.get_sample("id-1") is None
        assert spool.get_sample("id-4") == {"features": {"x": 4}}
        assert spool.get_sample("id-2") == {"features": {"x": 2}}
