"""CLI commands: `edgeml flash` (filled in by its owner)."""

from __future__ import annotations
