"""The fleet dashboard (host side): ``edgeml dashboard``, a read-only web view of the store.

- :mod:`.app`: :func:`create_app` (Starlette): pages and their JSON twins under ``/api/``.
- :mod:`.queries`, :mod:`.device`, :mod:`.model`: one data function per page, built on
  :mod:`edgeml.fleet.views` (the ``edgeml fleet`` CLI's queries).
- :mod:`.security`: token check, bind check, CSP and other headers.
- :mod:`.store`: read-only engines (SQLite ``mode=ro``, PostgreSQL read-only sessions).
- :mod:`.openapi`: the API's OpenAPI document, as data.
- :mod:`.server`: serve with uvicorn, in the foreground or in a thread.
- ``static/``: the pages' scripts and stylesheet, and uPlot (vendored, MIT, version in
  its file name) so the dashboard works without a network; ``templates/``: Jinja2.
"""

from __future__ import annotations

from edgeml.fleet.dashboard.app import create_app
from edgeml.fleet.dashboard.server import (
    DashboardServer,
    DashboardSettings,
    serve,
    start_dashboard,
)

__all__ = ["DashboardServer", "DashboardSettings", "create_app", "serve", "start_dashboard"]
