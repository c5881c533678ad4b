"""An embedded MQTT broker for demos and single-node setups (``edgeml broker``).

It is amqtt (pure Python), the optional extra ``pip install 'edgeml[broker]'``, imported
only here and only when a broker is started. amqtt speaks MQTT 3.1.1 only: devices
detect that (see :mod:`edgeml.runtime.mqtt_client`) and connect with 3.1.1, and MQTT
inference requests then name their reply topic in the body (``"reply_to"``,
``"correlation_id"``) because 3.1.1 has no ResponseTopic/CorrelationData properties.
Retained messages, wills, QoS 1 and persistent sessions work. No TLS, no authentication:
listen on 127.0.0.1 (the default) unless the network is trusted; use Mosquitto in production.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import weakref
from collections.abc import Callable
from typing import Any

from edgeml.errors import RuntimeServiceError

__all__ = ["EmbeddedBroker", "run_broker"]

log = logging.getLogger(__name__)


class _TrackingLoop(asyncio.SelectorEventLoop):
    """An event loop that remembers its socket transports.

    amqtt leaves some client connections open at shutdown; ``stop()`` closes what is left
    so that nothing leaks (sockets, ResourceWarnings) after the broker is gone.
    """

    def __init__(self) -> None:
        super().__init__()
        self.transports: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()

    def _make_socket_transport(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        transport = super()._make_socket_transport(*args, **kwargs)  # type: ignore[misc]
        self.transports.add(transport)
        return transport

    def close_transports(self) -> None:
        for transport in list(self.transports):
            if not transport.is_closing():
                transport.close()


class _QuietProbes(logging.Filter):
    """Drop amqtt's warning about MQTT v5 CONNECTs: every device probe sends one."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("Invalid protocol from" in text or "Invalid connection from" in text)


def _import_amqtt() -> Any:
    try:
        from amqtt.broker import Broker
    except ImportError as exc:
        raise RuntimeServiceError(
            "the embedded broker needs the optional extra: pip install 'edgeml[broker]' "
            f"({exc})"
        ) from exc
    return Broker


class EmbeddedBroker:
    """amqtt in a background thread with its own event loop. ``start()`` / ``stop()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host = host
        self.port = port
        self._loop: _TrackingLoop | None = None
        self._broker: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start listening; raises RuntimeServiceError if the port cannot be bound."""
        broker_cls = _import_amqtt()
        quiet = _QuietProbes()
        for name in ("amqtt", "amqtt.broker"):
            logging.getLogger(name).addFilter(quiet)
        if logging.getLogger("amqtt").level == logging.NOTSET:
            logging.getLogger("amqtt").setLevel(logging.WARNING)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        _check_port(self.host, self.port)
        loop = _TrackingLoop()
        self._loop = loop
        started = threading.Event()
        failure: list[BaseException] = []

        async def boot() -> None:
            # Built inside its loop: amqtt creates futures bound to the running loop.
            self._broker = broker_cls(config)
            await self._broker.start()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(boot())
            except BaseException as exc:  # bind errors and the like: report to start()
                failure.append(exc)
                started.set()
                _cancel_all(loop)
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.close_transports()
            _cancel_all(loop)
            loop.run_until_complete(asyncio.sleep(0))  # let the transports finish closing
            loop.close()

        self._thread = threading.Thread(target=run, name="edgeml-broker", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise RuntimeServiceError(f"embedded broker did not start within {timeout:.0f} s")
        if failure:
            self._thread.join(timeout)
            self._thread = None
            raise RuntimeServiceError(
                f"embedded broker cannot listen on {self.host}:{self.port}: {failure[0]}"
            ) from failure[0]

    def stop(self, timeout: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), loop)
        try:
            future.result(timeout)
        except Exception as exc:  # a broker that fails to shut down cleanly is still stopped
            log.warning("embedded broker shutdown: %s", exc)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = None
        self._loop = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _check_port(host: str, port: int) -> None:
    """Fail with a clear message (instead of amqtt's traceback) when the port is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise RuntimeServiceError(f"embedded broker: cannot resolve {host!r}: {exc}") from exc
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise RuntimeServiceError(
                f"embedded broker cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from exc


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def run_broker(
    host: str = "127.0.0.1",
    port: int = 1883,
    on_ready: Callable[[EmbeddedBroker], None] | None = None,
) -> None:
    """Run the embedded broker until SIGINT or SIGTERM."""
    broker = EmbeddedBroker(host, port)
    broker.start()
    done = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: done.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if on_ready is not None:
            on_ready(broker)
        while not done.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        broker.stop()
