"""The fleet side (host only): a store of what devices report, a monitor that fills it,
and the ``edgeml fleet`` views over it.

- :mod:`edgeml.fleet.db`: the one place where engines and sessions are made.
- :mod:`edgeml.fleet.schema`: the SQLAlchemy 2 models (tables) of the store.
- :mod:`edgeml.fleet.migrate`: Alembic migrations shipped in the package, run in-process.
- :mod:`edgeml.fleet.retention`: hourly roll-up of old metrics windows.
- :mod:`edgeml.fleet.monitor`: ``edgeml monitor`` (MQTT v5 -> SQL, acknowledged after commit).
- :mod:`edgeml.fleet.views`: the rows behind ``edgeml fleet status|devices|device|drift|alerts``.

Nothing here is imported by the device side.
"""

from typing import Any

__all__ = ["Monitor", "MonitorSettings", "Store", "open_store", "upgrade"]

_LAZY = {"Monitor": "edgeml.fleet.monitor", "MonitorSettings": "edgeml.fleet.monitor",
         "Store": "edgeml.fleet.db", "open_store": "edgeml.fleet.db",
         "upgrade": "edgeml.fleet.migrate"}


def __getattr__(name: str) -> Any:
    """``from edgeml.fleet import Monitor``, imported on first use (submodules stay light)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeml.fleet' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
