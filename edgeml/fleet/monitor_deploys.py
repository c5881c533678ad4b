"""The monitor's deploy side: chunk answers, deploy reports and the rollout controller.

:class:`DeployService` is built by :class:`edgeml.fleet.monitor.Monitor`, which routes to
:meth:`DeployService.offer` every message on ``<base>/+/+/deploy`` and
``.../deploy/chunks/get`` (shared subscriptions of the monitor's group: one monitor of the
group gets each). Two threads, off the telemetry path:

- ``edgeml-monitor-chunks`` answers each chunk request from the ``bundles`` table
  (:class:`edgeml.fleet.chunks.ChunkAnswers`) and acknowledges it (a lost answer is
  re-asked by the agent);
- ``edgeml-monitor-rollout`` stores reports (:func:`edgeml.fleet.rollout.ingest_reports`),
  acknowledges them once committed, and runs a controller pass
  (:class:`edgeml.fleet.rollout.Controller`) after reports and every ``interval_s``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from edgeml.agent.protocol import ChunkRequest, Command, ProtocolError
from edgeml.fleet.chunks import ChunkAnswers
from edgeml.fleet.rollout import Controller, ingest_reports
from edgeml.fleet.writer import is_transient
from edgeml.runtime import topics

if TYPE_CHECKING:
    from edgeml.fleet.monitor import Monitor

__all__ = ["DEPLOY_LEAVES", "DeployService"]

log = logging.getLogger(__name__)

DEPLOY_LEAVES = (topics.DEPLOY, topics.DEPLOY_CHUNKS_GET)
_SUFFIXES = tuple("/" + leaf for leaf in DEPLOY_LEAVES)


class DeployService:
    def __init__(self, monitor: Monitor, interval_s: float = 1.0) -> None:
        self.monitor = monitor
        self.base = monitor.settings.base_topic
        self.interval_s = interval_s
        self.chunks = ChunkAnswers(monitor.store)
        self.controller = Controller(monitor.store, self._send)
        self._chunk_q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._report_q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def offer(self, msg: Any) -> bool:
        """Take ``msg`` (the monitor's queued message) if it is a deploy one (network thread)."""
        if not msg.topic.endswith(_SUFFIXES):
            return False
        if msg.topic.endswith("/" + topics.DEPLOY_CHUNKS_GET):
            self._chunk_q.put(msg)
        else:
            self._report_q.put(msg)
        return True

    def start(self) -> None:
        for target, name in ((self._chunk_loop, "edgeml-monitor-chunks"),
                             (self._rollout_loop, "edgeml-monitor-rollout")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def _send(self, fleet: str, device: str, cmd: Command) -> None:
        t = topics.DeviceTopics.create(self.base, fleet, device)
        self.monitor.publish(t.deploy_set, cmd.encode(), qos=1)

    # -- chunks -----------------------------------------------------------------------------

    def _chunk_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                msg = self._chunk_q.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._answer(msg)
            except Exception as exc:
                if is_transient(exc):
                    log.warning("chunk request not answered: database unavailable")
                else:
                    log.exception("chunk request not answered")
            self.monitor._ack([msg])

    def _answer(self, msg: Any) -> None:
        parsed = topics.parse_topic(self.base, msg.topic)
        if parsed is None:
            return
        fleet, device, _leaf = parsed
        try:
            req = ChunkRequest.decode(msg.payload)
        except ProtocolError as exc:
            log.warning("bad chunk request from %s/%s: %s", fleet, device, exc)
            return
        reply = topics.DeviceTopics.create(self.base, fleet, device).deploy_chunks
        for payload in self.chunks.answer(req):
            self.monitor.publish(reply, payload, qos=1)

    # -- reports and the controller -----------------------------------------------------------

    def _take(self) -> list[Any]:
        try:
            batch = [self._report_q.get(timeout=0.1)]
        except queue.Empty:
            return []
        while len(batch) < 500:
            try:
                batch.append(self._report_q.get_nowait())
            except queue.Empty:
                break
        return batch

    def _rollout_loop(self) -> None:
        pending: list[Any] = []
        next_pass = time.monotonic() + self.interval_s
        while not self._stopping.is_set():
            pending += self._take()
            stored = False
            if pending:
                items = []
                for msg in pending:
                    parsed = topics.parse_topic(self.base, msg.topic)
                    if parsed is not None:
                        items.append((parsed[0], parsed[1], msg.payload))
                try:
                    ingest_reports(self.monitor.store, items)
                    self.monitor._ack(pending)
                    pending, stored = [], True
                except Exception as exc:
                    if is_transient(exc):  # kept, not acknowledged: retried
                        log.warning("deploy reports not stored: database unavailable")
                        time.sleep(1.0)
                    else:  # a bug must not stop the loop: logged and dropped
                        log.exception("%d deploy reports dropped", len(pending))
                        self.monitor._ack(pending)
                        pending = []
            if (stored or time.monotonic() >= next_pass) and self.monitor.connected:
                next_pass = time.monotonic() + self.interval_s
                try:
                    self.controller.advance()
                except Exception as exc:
                    self._log(exc, "rollout pass failed")

    @staticmethod
    def _log(exc: Exception, what: str) -> None:
        if is_transient(exc):
            log.warning("%s: database unavailable", what)
        else:
            log.exception(what)
