"""``edgeml monitor``: device telemetry from MQTT v5 into the fleet store, nothing lost.

Threads: paho's network thread only queues what arrives; one writer thread drains the
queue in batches (``batch_size`` messages or ``batch_seconds``), classifies each message
(:mod:`edgeml.fleet.ingest`), writes the batch in one transaction
(:mod:`edgeml.fleet.writer`) and only then acknowledges its QoS 1 messages (paho
``manual_ack``). A monitor killed with ``kill -9`` has acknowledged only what is
committed; the broker redelivers the rest to its persistent session (``clean_start=False``,
session expiry) and the store's keys drop the duplicates. While the database is
unreachable the writer keeps its batch, stops acknowledging (so the broker stops sending
once ``receive_maximum`` messages are unacknowledged), retries with backoff and catches up.

Subscriptions: ``metrics``, ``samples`` and ``feedback`` through the shared subscription
``$share/<group>/...`` (monitors of one group split the fleet), ``$state`` and ``$info``
through an ordinary subscription in every monitor (retained messages are not sent to shared
subscriptions), stored idempotently. Deploy reports and chunk requests (shared too) go to
:class:`edgeml.fleet.monitor_deploys.DeployService`, which also advances rollouts.
Acknowledgements are only sent on the connection
that delivered the message: a message delivered before a reconnect is stored but left to
the broker's redelivery.
"""

from __future__ import annotations

import logging
import queue
import signal
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgeml.errors import RuntimeServiceError, UsageError
from edgeml.fleet.db import Store, open_store, redact
from edgeml.fleet.exposition import MetricsServer, Registry
from edgeml.fleet.ingest import DEFAULT_MAX_PAYLOAD, Rejected, classify
from edgeml.fleet.monitor_deploys import DEPLOY_LEAVES, DeployService
from edgeml.fleet.monitor_metrics import MonitorMetrics
from edgeml.fleet.mqtt_reads import buffer_reads
from edgeml.fleet.writer import Item, Writer, is_transient
from edgeml.runtime import topics
from edgeml.runtime.mqtt_client import make_client
from edgeml.runtime.settings import BrokerSettings

if TYPE_CHECKING:
    from edgeml.fleet.dashboard.mount import MonitorHTTP

__all__ = ["Monitor", "MonitorSettings"]

log = logging.getLogger(__name__)

_PUBACK = struct.Struct("!BBH")  # fixed header, remaining length 2, packet id (v5: success)
_PUBACK_HEAD = PacketTypes.PUBACK << 4
SHARED_LEAVES = (topics.METRICS, topics.SAMPLES, topics.FEEDBACK)
RETAINED_LEAVES = (topics.STATE, topics.INFO)


@dataclass(frozen=True)
class MonitorSettings:
    """Everything ``edgeml monitor`` takes. ``broker`` and ``db`` are URLs."""

    broker: str
    db: str | None = None
    group: str = "edgeml"
    base_topic: str = topics.DEFAULT_BASE
    client_id: str | None = None
    http_port: int | None = None
    http_host: str = "127.0.0.1"
    dashboard: bool = False  # serve the dashboard (with /metrics) on --http
    token: str | None = None  # the dashboard's token (needed for a non-loopback --http-host)
    token_file: str | None = None
    batch_size: int = 1000
    batch_seconds: float = 0.1
    session_expiry: int = 86_400
    receive_maximum: int = 4096
    max_payload: int = DEFAULT_MAX_PAYLOAD
    retain_days: float | None = None
    evaluate_every: float | None = None
    thresholds: str | None = None
    db_retry_max_s: float = 5.0
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_insecure: bool = False
    keepalive: int = 30
    workers: int = 1  # monitor processes in the group on this machine (edgeml.fleet.workers)

    def validate(self) -> None:
        topics.validate_base(self.base_topic)
        topics.shared_filter(self.group, "x")  # validates the group name
        if self.batch_size < 1 or self.batch_seconds <= 0:
            raise UsageError("batch size must be >= 1 and batch seconds > 0")
        if not 1 <= self.receive_maximum <= 65535:
            raise UsageError("receive maximum must be between 1 and 65535")
        if self.retain_days is not None and self.retain_days <= 0:
            raise UsageError(f"--retain-days {self.retain_days} must be > 0")
        if self.evaluate_every is not None and self.evaluate_every <= 0:
            raise UsageError(f"--evaluate-every {self.evaluate_every} must be > 0 seconds")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise UsageError(f"--http {self.http_port} is not a port")
        if not 1 <= self.workers <= 64:
            raise UsageError(f"--workers {self.workers} must be between 1 and 64")
        if self.dashboard and self.http_port is None:
            raise UsageError("--dashboard serves on the --http port: give --http PORT")
        if (self.token is not None or self.token_file is not None) and not self.dashboard:
            raise UsageError("--token and --token-file are the dashboard's: add --dashboard")

    def resolved_client_id(self) -> str:
        host = socket.gethostname().split(".")[0] or "host"
        return (self.client_id or f"edgeml-monitor-{self.group}-{host}")[:128]


@dataclass
class _Msg:
    generation: int
    mid: int
    qos: int
    topic: str
    payload: bytes
    session: str | None


Task = Callable[["Monitor"], None]


class Monitor:
    """One monitor process: ``Monitor(settings).run()``, or ``start()`` ... ``stop()``."""

    def __init__(self, settings: MonitorSettings, store: Store | None = None) -> None:
        settings.validate()
        self.settings = settings
        self.broker = BrokerSettings.from_url(
            settings.broker, username=settings.username, password=settings.password,
            tls_ca=settings.tls_ca, tls_insecure=settings.tls_insecure or None,
            keepalive=settings.keepalive, mqtt_version="5")
        self.client_id = settings.resolved_client_id()
        self.store = store or open_store(settings.db)
        self.writer = Writer(self.store)
        self.registry = Registry()
        self.metrics = MonitorMetrics(self.registry)
        self._queue: queue.SimpleQueue[_Msg] = queue.SimpleQueue()
        self._generation = 0
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._stopping = threading.Event()
        self._client: mqtt.Client | None = None
        self._threads: list[threading.Thread] = []
        self._tasks: list[tuple[float, Task, str]] = []
        self.http: MetricsServer | MonitorHTTP | None = None
        self.metrics.queue_depth.collect_with(lambda: {(): float(self._queue.qsize())})
        from edgeml.fleet.monitor_tasks import Evaluation, lost_windows_task, retention_task

        self.deploys = DeployService(self)  # chunk answers, deploy reports, rollouts

        if settings.retain_days is not None:
            self.add_task(3600.0, retention_task, "retention")
        self.add_task(10.0, lost_windows_task, "lost-windows")
        if settings.evaluate_every is not None:
            evaluation = Evaluation(self)
            self.add_task(settings.evaluate_every, evaluation, "evaluate")
            from edgeml.fleet.monitor_tasks import add_retrain_task

            add_retrain_task(self, evaluation)  # the thresholds file's retrain: section

    # -- extension points ------------------------------------------------------------

    def add_task(self, interval_s: float, task: Task, name: str) -> None:
        """Run ``task(monitor)`` every ``interval_s`` on the maintenance thread (alerts, retention)."""
        self._tasks.append((interval_s, task, name))

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish on the monitor's connection (alerts). Dropped while disconnected."""
        if self._client is not None and self._connected.is_set():
            self._client.publish(topic, payload, qos=qos, retain=retain)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._client is not None:
            raise RuntimeServiceError("the monitor is already running")
        s = self.settings
        if s.http_port is not None and s.dashboard:
            from edgeml.fleet.dashboard.mount import MonitorHTTP

            self.http = MonitorHTTP(self.registry, s.db or self.store.engine, s.http_host,
                                    s.http_port, token=s.token, token_file=s.token_file,
                                    health=lambda: self.metrics.db_up.value() == 1.0)
            self.http.start()
        elif s.http_port is not None:
            self.http = MetricsServer(self.registry, s.http_host, s.http_port,
                                      health=lambda: self.metrics.db_up.value() == 1.0)
            self.http.start()
        client = make_client(self.broker, self.client_id, mqtt.MQTTv5)
        client.manual_ack_set(True)
        buffer_reads(client)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.reconnect_delay_set(1, 10)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = s.session_expiry
        props.ReceiveMaximum = s.receive_maximum
        client.connect_async(self.broker.host, self.broker.port, self.broker.keepalive,
                             clean_start=False, properties=props)
        self._client = client
        client.loop_start()
        for target, name in ((self._write_loop, "edgeml-monitor-writer"),
                             (self._maintenance_loop, "edgeml-monitor-tasks")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.deploys.start()

    def wait_subscribed(self, timeout: float = 15.0) -> bool:
        return self._subscribed.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Store and acknowledge what has arrived (if the database is up), then disconnect."""
        if self._client is None:
            return
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
        self.deploys.stop(timeout)
        client, self._client = self._client, None
        client.disconnect()
        client.loop_stop()
        if self.http is not None:
            self.http.stop()
            self.http = None
        self.store.dispose()

    def run(self) -> None:
        """Start, print where it listens, and run until SIGINT or SIGTERM."""
        done = threading.Event()

        def _signal(signum: int, _frame: Any) -> None:
            done.set()

        previous = {sig: signal.signal(sig, _signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            print(f"monitor: {self.client_id} group {self.settings.group} on "
                  f"{self.broker.display}, store {redact(self.store.url)}", flush=True)
            if self.http is not None:
                print(f"metrics: {self.http.url}/metrics", flush=True)
                if self.settings.dashboard:
                    print(f"dashboard: {self.http.url}/", flush=True)
            while not done.wait(0.5):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # -- paho callbacks (network thread) --------------------------------------------------

    def _filters(self) -> list[tuple[str, SubscribeOptions]]:
        base, group = self.settings.base_topic, self.settings.group
        qos1 = SubscribeOptions(qos=1)
        shared = [(topics.shared_filter(group, topics.all_devices_filter(base, leaf)), qos1)
                  for leaf in (*SHARED_LEAVES, *DEPLOY_LEAVES)]
        return shared + [(topics.all_devices_filter(base, leaf), qos1) for leaf in RETAINED_LEAVES]

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            log.warning("broker %s refused the monitor: %s", self.broker.display, reason)
            return
        self._generation += 1
        self._connected.set()
        self.metrics.mqtt_connected.set(None, 1)
        log.info("connected to %s (session present: %s)", self.broker.display,
                 getattr(flags, "session_present", None))
        client.subscribe(self._filters())

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        failed = [str(r) for r in reasons if getattr(r, "is_failure", False)]
        if failed:
            log.error("broker refused subscriptions: %s", ", ".join(failed))
        self._subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self._connected.clear()
        self.metrics.mqtt_connected.set(None, 0)
        if not self._stopping.is_set():
            log.warning("disconnected from %s (%s); reconnecting", self.broker.display, reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        session = None
        props = getattr(message, "properties", None)
        for key, value in getattr(props, "UserProperty", None) or ():
            if key == "session":
                session = value
        msg = _Msg(self._generation, message.mid, message.qos, message.topic,
                   bytes(message.payload), session)
        if not self.deploys.offer(msg):
            self._queue.put(msg)

    # -- the writer thread ----------------------------------------------------------------

    def _collect(self) -> list[_Msg]:
        s = self.settings
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + s.batch_seconds
        while len(batch) < s.batch_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=min(left, 0.01)))
            except queue.Empty:
                continue
        return batch

    def _classify(self, msg: _Msg, now: datetime | None = None) -> Item:
        try:
            result = classify(self.settings.base_topic, msg.topic, msg.payload, msg.session,
                              max_payload=self.settings.max_payload, now=now)
        except Exception as exc:  # a bug must not stop ingest: keep the message
            log.exception("cannot classify a message on %s", msg.topic)
            result = Rejected("wrong-type", f"internal error: {type(exc).__name__}: {exc}")
        return Item(msg.topic, msg.payload, result)

    def _write_loop(self) -> None:
        delay = 0.25
        while True:
            batch = self._collect()
            if not batch:
                if self._stopping.is_set():
                    return
                continue
            now = datetime.now(timezone.utc)  # received_at of the whole batch
            items = [self._classify(m, now) for m in batch]
            leaves = Counter(item.topic.rpartition("/")[2] for item in items)
            for kind, n in leaves.items():
                self.metrics.received.inc({"leaf": kind if kind in topics.LEAVES else "other"},
                                          amount=n)
            while True:
                try:
                    result = self.writer.write(items)
                    break
                except Exception as exc:
                    self.metrics.db_errors.inc()
                    self.metrics.db_up.set(None, 0)
                    if not is_transient(exc):
                        log.exception("unexpected error writing a batch")
                    else:
                        log.warning("database unavailable (%s); retrying in %.1f s",
                                    str(getattr(exc, "orig", exc)).splitlines()[0][:200], delay)
                    if self._stopping.is_set():
                        log.warning("stopping with %d messages not stored (not acknowledged: "
                                    "the broker keeps them)", len(batch))
                        return
                    time.sleep(delay)
                    delay = min(delay * 2, self.settings.db_retry_max_s)
            delay = 0.25
            self.metrics.db_up.set(None, 1)
            self.metrics.record(result)
            self._ack(batch)

    def _ack(self, batch: list[_Msg]) -> None:
        client = self._client
        if client is None:
            return
        generation = self._generation
        mids = [m.mid for m in batch if m.qos == 1 and m.generation == generation]
        others = [m for m in batch if m.qos > 1 and m.generation == generation]
        send_all = getattr(client, "_packet_queue", None)
        if mids and send_all is not None:
            # One write for the whole batch: the PUBACKs paho's ack() would queue one by
            # one (each a queued packet, a wake-up of the network thread and a send).
            packet = b"".join(_PUBACK.pack(_PUBACK_HEAD, 2, mid) for mid in mids)
            send_all(PacketTypes.PUBACK << 4, packet, 0, 0)
        else:
            for mid in mids:
                client.ack(mid, 1)
        for msg in others:
            client.ack(msg.mid, msg.qos)
        self.metrics.acked.inc(amount=len(mids) + len(others))

    # -- the maintenance thread -----------------------------------------------------------

    def _maintenance_loop(self) -> None:
        next_run = {name: time.monotonic() + min(interval, 2.0)
                    for interval, _t, name in self._tasks}
        while not self._stopping.wait(0.5):
            for interval, task, name in list(self._tasks):
                now = time.monotonic()
                if now < next_run.get(name, 0.0):
                    continue
                next_run[name] = now + interval
                try:
                    task(self)
                except Exception as exc:
                    if is_transient(exc):
                        log.warning("task %s: database unavailable", name)
                    else:
                        log.exception("task %s failed", name)


def run_monitor(settings: MonitorSettings) -> None:
    """The ``edgeml monitor`` command: build and run a monitor (a typed API for the CLI)."""
    if settings.workers > 1:
        from edgeml.fleet.workers import run_workers

        run_workers(settings)
        return
    Monitor(settings).run()
