"""Serving the dashboard with uvicorn: in the foreground (``edgeml dashboard``) or in a
background thread (:class:`DashboardServer`, for a monitor that serves it beside its own
``--http`` endpoint, for the demo and for tests).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from edgeml.errors import UsageError
from edgeml.fleet.dashboard.security import check_bind, read_token

__all__ = ["DEFAULT_PORT", "DashboardServer", "DashboardSettings", "serve", "start_dashboard"]

DEFAULT_PORT = 8090


@dataclass
class DashboardSettings:
    db: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    token_file: str | None = None

    def resolved_token(self) -> str | None:
        """The token, after checking that the bind is allowed with it (see :func:`check_bind`)."""
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port {self.port} is not a port")
        token = read_token(self.token, self.token_file)
        check_bind(self.host, token)
        return token


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = "127.0.0.1"
    return f"http://{shown}:{port}/"


class DashboardServer:
    """uvicorn in a daemon thread; ``start()`` returns once it listens, ``url`` says where."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.host = host
        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                                     lifespan="off", access_log=False)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="edgeml-dashboard",
                                       daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return url_of(self.host, self.port)

    def start(self, timeout: float = 15.0) -> DashboardServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise UsageError(f"the dashboard could not listen on {self.host}:"
                                 f"{self.config.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def start_dashboard(source: Any, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                    token: str | None = None) -> DashboardServer:
    """The dashboard over ``source`` (URL, engine or store) in a background thread, with the
    bind checked as ``edgeml dashboard`` does; e.g. from a monitor's ``start()``::

        self.dashboard = start_dashboard(settings.db, settings.http_host, port, token)
        ...
        self.dashboard.stop()
    """
    from edgeml.fleet.dashboard.app import create_app

    token = DashboardSettings(host=host, port=port, token=token).resolved_token()
    return DashboardServer(create_app(source, token), host, port).start()


def serve(settings: DashboardSettings) -> None:
    """``edgeml dashboard``: check the bind, open the store read-only, serve until Ctrl-C."""
    import uvicorn

    from edgeml.fleet.dashboard.app import create_app
    from edgeml.fleet.db import redact

    token = settings.resolved_token()
    app = create_app(settings.db, token)
    store = app.app.state.store  # type: ignore[attr-defined]
    print(f"dashboard of {redact(store.url)}: {url_of(settings.host, settings.port)}"
          + ("  (token required: open it once with ?token=TOKEN)" if token else ""), flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning",
                lifespan="off", access_log=False)
