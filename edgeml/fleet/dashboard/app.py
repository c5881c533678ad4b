"""The dashboard's Starlette app: each page and its JSON twin from one data function.

``GET /`` (fleet), ``/device``, ``/models``, ``/model``, ``/alerts``, ``/window``,
``/rollouts`` and ``/rollouts/{id}`` render a
Jinja2 template (autoescape on) from the same function that ``/api/<page>`` returns as
JSON (announced by a ``Link: rel="alternate"`` header, as datasette does). Charts and live
updates are static scripts that fetch the JSON API: no inline script, data reaches a
script only through the API or a ``|tojson`` data attribute. Every error of the API has
one shape, ``{"error": {"status", "message"}}``; pages show the same message in HTML.

:func:`create_app` is what ``edgeml dashboard`` serves and what another server (the
monitor) can mount: it takes a database URL (opened read-only), an engine or a store.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from edgeml import __version__
from edgeml.errors import EdgeMLError, NotFoundError, StoreError, UsageError
from edgeml.fleet.dashboard import device as device_q
from edgeml.fleet.dashboard import model as model_q
from edgeml.fleet.dashboard import queries
from edgeml.fleet.dashboard.openapi import openapi
from edgeml.fleet.dashboard.security import Guard, error_body
from edgeml.fleet.dashboard.store import readonly_store
from edgeml.fleet.db import Store
from edgeml.fleet.thresholds import Thresholds, load_thresholds

__all__ = ["NAV", "Page", "create_app"]

HERE = Path(__file__).parent
UPLOT = "1.6.32"
POLL_MS = 5000
SERVER_ROWS = 100  # fleet rows rendered in the HTML; the page's script renders every row
# the navigation bar
NAV = [("fleet", "/", "Fleet"), ("models", "/models", "Models"), ("alerts", "/alerts", "Alerts"),
       ("rollouts", "/rollouts", "Rollouts")]


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class ApiJSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(_clean(content), ensure_ascii=False, allow_nan=False,
                          separators=(",", ":"), default=str).encode("utf-8")


def _arg(request: Request, name: str, *, kind: type = str, required: bool = False) -> Any:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        if required:
            raise UsageError(f"missing query parameter {name!r}")
        return None
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise UsageError(f"query parameter {name!r} must be an integer, got {raw!r}") from None
    return raw


@dataclass(frozen=True)
class Page:
    """One page: its HTML path, template, JSON twin and the data function behind both."""

    name: str
    path: str
    template: str
    data: Callable[[Store, Request], dict[str, Any]]
    api: str = ""
    params: tuple[str, ...] = field(default_factory=tuple)
    nav: str = ""  # the navigation entry it highlights (default: its name)


class Snapshot:
    """The fleet page's data, computed at most once per ``ttl`` seconds.

    The page's first poll of ``/api/fleet`` right after the HTML, and every browser
    polling the same fleet, share one computation (the store is read-only here).
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._value: tuple[float, dict[str, Any]] | None = None

    def __call__(self, store: Store, thresholds: Thresholds) -> dict[str, Any]:
        with self._lock:
            if self._value is None or time.monotonic() - self._value[0] >= self.ttl:
                data = queries.fleet_data(store, thresholds=thresholds)
                self._value = (time.monotonic(), data)  # its age counts from when it was ready
            return self._value[1]


PAGES = [
    Page("fleet", "/", "fleet.html",
         lambda s, r: r.app.state.snapshot(s, r.app.state.thresholds), "/api/fleet"),
    Page("device", "/device", "device.html",
         lambda s, r: device_q.device_data(s, _arg(r, "fleet", required=True),
                                           _arg(r, "device", required=True)),
         "/api/device", ("fleet", "device")),
    Page("models", "/models", "models.html", lambda s, r: model_q.models_data(s), "/api/models"),
    Page("model", "/model", "model.html",
         lambda s, r: model_q.model_data(s, _arg(r, "name", required=True),
                                         _arg(r, "version", kind=int),
                                         thresholds=r.app.state.thresholds),
         "/api/model", ("name", "version")),
    Page("alerts", "/alerts", "alerts.html", lambda s, r: queries.alerts_data(s), "/api/alerts"),
    Page("window", "/window", "window.html",
         lambda s, r: queries.window_data(s, _arg(r, "id", kind=int, required=True)),
         "/api/window", ("id",)),
    Page("rollouts", "/rollouts", "rollouts.html", lambda s, r: queries.rollouts_data(s),
         "/api/rollouts"),
    # a path parameter: the JSON twin's URL is built from the request's (see Dashboard.html)
    Page("rollout", "/rollouts/{id}", "rollout.html",
         lambda s, r: queries.rollout_data(s, r.path_params["id"]), "/api/rollouts/{id}",
         nav="rollouts"),
]


def _status(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, NotFoundError):
        return 404, str(exc)
    if isinstance(exc, UsageError):
        return 400, str(exc)
    if isinstance(exc, StoreError):
        return 503, str(exc)
    if isinstance(exc, HTTPException):
        return exc.status_code, str(exc.detail)
    return 500, "internal error (see the dashboard's log)"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)

    def link(path: str, **params: Any) -> str:
        clean = {k: v for k, v in params.items() if v is not None}
        return path + ("?" + urlencode(clean) if clean else "")

    def num(value: Any, digits: int = 3) -> str:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "–"
        if isinstance(value, float):
            return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"
        return str(value)

    def pct(value: Any) -> str:
        return "–" if value is None else f"{100 * float(value):.1f}%"

    def heat(value: Any, alert_at: Any) -> str:
        if value is None or not alert_at:
            return "hna"
        ratio = float(value) / float(alert_at)
        return "h" + str(sum(ratio >= x for x in (0.25, 0.5, 0.75, 1.0, 2.0)))

    def rollout_link(deployment_id: str) -> str:
        return "/rollouts/" + quote(str(deployment_id), safe="")

    env.globals.update(link=link, rollout_link=rollout_link, NAV=NAV, UPLOT=UPLOT, POLL_MS=POLL_MS,
                       SERVER_ROWS=SERVER_ROWS, version=__version__)
    env.filters.update(num=num, pct=pct, heat=heat)
    return env


class Dashboard:
    """The routes' state: the store (read-only) and the templates."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.env = _environment()

    def html_error(self, status: int, message: str, active: str = "") -> HTMLResponse:
        body = self.env.get_template("error.html").render(status=status, message=message,
                                                          active=active)
        return HTMLResponse(body, status_code=status)

    def html(self, page: Page) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            try:
                data = page.data(self.store, request)
            except EdgeMLError as exc:
                return self.html_error(*_status(exc), active=page.nav or page.name)
            api = page.api.format(**{k: quote(str(v), safe="") for k, v in
                                     request.path_params.items()})
            api += "?" + request.url.query if request.url.query else ""
            body = self.env.get_template(page.template).render(
                data=data, active=page.nav or page.name, api=api,
                request_query=dict(request.query_params))
            return HTMLResponse(body, headers={"link": f'<{api}>; rel="alternate"; '
                                                       'type="application/json"'})
        return endpoint

    def json(self, data: Callable[[Store, Request], dict[str, Any]]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            try:
                return ApiJSON(data(self.store, request), headers={"cache-control": "no-store"})
            except EdgeMLError as exc:
                status, message = _status(exc)
                return Response(error_body(status, message), status_code=status,
                                media_type="application/json")
        return endpoint

    def routes(self) -> list[BaseRoute]:
        def series(s: Store, r: Request) -> dict[str, Any]:
            return device_q.device_series(s, _arg(r, "fleet", required=True),
                                          _arg(r, "device", required=True),
                                          limit=min(_arg(r, "limit", kind=int) or 360, 5000))

        def histogram(s: Store, r: Request) -> dict[str, Any]:
            return device_q.feature_histogram(s, _arg(r, "fleet", required=True),
                                              _arg(r, "device", required=True),
                                              _arg(r, "feature", required=True))

        doc = openapi(__version__)
        routes: list[BaseRoute] = []
        for page in PAGES:
            routes.append(Route(page.path, self.html(page), methods=["GET"], name=page.name))
            routes.append(Route(page.api, self.json(page.data), methods=["GET"],
                                name=f"api_{page.name}"))
        routes += [
            Route("/api/device/series", self.json(series), methods=["GET"]),
            Route("/api/device/histogram", self.json(histogram), methods=["GET"]),
            Route("/api/openapi.json", self.json(lambda s, r: doc), methods=["GET"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        return routes


def create_app(source: Store | Any | str | None = None, token: str | None = None, *,
               thresholds: Thresholds | None = None, cache_s: float = 2.0,
               extra_routes: list[BaseRoute] | None = None) -> Guard:
    """The dashboard as an ASGI app over ``source`` (URL, engine or store); see the module doc.

    ``token``: when set, every request needs it (see :mod:`.security`). ``thresholds``:
    what "drifting" means (default: the packaged file). ``cache_s``: the fleet page's data
    is shared for that long (0: computed on every request). Its links are absolute
    (``/api/...``, ``/static/...``): serve it at the root of its own port, e.g. with
    :class:`~edgeml.fleet.dashboard.server.DashboardServer` in a thread beside a monitor.
    ``extra_routes``: served first, behind the same token (the monitor's ``/metrics``,
    see :mod:`.mount`).
    """
    store = readonly_store(source)
    dash = Dashboard(store)

    async def not_found(request: Request, exc: Exception) -> Response:
        status, message = _status(exc)
        if request.url.path.startswith("/api/"):
            return Response(error_body(status, message), status_code=status,
                            media_type="application/json")
        return dash.html_error(status, message)

    app = Starlette(routes=[*(extra_routes or []), *dash.routes()],
                    exception_handlers={HTTPException: not_found, Exception: not_found})
    app.state.store = store
    app.state.thresholds = thresholds or load_thresholds()
    app.state.snapshot = Snapshot(cache_s)
    return Guard(app, token)
