"""A quiet, single-threaded CPU onnxruntime session: what checks and measurements use."""

from __future__ import annotations

from typing import Any

__all__ = ["cpu_session"]


def cpu_session(model: bytes, *, threads: int = 1) -> Any:
    """An ``onnxruntime.InferenceSession`` on ``model`` with ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
