"""The on-device runtime: Predictor, HTTP server (OIP v2), MQTT telemetry, store-and-forward.

Public API::

    from edgeml.runtime import Predictor, Prediction, ServeSettings, predict_file, serve

Device-safe: standard library, numpy, onnxruntime, paho-mqtt. Names are imported lazily
(PEP 562 ``__getattr__``): ``from edgeml.runtime import Predictor`` loads numpy and
onnxruntime but not paho-mqtt or the HTTP server, and ``import edgeml.runtime`` alone loads
nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeml.runtime.batch import predict_file
    from edgeml.runtime.prediction import Prediction
    from edgeml.runtime.predictor import OutputTensor, Predictor
    from edgeml.runtime.service import ServiceInfo, serve
    from edgeml.runtime.settings import (
        BrokerSettings,
        HttpSettings,
        ServeSettings,
        TelemetrySettings,
    )

__all__ = [
    "BrokerSettings",
    "HttpSettings",
    "OutputTensor",
    "Prediction",
    "Predictor",
    "ServeSettings",
    "ServiceInfo",
    "TelemetrySettings",
    "predict_file",
    "serve",
]

# public name -> module that defines it
_SOURCES = {
    "BrokerSettings": "edgeml.runtime.settings",
    "HttpSettings": "edgeml.runtime.settings",
    "ServeSettings": "edgeml.runtime.settings",
    "TelemetrySettings": "edgeml.runtime.settings",
    "OutputTensor": "edgeml.runtime.predictor",
    "Prediction": "edgeml.runtime.prediction",
    "Predictor": "edgeml.runtime.predictor",
    "ServiceInfo": "edgeml.runtime.service",
    "predict_file": "edgeml.runtime.batch",
    "serve": "edgeml.runtime.service",
}


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
