"""A small Prometheus registry and the monitor's ``GET /metrics`` endpoint (text format 0.0.4).

The monitor registers its ingest counters here; other fleet modules (alerts, drift) add
their own gauges to the same registry::

    families = monitor.registry
    open_alerts = families.gauge("edgeml_fleet_alerts_open", "Open alerts.", ("kind",))
    open_alerts.set({"kind": "drift"}, 3)
    open_alerts.replace({("drift",): 3.0, ("silent",): 1.0})   # a whole snapshot at once

Thread-safe; no dependency beyond the standard library.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["CONTENT_TYPE", "Family", "MetricsServer", "Registry"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Family:
    """One metric family (counter or gauge) with a fixed tuple of label names."""

    def __init__(self, name: str, kind: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.kind = kind
        self.help = help_text
        self.labels = labels
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()
        self._collect: Callable[[], Mapping[tuple[str, ...], float]] | None = None

    def _key(self, labels: Mapping[str, str] | None) -> tuple[str, ...]:
        labels = labels or {}
        if set(labels) != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {sorted(labels)}")
        return tuple(str(labels[k]) for k in self.labels)

    def inc(self, labels: Mapping[str, str] | None = None, amount: float = 1.0) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def set(self, labels: Mapping[str, str] | None, value: float) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def replace(self, values: Mapping[tuple[str, ...], float]) -> None:
        """Swap in a whole snapshot (label-value tuples in ``labels`` order)."""
        snapshot = {tuple(str(v) for v in k): float(x) for k, x in values.items()}
        with self._lock:
            self._values = snapshot

    def collect_with(self, fn: Callable[[], Mapping[tuple[str, ...], float]]) -> None:
        """Compute the values at each scrape instead (for gauges such as a queue depth)."""
        self._collect = fn

    def value(self, labels: Mapping[str, str] | None = None) -> float:
        key = self._key(labels)
        with self._lock:
            return self._values.get(key, 0.0)

    def samples(self) -> list[tuple[tuple[str, ...], float]]:
        if self._collect is not None:
            return sorted((tuple(k), float(v)) for k, v in self._collect().items())
        with self._lock:
            return sorted(self._values.items())

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {self.help}")
        out.append(f"# TYPE {self.name} {self.kind}")
        for key, value in self.samples():
            if self.labels:
                pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in zip(self.labels, key,
                                                                        strict=True))
                out.append(f"{self.name}{{{pairs}}} {_num(value)}")
            else:
                out.append(f"{self.name} {_num(value)}")


class Registry:
    """Metric families by name; registering a name twice with another shape is an error."""

    def __init__(self) -> None:
        self._families: dict[str, Family] = {}
        self._lock = threading.Lock()

    def _family(self, name: str, kind: str, help_text: str, labels: Iterable[str]) -> Family:
        labels = tuple(labels)
        with self._lock:
            family = self._families.get(name)
            if family is None:
                family = self._families[name] = Family(name, kind, help_text, labels)
            elif (family.kind, family.labels) != (kind, labels):
                raise ValueError(f"metric {name} is already registered as a {family.kind} "
                                 f"with labels {family.labels}")
            return family

    def counter(self, name: str, help_text: str, labels: Iterable[str] = ()) -> Family:
        return self._family(name, "counter", help_text, labels)

    def gauge(self, name: str, help_text: str, labels: Iterable[str] = ()) -> Family:
        return self._family(name, "gauge", help_text, labels)

    def get(self, name: str) -> Family | None:
        return self._families.get(name)

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            families = list(self._families.values())
        for family in families:
            family.render(out)
        return "\n".join(out) + "\n"


class MetricsServer:
    """``GET /metrics`` (and ``/healthz``) on a background thread. Loopback by default."""

    def __init__(self, registry: Registry, host: str = "127.0.0.1", port: int = 0,
                 health: Callable[[], bool] | None = None) -> None:
        registry_ref = registry
        health_fn = health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, status, kind = registry_ref.render().encode(), 200, CONTENT_TYPE
                elif path == "/healthz":
                    ok = health_fn() if health_fn is not None else True
                    body, status = (b"ok\n", 200) if ok else (b"unhealthy\n", 503)
                    kind = "text/plain; charset=utf-8"
                else:
                    body, status, kind = b"not found\n", 404, "text/plain; charset=utf-8"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="edgeml-monitor-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._server.server_address[0])
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
