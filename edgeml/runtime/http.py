"""The on-device HTTP server: asyncio, standard library only (see :mod:`edgeml.runtime.oip`).

``HttpServer(predictor, stats, host=..., port=..., max_batch=...)`` serves one model with
``await start()`` / ``await stop()``; ``port`` is the bound port (ask for 0 to get an
ephemeral one). ``run_http(...)`` is the blocking helper that ``edgeml serve`` calls; it
stops cleanly on SIGINT/SIGTERM. For tests and quick use::

    python -m edgeml.runtime.http BUNDLE [--host 127.0.0.1] [--port 8080] [--max-batch 1024]

Model runs happen synchronously in the event loop: a small tabular model answers in tens
of microseconds, far less than a thread hand-off would cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgeml.errors import EdgeMLError, RuntimeServiceError
from edgeml.runtime.http_protocol import HttpProtocol, Limits
from edgeml.runtime.oip import E_OTHER, App
from edgeml.runtime.predictor import Predictor
from edgeml.runtime.stats import RuntimeStats

__all__ = ["HttpServer", "Limits", "run_http"]

log = logging.getLogger("edgeml.runtime.http")


class HttpServer:
    """An HTTP/1.1 server for one model on the running asyncio loop."""

    def __init__(
        self,
        predictor: Predictor,
        stats: RuntimeStats,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        max_batch: int = 1024,
        limits: Limits | None = None,
    ) -> None:
        self.app = App(predictor, stats, max_batch=max_batch)
        self.host = host
        self._port = port
        self.limits = limits or Limits()
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[HttpProtocol] = set()
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port once started (the requested one before)."""
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    def _protocol(self) -> HttpProtocol:
        return HttpProtocol(self.app, self.limits, self._connections.add,
                            self._connections.discard, self._protocol_error)

    def _protocol_error(self, kind: str) -> None:
        self.app.stats.record_error(E_OTHER, kind)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self._protocol, self.host, self._port, reuse_address=True, backlog=1024
            )
        except OSError as exc:
            raise RuntimeServiceError(f"cannot listen on {self.host}:{self._port}: "
                                      f"{exc.strerror or exc}") from exc
        self._port = self._server.sockets[0].getsockname()[1]
        self._sweeper = loop.create_task(self._sweep())
        log.info("serving %s on %s", self.app.name, self.url)

    async def _sweep(self) -> None:
        """Enforce idle and request timeouts once a second."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for conn in list(self._connections):
                conn.check_timeouts(now)

    async def stop(self, grace: float = 2.0) -> None:
        """Stop listening, let responses in progress finish (up to ``grace`` s), close."""
        if self._server is None:
            return
        self._server.close()
        for conn in list(self._connections):
            conn.shutdown()
        deadline = time.monotonic() + grace
        while self._connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def run_http(
    predictor: Predictor,
    stats: RuntimeStats,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    max_batch: int = 1024,
    limits: Limits | None = None,
    on_started: Callable[[HttpServer], None] | None = None,
    stop_event: threading.Event | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop_event`` is set). Blocks."""

    async def main() -> None:
        server = HttpServer(predictor, stats, host=host, port=port, max_batch=max_batch,
                            limits=limits)
        await server.start()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, stopping.set)
        if stop_event is not None:
            threading.Thread(target=lambda: (stop_event.wait(), loop.call_soon_threadsafe(
                stopping.set)), daemon=True).start()
        if on_started is not None:
            on_started(server)
        try:
            await stopping.wait()
        finally:
            await server.stop()

    asyncio.run(main())


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeml.runtime.http",
                                     description="Serve one edgeml bundle over HTTP.")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--public-key", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes)
    parser.add_argument("--idle-timeout", type=float, default=Limits.idle_timeout)
    parser.add_argument("--request-timeout", type=float, default=Limits.request_timeout)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        predictor = Predictor(args.bundle, public_key=args.public_key,
                              intra_op_threads=args.threads)
        stats = RuntimeStats.for_predictor(predictor)

        def started(server: HttpServer) -> None:
            m = predictor.manifest
            print(f"edgeml: serving {m.name}@{m.version} on {server.url}", flush=True)

        limits = Limits(max_body_bytes=args.max_body_bytes, idle_timeout=args.idle_timeout,
                        request_timeout=args.request_timeout)
        run_http(predictor, stats, args.host, args.port, max_batch=args.max_batch,
                 limits=limits, on_started=started)
    except EdgeMLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(_main())
