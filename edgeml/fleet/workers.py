"""``edgeml monitor --workers N``: N monitor processes in one shared-subscription group.

One monitor process spends its CPU in Python (paho's packet decoding, validation, the
database driver) under one GIL, so it ingests a few thousand messages per second per
core. The MQTT v5 shared subscription already splits a fleet between monitors of one
group; ``--workers N`` starts N of them on this machine, as N separate monitors would
be started by hand, and supervises them:

- worker ``i`` is a full monitor with client id ``<client-id>-w<i>`` (its own persistent
  session: keep N the same from one start to the next, or the session of a worker no
  longer started keeps its share of the messages until the session expires);
- ``--http PORT`` gives worker ``i`` the port ``PORT + i`` (0: any free port each); only
  worker 0 serves the dashboard and runs the periodic evaluation and roll-up, so alerts
  are raised once;
- a worker that dies is restarted after a second (what it had not acknowledged is
  redelivered by the broker); SIGINT/SIGTERM stop every worker the normal way.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import signal
import threading
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeml.fleet.monitor import MonitorSettings

__all__ = ["run_workers", "worker_settings"]

log = logging.getLogger(__name__)


def worker_settings(settings: MonitorSettings, index: int) -> MonitorSettings:
    """The settings of worker ``index`` of ``settings.workers``."""
    port = settings.http_port
    lead = index == 0
    return dataclasses.replace(
        settings, workers=1, client_id=f"{settings.resolved_client_id()[:120]}-w{index}",
        http_port=port + index if port else port,
        dashboard=settings.dashboard and lead,
        token=settings.token if lead else None,
        token_file=settings.token_file if lead else None,
        evaluate_every=settings.evaluate_every if lead else None,
        retain_days=settings.retain_days if lead else None)


def _worker(settings: MonitorSettings, level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from edgeml.fleet.monitor import Monitor

    Monitor(settings).run()


def run_workers(settings: MonitorSettings) -> None:
    """Run ``settings.workers`` monitors until SIGINT or SIGTERM, restarting any that dies."""
    settings.validate()
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    done = threading.Event()
    children = [worker_settings(settings, i) for i in range(settings.workers)]

    def start(child: MonitorSettings) -> BaseProcess:
        proc = context.Process(target=_worker, args=(child, level), name=child.client_id,
                               daemon=False)
        proc.start()
        return proc

    def _signal(signum: int, _frame: Any) -> None:
        done.set()

    previous = {sig: signal.signal(sig, _signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs = [start(child) for child in children]
    try:
        while not done.wait(1.0):
            for i, proc in enumerate(procs):
                if not proc.is_alive() and not done.is_set():
                    log.warning("monitor worker %s exited (code %s); restarting it",
                                proc.name, proc.exitcode)
                    procs[i] = start(children[i])
    finally:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                proc.terminate()  # SIGTERM: the worker stores and acknowledges, then stops
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
