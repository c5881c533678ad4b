"""One translation of a pydantic ``ValidationError`` into edgeml's "file: field: message".

Recipes, device profiles and ``model.json`` are pydantic models (host side); each loader
calls :func:`first_error` and raises its own error class with the file and field named.
"""

from __future__ import annotations

from typing import Any

__all__ = ["field_path", "first_error"]


def field_path(loc: tuple[Any, ...]) -> str:
    """``("candidates", 1, "family")`` -> ``"candidates[1].family"``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def first_error(exc: Any) -> tuple[str, str | None]:
    """``(message, field)`` of the first error of a pydantic ``ValidationError``."""
    err = exc.errors()[0]
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return msg, field_path(tuple(err["loc"])) or None
