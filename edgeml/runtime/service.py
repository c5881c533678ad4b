"""``edgeml serve``: HTTP prediction server plus (optionally) MQTT telemetry, in one process.

:func:`serve` composes :class:`~edgeml.runtime.predictor.Predictor`,
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeml.runtime.spool import DEFAULT_MAX_BYTES, DEFAULT_MAX_MESSAGES
from edgeml.runtime.topics import DEFAULT_BASE, DEFAULT_FLEET

__all__ = ["ServiceInfo", "serve"]


@dataclass(frozen=True)
class ServiceInfo:
    """What a running service tells its caller once it listens (the CLI prints it)."""

    model: str  # name@version
    task: str
    bundle: str
    http_url: str
    broker: str | None = None
    device: str | None = None
    fleet: str | None = None
    session: int | None = None
    spool_dir: str | None = None
    topics: dict[str, str] = field(default_factory=dict)


def serve(
    bundle: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    broker: str | None = None,
    device_id: str | None = None,
    fleet: str = DEFAULT_FLEET,
    base_topic: str = DEFAULT_BASE,
    metrics_interval: float = 10.0,
    spool_dir: str | Path | None = None,
    spool_max_messages: int = DEFAULT_MAX_MESSAGES,
    spool_max_bytes: int = DEFAULT_MAX_BYTES,
    sample_rate: float = 0.0,
    sample_max_per_minute: int = 60,
    public_key: str | Path | None = None,
    username: str | None = None,
    password: str | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_insecure: bool = False,
    mqtt_version: str = "auto",
    keepalive: int = 30,
    reconnect_max_delay: int = 30,
    max_batch: int = 1024,
    on_ready: Callable[[ServiceInfo], None] | None = None,
) -> None:
    """Serve ``bundle`` over HTTP (and MQTT telemetry with ``broker``) until SIGTERM/SIGINT."""
    from edgeml.runtime.predictor import Predictor
    from edgeml.runtime.stats import RuntimeStats

    predictor = Predictor(bundle, public_key=Path(public_key) if public_key else None)
    stats = RuntimeStats.for_predictor(predictor)
    agent = None
    if broker:
        from edgeml.runtime.telemetry import DeviceAgent

        agent = DeviceAgent(
            predictor, stats, broker=broker, device_id=device_id, fleet=fleet,
            base_topic=base_topic, metrics_interval=metrics_interval, spool_dir=spool_dir,
            spool_max_messages=spool_max_messages, spool_max_bytes=spool_max_bytes,
            sample_rate=sample_rate, sample_max_per_minute=sample_max_per_minute,
            username=username, password=password, tls_ca=tls_ca, tls_cert=tls_cert,
            tls_key=tls_key, tls_insecure=tls_insecure, mqtt_version=mqtt_version,
            keepalive=keepalive, reconnect_max_delay=reconnect_max_delay, max_batch=max_batch,
        )
        agent.open()  # fails early (spool locked or unwritable) before anything listens
    try:
        asyncio.run(_run(predictor, stats, agent, host, port, max_batch, on_ready))
    finally:
        if agent is not None:
            agent.stop()


async def _run(
    predictor: Any,
    stats: Any,
    agent: Any,
    host: str,
    port: int,
    max_batch: int,
    on_ready: Callable[[ServiceInfo], None] | None,
) -> None:
    from edgeml.runtime.http import HttpServer

    http = HttpServer(predictor, stats, host=host, port=port, max_batch=max_batch)
    await http.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        url = _bound_url(http, host, port)
        m = predictor.manifest
        info = ServiceInfo(model=m.ref, task=m.task, bundle=predictor.bundle.path.name, http_url=url)
        if agent is not None:
            agent.http_url = url
            agent.start()
            info = ServiceInfo(
                model=m.ref, task=m.task, bundle=info.bundle, http_url=url,
                broker=agent.broker.display, device=agent.topics.device, fleet=agent.topics.fleet,
                session=agent.session, spool_dir=str(agent.spool_dir), topics=agent.topics.as_dict(),
            )
        if on_ready is not None:
            on_ready(info)
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await http.stop()
        if agent is not None:
            await asyncio.to_thread(agent.stop)


def _bound_url(http: Any, host: str, port: int) -> str:
    url = getattr(http, "url", None)
    if isinstance(url, str) and url:
        return url
    bound = getattr(http, "port", None) or port
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{bound}"
