"""The one way edgeml opens an onnxruntime CPU session: checks, measurements and the Predictor.

Threads: ``threads`` intra-op threads (1 unless a model measured faster with more, see
:class:`~edgeml.bundle.manifest.RuntimeInfo`), sequential execution, one inter-op thread.
Whenever more than one thread is used, spinning is turned off: onnxruntime's worker threads
otherwise busy-wait for work between runs, each holding a core of its own (onnxruntime
sets its pool threads' affinity itself, outside the process's ``taskset`` set), which on a
device steals the cores that concurrent requests need and makes benchmarks look faster than
they are.
"""

from __future__ import annotations

from typing import Any

__all__ = ["bundle_session", "cpu_session", "session_options"]


def session_options(threads: int = 1, inter_op_threads: int = 1) -> Any:
    """``onnxruntime.SessionOptions`` for ``threads`` intra-op threads (0: one per core)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(0, threads)
    opts.inter_op_num_threads = max(0, inter_op_threads)
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads != 1:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if inter_op_threads != 1:
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def cpu_session(model: bytes, *, threads: int = 1, inter_op_threads: int = 1) -> Any:
    """An ``onnxruntime.InferenceSession`` on ``model`` with ``threads`` intra-op threads."""
    import onnxruntime as ort

    return ort.InferenceSession(model, session_options(threads, inter_op_threads),
                                providers=["CPUExecutionProvider"])


def bundle_session(model: bytes, *, threads: int = 1, inter_op_threads: int = 1) -> Any:
    """:func:`cpu_session` for a bundle's ``model.onnx``: onnxruntime's own load errors
    (Fail, InvalidGraph, InvalidProtobuf...) become one :class:`~edgeml.errors.BundleError`
    naming the file, the onnxruntime version and the first line of its message."""
    import onnxruntime as ort

    from edgeml.bundle.manifest import MODEL
    from edgeml.errors import BundleError

    try:
        return cpu_session(model, threads=threads, inter_op_threads=inter_op_threads)
    except Exception as exc:  # onnxruntime's exception classes share no useful base
        text = str(exc).strip().splitlines()
        detail = text[0] if text else type(exc).__name__
        raise BundleError(f"{MODEL}: onnxruntime {ort.__version__} cannot load it: {detail}") from exc
