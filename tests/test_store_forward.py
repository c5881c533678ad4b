"""Store-and-forward: a 30 s broker outage, with a device restart in the middle, loses nothing.

A PRIVATE mosquitto (own port, killed by PID) is stopped for 30 s while HTTP predictions keep
coming; halfway through the outage the serve process is stopped (SIGTERM) and started again on
the same spool. When the broker is back, every metrics window must arrive: seq numbers from
the first to the last with no gap (duplicates allowed: at-least-once), a zero drop counter,
and the rows counted in the windows equal to the predictions that were answered.

The observer keeps a persistent session (clean_start False, session expiry, QoS 1) and the
private broker saves it across its restart, so the observer misses nothing however fast the
device reconnects.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _mqtt_support import (
    GOOD_ROW,
    Recorder,
    http_predict,
    make_bundle,
    private_mosquitto,
    start_serve,
    unique_id,
)

from edgeml.runtime.topics import DeviceTopics

OUTAGE_S = 30.0


class Load:
    """Predictions over HTTP from a background thread; counts the answered rows."""

    def __init__(self) -> None:
        self.url = ""
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            if not self.url:
                continue
            try:
                status, _ = http_predict(self.url, [GOOD_ROW, GOOD_ROW])
            except OSError:  # the server is restarting
                continue
            if status == 200:
                self.answered += 2

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_outage_with_restart_loses_no_window(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    topics = DeviceTopics.create("edgeml", unique_id("fleet"), unique_id("dev"))
    with private_mosquitto(tmp_path, persistence=True) as (port, stop_broker, start_broker):
        args = ("--broker", f"mqtt://127.0.0.1:{port}", "--device-id", topics.device,
                "--fleet", topics.fleet, "--metrics-interval", "0.5", "--reconnect-max-delay", "2",
                "--spool", str(tmp_path / "spool"))
        observer = Recorder(port=port).start(topics.metrics, topics.state, clean_start=False,
                                             session_expiry=600)
        metrics: list[dict[str, Any]] = []

        def take(predicate: Any, what: str, timeout: float = 20.0) -> Any:
            def match(m: Any) -> bool:
                if m.topic == topics.metrics:
                    metrics.append(m.json())
                return bool(predicate(m))
            return observer.wait_for(match, timeout=timeout, what=what)

        server = start_serve(bundle, *args)
        try:
            with Load() as load:
                load.url = server.url
                take(lambda m: m.topic == topics.metrics and m.json()["rows"] > 0, "busy metrics")
                stop_broker()
                outage_started = time.monotonic()
                time.sleep(OUTAGE_S / 2)
                load.url = ""
                assert server.terminate() == 0  # the restart happens in the middle of the outage
                server = start_serve(bundle, *args)
                load.url = server.url
                time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_started)))
                start_broker()
                back = time.time()
                # Messages come in order: a window that ended after the broker came back
                # means everything spooled before it has been delivered.
                take(lambda m: m.topic == topics.metrics and _end(m.json()) > back,
                     "a window from after the outage", timeout=30)
                load.url = ""
                time.sleep(0.3)  # let the last answered request be recorded
            assert server.terminate() == 0  # spools and sends the final window
            take(lambda m: m.topic == topics.state and m.payload == b"disconnected",
                 "$state disconnected")
            answered = load.answered
        finally:
            if server.proc.poll() is None:
                server.kill()
            observer.stop()
        for m in observer.drain():
            if m.topic == topics.metrics:
                metrics.append(m.json())

    by_seq = {m["seq"]: m for m in metrics}
    seqs = sorted(by_seq)
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), f"gaps in {seqs}"
    assert seqs[0] == 1
    assert len(seqs) >= OUTAGE_S / 0.5  # windows were produced all along the outage
    assert all(m["spool"]["dropped_total"] == 0 for m in metrics)
    assert max(m["spool"]["queued"] for m in metrics) >= 20  # the backlog really was spooled
    assert {m["session"] for m in metrics} == {1, 2}
    assert sum(m["rows"] for m in by_seq.values()) == answered > 0


def _end(metrics: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(metrics["window"]["end"].replace("Z", "+00:00")).timestamp()


pytestmark = pytest.mark.timeout(180)
