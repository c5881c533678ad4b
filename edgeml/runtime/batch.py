"""Batch prediction from a file: what ``edgeml predict`` does (device-safe: stdlib, numpy, ORT).

Input files hold rows of raw features: JSON Lines (one object per line), a JSON list of
objects, or ``{"instances": [...]}``; ``-`` reads standard input. Errors name the file and
line (or row) at fault.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from edgeml.errors import DataError, InputError, NotFoundError
from edgeml.runtime.predictor import Predictor

__all__ = ["predict_file", "read_rows"]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (use null for a missing value)")


def read_rows(source: str | Path) -> list[dict[str, Any]]:
    """Rows from a JSONL file, a JSON list, ``{"instances": [...]}``, or ``-`` (stdin)."""
    name = "<stdin>" if str(source) == "-" else str(source)
    if str(source) == "-":
        text = sys.stdin.read()
    else:
        path = Path(source)
        if not path.is_file():
            raise NotFoundError(f"input file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{name}: not UTF-8 text") from exc
    stripped = text.lstrip()
    if not stripped:
        raise DataError(f"{name}: no rows (the input is empty)")
    rows: Any
    if stripped[0] == "[" or (stripped[0] == "{" and _single_document(stripped)):
        try:
            rows = json.loads(stripped, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise DataError(f"{name}: not valid JSON: {exc}") from exc
        if isinstance(rows, dict):
            rows = rows.get("instances", [rows])
        if not isinstance(rows, list):
            raise DataError(f'{name}: expected a list of rows or {{"instances": [...]}}')
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line, parse_constant=_reject_constant))
            except (ValueError, RecursionError) as exc:
                raise DataError(f"{name} line {number}: not valid JSON: {exc}") from exc
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{name} row {i}: expected an object of feature values, "
                            f"got {type(row).__name__}")
    if not rows:
        raise DataError(f"{name}: no rows")
    return rows


def _single_document(text: str) -> bool:
    """True when ``text`` is one JSON value (a JSON object file rather than JSON Lines)."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def predict_file(
    bundle: str | Path,
    source: str | Path,
    *,
    public_key: Path | None = None,
    batch_size: int = 1024,
) -> dict[str, Any]:
    """Predict every row of ``source`` with ``bundle``: ``{"model": {...}, "predictions": [...]}``.

    Each prediction is what ``POST /v1/predict`` returns for the row.
    """
    predictor = Predictor(bundle, public_key=public_key)
    rows = read_rows(source)
    out: list[dict[str, Any]] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        try:
            out.extend(predictor.predict(chunk).rows())
        except InputError as exc:
            message = str(exc)
            if start and message.startswith(("row ", "feature ")):
                message += f" (rows {start}-{start + len(chunk) - 1} of the input)"
            raise InputError(message) from exc
    info = predictor.info()
    model = {k: info[k] for k in ("name", "version", "target", "task")}
    return {"model": model, "classes": predictor.classes, "predictions": out}
