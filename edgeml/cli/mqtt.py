"""CLI commands of the mqtt layer."""

from __future__ import annotations

import click  # noqa: F401

from edgeml.cli.base import cli  # noqa: F401
