"""The ``edgeml`` command line: a thin shell over the library, split by layer."""

from __future__ import annotations

from edgeml.cli import (  # noqa: F401  (registers commands)
    agent,
    bundle,
    dashboard,
    deploy,
    evaluate,
    explore,
    flash,
    fleet,
    monitor,
    mqtt,
    package,
    retrain,
    runtime,
    serve,
    simulate,
    train,
)
from edgeml.cli.base import cli, main

__all__ = ["cli", "main"]
