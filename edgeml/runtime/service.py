"""``edgeml serve``: HTTP prediction server plus (optionally) MQTT telemetry, in one process.

:func:`serve` takes the bundle and one :class:`~edgeml.runtime.settings.ServeSettings`, and
composes :class:`~edgeml.runtime.predictor.Predictor`,
:class:`~edgeml.runtime.stats.RuntimeStats`, :class:`~edgeml.runtime.http.HttpServer` and,
when a broker is given, :class:`~edgeml.runtime.telemetry.DeviceAgent`. It runs until
SIGTERM or SIGINT, then stops HTTP first (no new predictions), then the agent (which spools
the last metrics window and publishes ``$state`` disconnected). Device-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeml.runtime.holder import ModelHolder
from edgeml.runtime.settings import ServeSettings

__all__ = ["ServeSettings", "ServiceInfo", "serve"]


@dataclass(frozen=True)
class ServiceInfo:
    """What a running service tells its caller once it listens (the CLI prints it)."""

    model: str  # name@version
    task: str
    bundle: str
    http_url: str
    workers: int = 1
    intra_op_threads: int = 1
    broker: str | None = None
    device: str | None = None
    fleet: str | None = None
    session: int | None = None
    spool_dir: str | None = None
    topics: dict[str, str] = field(default_factory=dict)


def serve(
    bundle: str | Path | ModelHolder,
    settings: ServeSettings | None = None,
    *,
    on_ready: Callable[[ServiceInfo], None] | None = None,
) -> None:
    """Serve ``bundle`` over HTTP (and MQTT telemetry with ``settings.broker``) until SIGTERM.

    ``bundle`` may be a :class:`~edgeml.runtime.holder.ModelHolder` (the deploy agent's):
    its model is served, and ``holder.swap()`` replaces it while serving.
    """
    from edgeml.runtime.predictor import Predictor
    from edgeml.runtime.stats import RuntimeStats

    settings = settings or ServeSettings()
    holder = bundle if isinstance(bundle, ModelHolder) else None
    if holder is not None:
        predictor, stats = holder.predictor, holder.stats
    else:
        predictor = Predictor(bundle, public_key=settings.public_key,  # type: ignore[arg-type]
                              intra_op_threads=settings.intra_op_threads)
        stats = RuntimeStats.for_predictor(predictor)
    agent = None
    if settings.broker is not None:
        from edgeml.runtime.telemetry import DeviceAgent

        agent = DeviceAgent(predictor, stats, settings.broker, settings.telemetry,
                            max_batch=settings.max_batch)
        agent.open()  # fails early (spool locked or unwritable) before anything listens
    try:
        asyncio.run(_run(predictor, stats, agent, settings, on_ready, holder))
    finally:
        if agent is not None:
            agent.stop()


async def _run(
    predictor: Any,
    stats: Any,
    agent: Any,
    settings: ServeSettings,
    on_ready: Callable[[ServiceInfo], None] | None,
    holder: ModelHolder | None = None,
) -> None:
    from edgeml.runtime.http import HttpServer

    http = HttpServer(predictor, stats, settings.http, max_batch=settings.max_batch)
    await http.start()
    if holder is not None:  # swaps reach HTTP first, then telemetry
        holder.subscribe(http.swap)
        if agent is not None:
            holder.subscribe(agent.swap)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        url = http.url
        m = predictor.manifest
        info = ServiceInfo(model=m.ref, task=m.task, bundle=predictor.bundle.path.name,
                           http_url=url, workers=http.workers,
                           intra_op_threads=predictor.intra_op_threads)
        if agent is not None:
            agent.http_url = url
            agent.start()
            info = replace(
                info, broker=agent.broker.display, device=agent.topics.device,
                fleet=agent.topics.fleet, session=agent.session, spool_dir=str(agent.spool_dir),
                topics=agent.topics.as_dict(),
            )
        if on_ready is not None:
            on_ready(info)
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        if holder is not None:
            holder.unsubscribe(http.swap)
            if agent is not None:
                holder.unsubscribe(agent.swap)
        await http.stop()
        if agent is not None:
            await asyncio.to_thread(agent.stop)
