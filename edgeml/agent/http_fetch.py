"""Download a bundle over HTTP(S) with Range requests (the alternative to MQTT chunks).

:class:`HttpFetch` runs one thread that ``GET``\\ s ``bundle.url`` with
``Range: bytes=<index * chunk_size>-`` and cuts the body into the offer's chunks; the
deployer's thread takes them with :meth:`HttpFetch.poll` and writes them with the same
:class:`~edgeml.agent.transfer.Download` (``pwrite`` + fsync, then the chunk log), so
progress survives a restart exactly like an MQTT transfer and a resumed download asks
from the first missing chunk. Answers:

    206             continue from the asked offset (its Content-Range must say so and
                    name ``size`` as the total, or ``*``)
    200             the server ignored the range: start again from byte 0 (chunks the
                    device has already are skipped by the log)
    408 425 429 5xx retried with backoff (0.5 s doubling to ``max_delay``, reset by
                    progress); so are timeouts (``timeout`` per connect and per read),
                    refused or lost connections and a body that ends early
    416, other 4xx  fatal: the deployment fails with the reason; so do a length that is
                    not ``size`` and a certificate that does not verify

The bytes are not trusted: the whole-file sha256 decides, as for MQTT. With a ``token``
every request carries ``Authorization: Bearer <token>`` (use https). Device-safe:
standard library only.
"""

from __future__ import annotations

import http.client
import logging
import queue
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from edgeml.agent.protocol import BundleOffer

__all__ = ["HttpFetch"]

log = logging.getLogger(__name__)

_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_RETRY_STATUS = (408, 425, 429)
FIRST_DELAY = 0.5


class _Fatal(Exception):
    """The download cannot succeed from this URL (the message is the reason)."""


class _Retry(Exception):
    """Try again after a pause (the message says why)."""


def _where(url: str) -> str:
    """The URL without its query or credentials (for reasons and logs)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class HttpFetch:
    """One download of ``offer`` from ``url``, starting at chunk ``first_index``.

    Events from :meth:`poll`: ``("chunk", index, data)``, ``("retry", reason)`` (logged,
    the thread goes on), ``("error", reason)`` (fatal: the thread has ended), ``("done",)``.
    """

    def __init__(self, url: str, offer: BundleOffer, first_index: int = 0, *,
                 token: str | None = None, timeout: float = 10.0, max_delay: float = 30.0,
                 queue_size: int = 16) -> None:
        self.url = url
        self.where = _where(url)
        self.offer = offer
        self.index = first_index  # the next chunk the thread will read
        self.token = token
        self.timeout = timeout
        self.max_delay = max(FIRST_DELAY, max_delay)
        self.requests = 0
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        context = ssl.create_default_context()
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))

    # -- lifecycle (the deployer's thread) --------------------------------------------------

    def start(self) -> HttpFetch:
        self._thread = threading.Thread(target=self._run, name="edgeml-http-fetch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            # a read in progress ends within ``timeout``; past that the thread is left to end
            # on its own (a daemon that checks the stop flag before handing anything over)
            deadline = time.monotonic() + self.timeout + 1.0
            while thread.is_alive() and time.monotonic() < deadline:
                try:
                    self._events.get_nowait()  # unblock a put() into a full queue
                except queue.Empty:
                    thread.join(0.05)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def poll(self, wait: float, limit: int = 64) -> list[tuple[Any, ...]]:
        """Up to ``limit`` events, waiting up to ``wait`` s for the first."""
        out: list[tuple[Any, ...]] = []
        try:
            out.append(self._events.get(timeout=wait) if wait > 0 else self._events.get_nowait())
        except queue.Empty:
            return out
        while len(out) < limit:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                break
        return out

    # -- the thread ---------------------------------------------------------------------------

    def _put(self, event: tuple[Any, ...]) -> bool:
        while not self._stop.is_set():
            try:
                self._events.put(event, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        delay = FIRST_DELAY
        while not self._stop.is_set() and self.index < self.offer.count:
            before = self.index
            try:
                self._get()
                if self.index < self.offer.count and not self._stop.is_set():
                    raise _Retry(f"the body ended at chunk {self.index} of {self.offer.count}")
            except _Fatal as exc:
                self._put(("error", f"download from {self.where} failed: {exc}"))
                return
            except (_Retry, OSError, http.client.HTTPException, ValueError) as exc:
                if self._stop.is_set():
                    return
                if self.index > before:
                    delay = FIRST_DELAY  # progress: the link works, retry soon
                reason = _describe(exc)
                log.warning("download from %s: %s (again in %.1f s)", self.where, reason, delay)
                self._put(("retry", reason))
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, self.max_delay)
        if not self._stop.is_set():
            self._put(("done",))

    def _get(self) -> None:
        offer = self.offer
        start = self.index * offer.chunk_size
        headers = {"Range": f"bytes={start}-", "Accept-Encoding": "identity",
                   "User-Agent": "edgeml-agent"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self.requests += 1
        try:
            resp = self._opener.open(urllib.request.Request(self.url, headers=headers),
                                     timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            status, why = exc.code, exc.reason
            exc.close()
            if status == 416:
                raise _Fatal(f"HTTP 416 {why}: the server's file is shorter than the bundle "
                             f"({offer.size} bytes)") from None
            if status in _RETRY_STATUS or status >= 500:
                raise _Retry(f"HTTP {status} {why}") from None
            raise _Fatal(f"HTTP {status} {why}") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                raise _Fatal(f"TLS: {exc.reason.verify_message or exc.reason}") from None
            raise
        with resp:
            self._check_answer(resp, start)
            while self.index < offer.count and not self._stop.is_set():
                want = offer.length(self.index)
                data = _read_exact(resp, want)
                if len(data) < want:
                    raise _Retry(f"the connection closed in chunk {self.index} "
                                 f"({len(data)} of {want} bytes)")
                if not self._put(("chunk", self.index, data)):
                    return
                self.index += 1

    def _check_answer(self, resp: Any, start: int) -> None:
        size = self.offer.size
        if resp.status == 206:
            match = _RANGE.match(resp.headers.get("Content-Range", "").strip())
            if match is None:
                raise _Fatal("HTTP 206 without a valid Content-Range")
            first, total = int(match[1]), match[3]
            if total != "*" and int(total) != size:
                raise _Fatal(f"the server's file has {total} bytes, the bundle {size}")
            if first != start:
                raise _Fatal(f"asked for bytes {start}-, the server sent {first}-")
        elif resp.status == 200:
            length = resp.headers.get("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) != size:
                raise _Fatal(f"the server's file has {int(length)} bytes, the bundle {size}")
            if start:
                log.warning("%s ignored the Range request: downloading again from byte 0",
                            self.where)
            self.index = 0
        else:
            raise _Retry(f"unexpected HTTP {resp.status}")


def _read_exact(resp: Any, want: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < want:
        try:  # read1: at most one read of the socket, so a stop is seen between reads
            block = resp.read1(want - got)
        except http.client.IncompleteRead as exc:
            parts.append(exc.partial)
            break
        if not block:
            break
        parts.append(block)
        got += len(block)
    return b"".join(parts)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError):
        return f"cannot connect: {exc.reason}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, _Retry) else f"{type(exc).__name__}: {text}"
