"""CLI commands: `edgeml retrain` (filled in by its owner)."""

from __future__ import annotations
