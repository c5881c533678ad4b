"""HttpProtocol on a real asyncio server and real sockets, with handlers and limits chosen by
the test: response header values are checked before they are written, the drain after a 413
has a deadline, and the buffered-bytes budget answers 503 to the greedy connection only."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from edgeml.runtime.http_protocol import BufferBudget, HttpProtocol, Limits, Request, Response


class LoopServer:
    """HttpProtocol served by an event loop in a thread, timeouts swept every 0.1 s."""

    def __init__(self, handler: Callable[[Request], Response], limits: Limits,
                 budget: BufferBudget | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.connections: set[HttpProtocol] = set()
        started = threading.Event()

        async def main() -> None:
            self.server = server = await self.loop.create_server(
                lambda: HttpProtocol(handler, limits, self.connections.add,
                                     self.connections.discard, None, budget), "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            while True:
                await asyncio.sleep(0.1)
                for conn in list(self.connections):
                    conn.check_timeouts(time.monotonic())

        self.task: asyncio.Task[None] | None = None
        self.server: asyncio.base_events.Server

        def run() -> None:
            self.task = self.loop.create_task(main())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        started.wait(5)

    def close(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            await asyncio.sleep(0.05)  # connection_lost callbacks run
            if self.task is not None:
                self.task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., LoopServer]]:
    servers: list[LoopServer] = []

    def start(handler: Callable[[Request], Response], limits: Limits,
              budget: BufferBudget | None = None) -> LoopServer:
        servers.append(LoopServer(handler, limits, budget))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def test_a_response_header_with_cr_or_lf_is_never_written(serve: Callable[..., LoopServer]) -> None:
    def handler(request: Request) -> Response:
        value = request.path.encode().replace(b"_", b"\r\n")[1:]
        return Response(200, b"{}", headers=[(b"X-Echo", value)])

    srv = serve(handler, Limits())
    for path, status in (("/plain", b"200"), ("/a_Set-Cookie: stolen=1", b"500")):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            sock.sendall(f"GET {path.replace(' ', '%20')} HTTP/1.1\r\nHost: x\r\n"
                         "Connection: close\r\n\r\n".encode())
            raw = read_all(sock)
        assert raw.startswith(b"HTTP/1.1 " + status), raw
        assert b"Set-Cookie" not in raw


def test_the_drain_after_a_413_has_a_deadline(serve: Callable[..., LoopServer]) -> None:
    srv = serve(lambda r: Response(200, b"{}"), Limits(max_body_bytes=1024, drain_timeout=1.0))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
        start = time.monotonic()
        closed = False
        while time.monotonic() - start < 6:  # a client that never stops uploading
            try:
                sock.sendall(b"x" * 4096)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.01)
        elapsed = time.monotonic() - start
    assert closed and elapsed < 3.0, elapsed


def test_the_buffer_budget_stops_the_greedy_connection(serve: Callable[..., LoopServer]) -> None:
    budget = BufferBudget(limit=256 * 1024, connections=4)  # fair share: 64 KiB
    srv = serve(lambda r: Response(200, b'{"ok":true}'), Limits(), budget)
    greedy = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    greedy.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for _ in range(100):
            greedy.sendall(b"x" * 16384)
            time.sleep(0.005)
    greedy.close()
    time.sleep(0.2)
    assert budget.used == 0  # what it held was given back
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_all(sock).endswith(b'{"ok":true}')
