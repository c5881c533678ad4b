"""The bundle format: manifest schema, reading, verifying, signature check.

``edgeml.package`` writes bundles; ``edgeml.runtime`` and ``edgeml.fleet`` read them.
Device-safe: standard library, numpy and onnxruntime only (onnxruntime is imported only
when a model is loaded, e.g. by :func:`verify_bundle`).

Public API::

    from edgeml.bundle import Manifest, open_bundle, verify_bundle
"""

from __future__ import annotations

from edgeml.bundle.feeds import rows_to_columns, to_feeds
from edgeml.bundle.manifest import (
    InputSpec,
    Manifest,
    Metrics,
    OnnxInfo,
    OutputSpec,
    TargetInfo,
)
from edgeml.bundle.reader import Bundle, open_bundle
from edgeml.bundle.verify import VerifyReport, verify_bundle

__all__ = [
    "Bundle",
    "InputSpec",
    "Manifest",
    "Metrics",
    "OnnxInfo",
    "OutputSpec",
    "TargetInfo",
    "VerifyReport",
    "open_bundle",
    "rows_to_columns",
    "to_feeds",
    "verify_bundle",
]
