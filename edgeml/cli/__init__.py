"""The ``edgeml`` command line: a thin shell over the library, split by layer."""

from __future__ import annotations

from edgeml.cli import bundle, explore, mqtt, package, runtime, train  # noqa: F401  (registers commands)
from edgeml.cli.base import cli, main

__all__ = ["cli", "main"]
