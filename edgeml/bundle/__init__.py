"""The bundle format: manifest schema, reading, verifying, signature check.

``edgeml.package`` writes bundles; ``edgeml.runtime`` and ``edgeml.fleet`` read them.
Device-safe: standard library, numpy and onnxruntime only.
"""

from __future__ import annotations

from edgeml.bundle.feeds import rows_to_columns, to_feeds
from edgeml.bundle.manifest import InputSpec, Manifest, OnnxInfo, OutputSpec, TargetInfo
from edgeml.bundle.reader import Bundle, open_bundle

__all__ = [
    "Bundle",
    "InputSpec",
    "Manifest",
    "OnnxInfo",
    "OutputSpec",
    "TargetInfo",
    "open_bundle",
    "rows_to_columns",
    "to_feeds",
]
