"""Fleets for the dashboard tests and bench: a store filled by `edgeml simulate` through a
real `edgeml monitor`, or straight through the monitor's ingest + writer (1,000 devices).

Everything a device sends is built by the runtime's own code (the simulator's virtual
devices, or tests/fleet_support.Fleet); alerts are opened by the evaluator, as the
monitor's ``--evaluate-every`` task does. Host-side test helper.
"""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from _mqtt_support import unique_id
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

from edgeml.fleet.db import Store, open_store
from edgeml.fleet.evaluate import EvaluationConfig, evaluate
from edgeml.fleet.ingest import Parsed, classify
from edgeml.fleet.migrate import upgrade
from edgeml.fleet.schema import Feedback, MetricsWindow, Quarantine, Sample
from edgeml.fleet.writer import Item, Writer
from edgeml.runtime import payloads

BROKER = "mqtt://127.0.0.1:1883"
XSS = "<script>window.__xss=1</script>"
XSS_VALUE = "<img src=x onerror=\"window.__xss=2\">"


def new_store(path: Path) -> tuple[str, Store]:
    url = f"sqlite:///{path}"
    upgrade(url)
    return url, open_store(url)


def _clear_retained(base: str) -> None:
    seen: list[str] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_message = lambda cl, ud, msg: seen.append(msg.topic) if msg.retain and msg.payload else None
    c.connect("127.0.0.1", 1883)
    c.loop_start()
    c.subscribe(f"{base}/#", qos=1)
    time.sleep(0.5)
    for topic in set(seen):
        c.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


def simulated_fleet(store: Store, bundle: Path, *, devices: int = 40, duration: float = 600.0,
                    interval: float = 30.0, drift: str = "feature=temp,shift=+12,from=120,fraction=0.1",
                    **options: Any) -> Any:
    """Run ``simulate`` (windows ending before now) into ``store`` through a real monitor."""
    from edgeml.fleet.monitor import Monitor, MonitorSettings
    from edgeml.fleet.simulate import DriftSpec, simulate

    base = unique_id("dash")
    settings = MonitorSettings(broker=BROKER, base_topic=base, group=unique_id("g"),
                               client_id=unique_id("mon"), session_expiry=30)
    monitor = Monitor(settings, store=store)
    monitor.start()
    try:
        assert monitor.wait_subscribed(15)
        report = simulate(bundle, broker=BROKER, base_topic=base, devices=devices,
                          interval=interval, rate=10.0, batch=10, duration=duration,
                          feedback_rate=0.05, seed=7, start=time.time() - duration - 5,
                          drift=[DriftSpec.parse(drift)] if drift else [], **options)
        deadline = time.monotonic() + 180  # a loaded CI machine
        while time.monotonic() < deadline:
            with store.session() as s:
                stored = s.execute(select(func.count()).select_from(MetricsWindow)).scalar_one()
            if stored == report.windows:
                break
            time.sleep(0.2)
        with store.session() as s:
            quarantined = s.execute(select(Quarantine.reason, Quarantine.detail).limit(3)).all()
        assert stored == report.windows, (stored, report.windows, quarantined)
    finally:
        monitor.stop()
        _clear_retained(base)
    with store.session() as s:
        evaluate(s, datetime.fromtimestamp(report.window_ends[-1], timezone.utc), EvaluationConfig())
    return report


def add_hostile_device(store: Store, like: str) -> None:
    """Copy device ``like`` (its $state, $info, last window and a sample) as a device whose id
    is a ``<script>`` tag and whose categorical value is an ``<img onerror>``: what a
    malicious device could send if ids were not validated on the topic (the monitor's
    classify checks the topic; here the rows are stored as classify parsed them, renamed)."""
    from edgeml.fleet.schema import DeviceSession

    w, smp, ses = MetricsWindow.__table__, Sample.__table__, DeviceSession.__table__
    with store.session() as s:
        fleet, window = s.execute(select(w.c.fleet, w.c.payload).where(w.c.device == like)
                                  .order_by(w.c.window_end.desc()).limit(1)).one()
        sample = s.execute(select(smp.c.id, smp.c.features, smp.c.prediction, smp.c.ts)
                           .where(smp.c.device == like).limit(1)).first()
        info = s.execute(select(ses.c.info).where(ses.c.device == like)
                         .order_by(ses.c.session.desc()).limit(1)).scalar_one()
    base = "edgeml"
    session = str(window["session"])
    topic = f"{base}/{fleet}/{like}"
    messages: list[tuple[str, Any]] = [
        (f"{topic}/$state", b"ready"), (f"{topic}/$info", info), (f"{topic}/metrics", window)]
    if sample is not None:
        feats = {k: (XSS_VALUE if isinstance(v, str) else v) for k, v in sample.features.items()}
        messages.append((f"{topic}/samples", {
            "schema": "edgeml.sample/1", "id": "xss-" + sample.id[:20],
            "ts": sample.ts.isoformat().replace("+00:00", "Z"), "device": like, "fleet": fleet,
            "model": window["model"], "features": feats, "prediction": sample.prediction}))
    items = []
    for tpc, body in messages:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        parsed = classify(base, tpc, raw, session)
        assert isinstance(parsed, Parsed), (tpc, parsed)
        row = {k: (XSS if k == "device" else v) for k, v in parsed.row.items()}
        items.append(Item(tpc, raw, dataclasses.replace(parsed, device=XSS, row=row)))
    Writer(store).write(items)


def feedback_count(store: Store) -> int:
    with store.session() as s:
        return int(s.execute(select(func.count()).select_from(Feedback)).scalar_one())


def direct_fleet(store: Store, bundle: Path, *, devices: int = 1000, windows: int = 12,
                 interval: float = 300.0, rows: int = 60, drifted: int = 50, lost: int = 20,
                 labels: int = 3, end: float | None = None) -> dict[str, Any]:
    """``devices`` devices, ``windows`` windows each ending by ``end`` (default now), written
    through the monitor's ingest + writer in batches: a fleet of any size in seconds.

    ``drifted`` devices spread over the fleet get temp shifted by +12 (from the first
    window), ``lost`` others end with ``$state`` lost; each device sends ``labels``
    feedback labels (one in each of its last ``labels`` windows). Then the evaluator runs
    once, as the monitor's ``--evaluate-every`` does, and opens the alerts.
    """
    import uuid

    import numpy as np
    from fleet_support import Fleet

    from edgeml.fleet.simspec import DriftSpec
    from edgeml.runtime.predictor import Predictor

    class Batched(Fleet):
        def __init__(self, store: Store, predictor: Any) -> None:
            super().__init__(store, predictor)
            self.items: list[Item] = []

        def _store(self, topic: str, body: bytes, session: str | None = None) -> None:
            parsed = classify("edgeml", topic, body, session)
            assert isinstance(parsed, Parsed), parsed
            self.items.append(Item(topic, body, parsed))
            if len(self.items) >= 2000:
                self.flush()

        def flush(self) -> None:
            if self.items:
                self.writer.write(self.items)
                self.items = []

    p = Predictor(bundle)
    fleet = Batched(store, p)
    end = time.time() if end is None else end
    names = [f"dev-{i:04d}" for i in range(devices)]
    drift_at = set(range(1, devices, max(devices // max(drifted, 1), 1))[:drifted])
    lost_at = set([i for i in range(2, devices, max(devices // max(lost, 1), 1))
                   if i not in drift_at][:lost])
    spec = DriftSpec.parse("feature=temp,shift=+12,from=0,fraction=1")
    rng = np.random.default_rng(3)
    classes = p.manifest.outputs.classes or ["0"]
    for k, name in enumerate(names):
        t0 = end - windows * interval
        fleet.announce(name, now=t0)
        for j in range(1, windows + 1):
            t = t0 + j * interval
            fleet.window(name, t, rows, drift=spec if k in drift_at else None, seconds=interval,
                         latency=0.002 + 0.001 * float(rng.random()))
            agent = fleet._agent(name, t)
            for _ in range(1 if j > windows - labels else 0):
                cols = fleet.sampler.sample(1, fleet.rng)
                row = {c: (v[0].item() if hasattr(v[0], "item") else v[0]) for c, v in cols.items()}
                pred = str(classes[int(rng.integers(len(classes)))])
                rec = payloads.sample(agent, {"id": uuid.uuid4().hex, "ts": payloads.iso_utc(t - 1),
                                              "features": row, "prediction": {"label": pred}})
                fleet._store(agent.topics.samples, payloads.dumps(rec))
                label = pred if rng.random() < 0.9 else str(classes[0])
                fleet._store(agent.topics.feedback, payloads.dumps(payloads.feedback(agent, rec, label, ts=t)))
        if k in lost_at:
            fleet.state(name, "lost")
    fleet.flush()
    with store.session() as s:
        evaluate(s, datetime.fromtimestamp(end, timezone.utc), EvaluationConfig())
    return {"devices": names, "drifted": [names[i] for i in sorted(drift_at)],
            "lost": [names[i] for i in sorted(lost_at)]}


def add_rollouts(store: Store, *, fleet: str = "plant", now: datetime | None = None) -> dict[str, Any]:
    """Four deployments written straight into the deploy tables, as the controller would:

    - ``r-running`` (created 1 h ago): stages 10/50/100 %, under way at stage 2 of 3; ten
      devices ``dev-0000``..``dev-0009``: committed 2, switched 1, downloading 1 (3/8 chunks),
      sent 1, pending 5; 230 reports (the page shows the newest 200).
    - ``r-new`` cancelled 10 min ago (the newest); ``r-halted`` (2 h ago): its canary, the
      hostile device :data:`XSS`, failed the gate and rolled back; the reasons are
      :data:`XSS`; ``r-done`` completed 3 h ago on 4 devices.
    """
    from datetime import timedelta

    from sqlalchemy import insert

    from edgeml.fleet.schema import BundleBlob, DeployEvent, Deployment, DeploymentDevice

    now = now or datetime.now(timezone.utc)
    sha = "ab" * 32
    gates = {"max_error_rate": 0.05, "max_p95_ratio": 3.0, "max_psi": 0.2}

    def dep(id_: str, state: str, ago_s: float, stages: list[float], stage: int,
            reason: str | None = None) -> dict[str, Any]:
        t = now - timedelta(seconds=ago_s)
        return {"id": id_, "fleet": fleet, "bundle_sha256": sha, "model_name": "toy-fleet",
                "model_version": 2, "state": state, "stages": stages, "stage": stage,
                "stage_started_at": t, "soak_until": t + timedelta(seconds=60), "soak_s": 60.0,
                "chunk_size": 65536, "allow_downgrade": False, "gates": gates, "reason": reason,
                "revision": 3, "created_at": t, "updated_at": t + timedelta(seconds=30)}

    def dev(deployment: str, device: str, stage: int, state: str, *, have: int | None = None,
            count: int | None = None, reason: str | None = None,
            serving: int | None = None) -> dict[str, Any]:
        return {"deployment_id": deployment, "fleet": fleet, "device": device, "stage": stage,
                "state": state, "have": have, "count": count, "reason": reason,
                "from_version": 1, "serving_version": serving, "sends": 1,
                "sent_at": now - timedelta(seconds=600), "committed_at": None,
                "updated_at": now - timedelta(seconds=60)}

    names = [f"dev-{i:04d}" for i in range(10)]
    running = [dev("r-running", names[0], 0, "committed", serving=2),
               dev("r-running", names[1], 1, "committed", serving=2),
               dev("r-running", names[2], 1, "switched", serving=2),
               dev("r-running", names[3], 1, "downloading", have=3, count=8, serving=1),
               dev("r-running", names[4], 1, "sent", serving=1),
               *(dev("r-running", n, 2, "pending", serving=1) for n in names[5:])]
    halted = [dev("r-halted", XSS, 0, "rolled_back", reason=XSS, serving=1),
              *(dev("r-halted", n, 1, "pending", serving=1) for n in names[1:4])]
    done = [dev("r-done", n, i // 2, "committed", serving=2) for i, n in enumerate(names[:4])]
    events: list[dict[str, Any]] = []

    def event(deployment: str, device: str, seq: int, ev: str, state: str, ago_s: float, *,
              reason: str | None = None, have: int | None = None, count: int | None = None,
              serving: int = 1) -> None:
        t = now - timedelta(seconds=ago_s)
        payload = {"schema": "edgeml.deploy-report/1", "id": deployment, "device": device,
                   "fleet": fleet, "seq": seq, "event": ev, "state": state, "reason": reason,
                   "serving": {"name": "toy-fleet", "version": serving, "slot": "a"},
                   "progress": {"have": have, "count": count} if count else None}
        events.append({"deployment_id": deployment, "fleet": fleet, "device": device, "seq": seq,
                       "event": ev, "state": state, "reason": reason, "at": t,
                       "received_at": t, "payload": payload})

    for i in range(230):  # dev-0003 resumes again and again: the timeline keeps its newest 200
        event("r-running", names[3], i + 1, "resumed", "downloading", 3000 - 10 * i, have=i % 8,
              count=8)
    event("r-running", names[0], 1, "committed", "idle", 2500, serving=2)
    event("r-running", names[2], 1, "switched", "trial", 30, serving=2)
    event("r-halted", XSS, 1, "rolled_back", "idle", 7000, reason=XSS)
    event("r-done", names[0], 1, "committed", "idle", 10000, serving=2)
    with store.session() as s:
        s.execute(insert(BundleBlob.__table__).values(
            sha256=sha, name="toy-fleet", version=2, target="x86_64", arch="x86_64", size=12345,
            manifest={}, data=b"bundle", created_at=now - timedelta(hours=4)))
        s.execute(insert(Deployment.__table__), [
            dep("r-running", "running", 3600, [0.1, 0.5, 1.0], 1),
            dep("r-new", "cancelled", 600, [1.0], 0, reason="cancelled by the operator"),
            dep("r-halted", "halted", 7200, [0.1, 0.5, 1.0], 0, reason=XSS),
            dep("r-done", "completed", 10800, [0.5, 1.0], 1)])
        s.execute(insert(DeploymentDevice.__table__), [*running, *halted, *done])
        s.execute(insert(DeployEvent.__table__), events)
    return {"order": ["r-running", "r-new", "r-halted", "r-done"], "devices": names,
            "running_counts": {"committed": 2, "switched": 1, "downloading": 1, "sent": 1,
                               "pending": 5}}
