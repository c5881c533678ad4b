"""CLI commands: `edgeml deploy` (filled in by its owner)."""

from __future__ import annotations
