"""Packaging: a registered model -> a verified, deterministic bundle for one device profile.

Host side. Names are imported lazily so that ``python -m edgeml.package.memprobe`` (run on
the packaging host to measure a model's RAM) loads nothing but numpy and onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "POLICIES",
    "STAGES",
    "DeviceProfile",
    "MemoryFit",
    "PackageResult",
    "check_memory",
    "check_opsets",
    "generate_keypair",
    "list_profiles",
    "load_profile",
    "package",
    "sign_manifest",
]

_WHERE = {
    "DeviceProfile": "profiles",
    "list_profiles": "profiles",
    "load_profile": "profiles",
    "MemoryFit": "fit",
    "check_memory": "fit",
    "check_opsets": "fit",
    "generate_keypair": "keys",
    "sign_manifest": "keys",
    "PackageResult": "builder",
    "package": "builder",
    "POLICIES": "policy",
    "STAGES": "stages",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"edgeml.package.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'edgeml.package' has no attribute {name!r}")
