"""Answer agents' chunk requests from the ``bundles`` table (the monitor's side of the transfer).

:class:`ChunkAnswers` keeps the bytes of recently asked bundles in an LRU bounded by
``max_bytes`` (a bundle is read from the database once, whole); :meth:`ChunkAnswers.answer`
turns one ``edgeml.chunk-request/1`` into the payloads to publish, encoded by
:mod:`edgeml.agent.protocol` exactly as :class:`edgeml.agent.chunkserver.ChunkServer` does.
Chunks are content-addressed, so any chunk size the request names is served; a bundle
this store does not hold gets the protocol's chunk-error JSON.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from sqlalchemy import select

from edgeml.agent.protocol import ChunkRequest, chunk_count, encode_chunk, encode_chunk_error
from edgeml.fleet.schema import BundleBlob

__all__ = ["DEFAULT_CACHE_BYTES", "ChunkAnswers"]

DEFAULT_CACHE_BYTES = 256 * 1024 * 1024


class ChunkAnswers:
    def __init__(self, store: Any, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.loads = 0  # bundles read from the database
        self.requests = 0
        self.chunks_sent = 0

    def bundle(self, sha256: str) -> bytes | None:
        """The bundle's bytes (from the LRU, else the database), or None if not stored."""
        with self._lock:
            data = self._cache.get(sha256)
            if data is not None:
                self._cache.move_to_end(sha256)
                return data
        with self.store.session() as session:
            raw = session.execute(select(BundleBlob.data).where(BundleBlob.sha256 == sha256)).scalar()
        if raw is None:
            return None
        data = bytes(raw)
        with self._lock:
            self.loads += 1
            if sha256 not in self._cache:
                self._cache[sha256] = data
                self._bytes += len(data)
            while self._bytes > self.max_bytes and len(self._cache) > 1:
                _old, dropped = self._cache.popitem(last=False)
                self._bytes -= len(dropped)
        return data

    def answer(self, req: ChunkRequest) -> list[bytes]:
        """The payloads answering ``req``: its chunks in the order asked, or one chunk error."""
        self.requests += 1
        data = self.bundle(req.sha256)
        if data is None:
            return [encode_chunk_error(req.sha256, "bundle not stored in this fleet database")]
        size, step = len(data), req.chunk_size
        count = chunk_count(size, step)
        out = [encode_chunk(req.sha256, i, count, data[i * step:min(size, (i + 1) * step)])
               for i in req.chunks if i < count]
        self.chunks_sent += len(out)
        return out
