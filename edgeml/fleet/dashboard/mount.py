"""The dashboard inside ``edgeml monitor --http PORT --dashboard``: one port for both.

:class:`MonitorHTTP` serves :func:`~edgeml.fleet.dashboard.create_app` with the monitor's
own ``GET /metrics`` (Prometheus text format, from its :class:`~edgeml.fleet.exposition.Registry`)
and ``GET /healthz`` added as routes, with uvicorn in a thread. It stands in for the
stdlib :class:`~edgeml.fleet.exposition.MetricsServer` (same ``url``, ``port``, ``start``,
``stop``). The dashboard's rules hold on the whole port: loopback by default; any other
address needs a token (refused before binding otherwise), and then every request needs it,
``/metrics`` included (Prometheus: ``authorization: {credentials: TOKEN}`` in the scrape
config). The dashboard reads the store through its own read-only engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from edgeml.fleet.exposition import CONTENT_TYPE, Registry

__all__ = ["MonitorHTTP", "metrics_routes"]


def metrics_routes(registry: Registry, health: Callable[[], bool] | None = None) -> list[BaseRoute]:
    """``/metrics`` and ``/healthz`` as Starlette routes (what the stdlib server answers)."""

    def metrics(request: Request) -> Response:
        return Response(registry.render().encode(), media_type=None,
                        headers={"content-type": CONTENT_TYPE, "cache-control": "no-store"})

    def healthz(request: Request) -> Response:
        ok = health() if health is not None else True
        return PlainTextResponse("ok\n" if ok else "unhealthy\n", status_code=200 if ok else 503)

    return [Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"])]


class MonitorHTTP:
    """The dashboard app plus ``/metrics`` and ``/healthz`` on ``host:port`` (a thread)."""

    def __init__(self, registry: Registry, source: Any, host: str = "127.0.0.1", port: int = 0,
                 *, token: str | None = None, token_file: str | None = None,
                 health: Callable[[], bool] | None = None) -> None:
        from edgeml.fleet.dashboard.app import create_app
        from edgeml.fleet.dashboard.server import DashboardServer, DashboardSettings

        resolved = DashboardSettings(host=host, port=port, token=token,
                                     token_file=token_file).resolved_token()
        self.token = resolved
        app = create_app(source, resolved, extra_routes=metrics_routes(registry, health))
        self._server = DashboardServer(app, host, port)

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        """Where it listens, without the trailing slash (``url + "/metrics"``)."""
        return self._server.url.rstrip("/")

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()
