"""The on-device HTTP server: asyncio, standard library only (see :mod:`edgeml.runtime.oip`).

``HttpServer(predictor, stats, HttpSettings(...), max_batch=...)`` serves one model with
``await start()`` / ``await stop()``; ``port`` is the bound port (ask for 0 to get an
ephemeral one). ``edgeml serve`` (:func:`edgeml.runtime.service.serve`) is its one entry
point.

Workers. A small tabular model answers in tens of microseconds, far less than handing a
request to another thread would cost, so each worker is a whole event loop that runs its
model calls synchronously: worker 0 is the caller's loop, workers 1..N-1 run one loop each
in a thread of their own. All of them accept from the same listening socket (a duplicate
descriptor each), so an idle worker picks up new connections while a busy one computes;
a connection stays with the worker that accepted it, which answers its requests in order
(keep-alive and pipelining stay safe). The workers share the Predictor's one
onnxruntime session (``InferenceSession.run`` is thread-safe and releases the GIL while
it computes) and one :class:`~edgeml.runtime.stats.RuntimeStats` (locked), like Triton's
instance groups on CPU. One session per worker measured no better (0.91x at batch 1, 1.17x at
batch 64, same CPU time per request, on a loaded 2-core machine) for N times the model's memory.

Limits (:class:`~edgeml.runtime.http_protocol.Limits`) come from the bundle's device profile
(``target.serve`` in the manifest) unless the settings name them. At ``max_connections`` open
connections (all workers together) a new one closes the accepting worker's least recently
active connection (or, if that worker has none, is answered ``503`` and closed); request
bytes buffered by all connections are bounded by ``max_buffered_bytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time

from edgeml.errors import RuntimeServiceError
from edgeml.runtime.http_protocol import (
    BufferBudget,
    HttpProtocol,
    Limits,
    Request,
    Response,
    json_error,
)
from edgeml.runtime.oip import E_OTHER, App
from edgeml.runtime.predictor import Predictor
from edgeml.runtime.settings import HttpSettings
from edgeml.runtime.stats import RuntimeStats

__all__ = ["HttpServer", "Limits"]

log = logging.getLogger("edgeml.runtime.http")

_BUSY = json_error(503, "too many connections: try again later")


class _Refused(asyncio.Protocol):
    """A connection over the limit that no idle one can make room for: one 503, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        body = _BUSY.body
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nServer: edgeml\r\nContent-Type: "
                        b"application/json\r\nContent-Length: " + str(len(body)).encode() +
                        b"\r\nConnection: close\r\n\r\n" + body)
        transport.close()


class _Worker:
    """One event loop serving the connections it accepts (timeouts swept once a second)."""

    def __init__(self, server: HttpServer, index: int) -> None:
        self.server = server
        self.index = index
        self.app = App(server.predictor, server.stats, max_batch=server.max_batch)
        self.connections: set[HttpProtocol] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self._listener: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def _protocol(self) -> asyncio.Protocol:
        if self.server.open_connections >= self.server.limits.max_connections:
            # make room: drop the least recently active connection of any worker (slowloris
            # connections sit idle); refuse only when none can be given up
            self.server.stats.record_error(E_OTHER, "connections")
            if not self.server.evict_stalest(self):
                return _Refused()
        return HttpProtocol(self._handle, self.server.limits, self.connections.add,
                            self.connections.discard, self._protocol_error, self.server.budget)

    def _handle(self, request: Request) -> Response:
        # looked up per request, so a kept-alive connection follows HttpServer.swap
        return self.app(request)

    def _protocol_error(self, kind: str) -> None:
        self.server.stats.record_error(E_OTHER, kind)

    async def listen(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self._listener = await loop.create_server(self._protocol, sock=sock, backlog=1024)
        self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.check_timeouts(now)

    async def stop(self, grace: float) -> None:
        """Stop accepting, let responses in progress finish (up to ``grace`` s), close."""
        if self._listener is None:
            return
        self._listener.close()
        for conn in list(self.connections):
            conn.shutdown()
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self._listener.wait_closed()
        self._listener = None

    # -- workers 1..N-1: a loop in a thread of their own --------------------------------

    def start_thread(self, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.listen(sock))
            except BaseException as exc:  # reported to start() below
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self.thread = threading.Thread(target=run, name=f"edgeml-http-{self.index}", daemon=True)
        self.thread.start()
        started.wait()
        if failure:
            raise RuntimeServiceError(f"HTTP worker {self.index} did not start: {failure[0]}")

    async def stop_thread(self, grace: float) -> None:
        loop, thread = self.loop, self.thread
        if loop is None or thread is None or loop.is_closed():
            return
        done = asyncio.run_coroutine_threadsafe(self.stop(grace), loop)
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(done)
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, grace + 5.0)
        self.thread = None


class HttpServer:
    """An HTTP/1.1 server for one model: ``settings.worker_count`` event loops, one socket."""

    def __init__(
        self,
        predictor: Predictor,
        stats: RuntimeStats,
        settings: HttpSettings | None = None,
        *,
        max_batch: int = 1024,
    ) -> None:
        self.predictor = predictor
        self.stats = stats
        self.settings = settings or HttpSettings()
        self.max_batch = max_batch
        self.host = self.settings.host
        self._port = self.settings.port
        st = self.settings  # explicit settings win over the device profile's (manifest)
        self.limits = Limits.for_target(
            predictor.manifest.target.serve, max_body_bytes=st.max_body_bytes,
            idle_timeout=st.idle_timeout, request_timeout=st.request_timeout,
            max_connections=st.max_connections, max_buffered_bytes=st.max_buffered_bytes)
        self.budget = BufferBudget(self.limits.max_buffered_bytes, self.limits.max_connections)
        self.workers = self.settings.worker_count
        self._workers = [_Worker(self, i) for i in range(self.workers)]
        self.app = self._workers[0].app
        self._socket: socket.socket | None = None
        self._sockets: list[socket.socket] = []

    @property
    def port(self) -> int:
        """The bound port once started (the requested one before)."""
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    @property
    def open_connections(self) -> int:
        """Connections open now, all workers together."""
        return sum(len(w.connections) for w in self._workers)

    def evict_stalest(self, worker: _Worker) -> bool:
        """Close the least recently active open connection (in its own worker's loop)."""
        candidates = [(c.last_activity, i, c) for i, w in enumerate(self._workers)
                      for c in list(w.connections) if not c.closing]
        if not candidates:
            return False
        _, index, conn = min(candidates, key=lambda t: t[0])
        owner = self._workers[index]
        if owner is worker or owner.loop is None:
            conn.evict()
        else:
            owner.loop.call_soon_threadsafe(conn.evict)
        return True

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise RuntimeServiceError(f"cannot listen on {self.host}:{self._port}: "
                                      f"{exc.strerror or exc}") from exc
        return sock

    async def start(self) -> None:
        self._socket = self._bind()
        self._port = self._socket.getsockname()[1]
        try:
            await self._workers[0].listen(self._socket)
            for worker in self._workers[1:]:
                dup = self._socket.dup()
                self._sockets.append(dup)
                worker.start_thread(dup)
        except BaseException:
            await self.stop(grace=0.0)
            raise
        log.info("serving %s on %s with %d worker(s)", self.app.name, self.url, self.workers)

    async def stop(self, grace: float = 2.0) -> None:
        """Stop listening, let responses in progress finish (up to ``grace`` s), close."""
        if self._socket is None:
            return
        await asyncio.gather(self._workers[0].stop(grace),
                             *(w.stop_thread(grace) for w in self._workers[1:]))
        for sock in [self._socket, *self._sockets]:
            sock.close()
        self._socket = None
        self._sockets = []

    def swap(self, predictor: Predictor, stats: RuntimeStats) -> None:
        """Answer the next requests with ``predictor`` (a ModelHolder listener; thread-safe).

        Requests in progress finish on the old model; limits stay those of the first one.
        """
        apps = [App(predictor, stats, max_batch=self.max_batch) for _ in self._workers]
        self.predictor, self.stats = predictor, stats
        for worker, app in zip(self._workers, apps, strict=True):
            worker.app = app  # one attribute store: atomic for the worker's next request
        self.app = apps[0]
        log.info("now serving %s@%s", self.app.name, self.app.version)

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


if __name__ == "__main__":  # the old entry point: say where it went (a usage error: exit 2)
    import sys

    print("error: python -m edgeml.runtime.http is gone: run `edgeml serve BUNDLE` "
          "(edgeml serve --help lists every option)", file=sys.stderr)
    sys.exit(2)
