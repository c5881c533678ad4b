"""edgeml: train on a workstation, ship ONNX bundles to edge devices, serve and monitor them.

The package has two columns under one roof:

- host: ``edgeml.train`` -> ``edgeml.convert`` -> ``edgeml.package`` (needs ``edgeml[host]``)
- device: ``edgeml.bundle`` -> ``edgeml.runtime`` (standard library, numpy, onnxruntime, paho-mqtt)

Importing ``edgeml`` itself loads nothing heavy.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
