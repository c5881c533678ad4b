"""The one exception hierarchy of edgeml.

Every error that a user can cause or meet derives from :class:`EdgeMLError`.
The CLI translates them, in one place (``edgeml.cli.main``), into a one-line
message on stderr and the exit code the class carries; no traceback is shown.
Dependency errors (scikit-learn, skl2onnx, onnxruntime, paho-mqtt...) are
mapped to these at the boundary with ``raise ... from exc``.

::

    EdgeMLError                      exit 1
    ├── UsageError                   exit 2   bad arguments or references
    │   ├── RecipeError              exit 2   a recipe file is invalid (names file and field)
    │   ├── ProfileError             exit 2   a device profile is invalid (names file and field)
    │   └── NotFoundError            exit 2   unknown model ref, target, bundle or file
    ├── DataError                    exit 2   data missing, empty or of the wrong kind
    ├── InputError                   exit 2   a prediction request does not match the schema
    ├── GateError                    exit 1   quality gates not met; nothing registered
    ├── RegistryError                exit 1   the registry is unreadable, or a model.json invalid (names file, field)
    ├── ConversionError              exit 1   a pipeline cannot be converted to ONNX
    │   ├── UnsupportedStepError     exit 1   no converter for a step (lists the supported)
    │   └── ParityError              exit 1   ONNX and scikit-learn disagree (names rows)
    ├── PackagingError               exit 1   a model does not fit a target (opset, memory, quality)
    ├── BundleError                  exit 1   a bundle is malformed or fails verification
    │   └── SignatureError           exit 1   signature missing, malformed or wrong
    ├── RuntimeServiceError          exit 1   serving or telemetry cannot start
    └── StoreError                   exit 2   the fleet store (--db URL) is unreachable or
                                              at another schema revision (says the fix)

This module imports only the standard library: it is device-safe.
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "ConversionError",
    "DataError",
    "EdgeMLError",
    "GateError",
    "InputError",
    "NotFoundError",
    "PackagingError",
    "ParityError",
    "ProfileError",
    "RecipeError",
    "RegistryError",
    "RuntimeServiceError",
    "SignatureError",
    "StoreError",
    "UnsupportedStepError",
    "UsageError",
]


class EdgeMLError(Exception):
    """Base of every edgeml error. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1


class UsageError(EdgeMLError):
    """The command was called wrongly, or refers to something that is not valid."""

    exit_code = 2


class RecipeError(UsageError):
    """A recipe file is invalid. The message names the file and the field."""

    def __init__(self, path: object, message: str, field: str | None = None) -> None:
        self.path = str(path)
        self.field = field
        where = f"{self.path}: {field}: " if field else f"{self.path}: "
        super().__init__(where + message)


class ProfileError(RecipeError):
    """A device profile file is invalid. The message names the file and the field."""


class NotFoundError(UsageError):
    """A model reference, device target, bundle or file does not exist."""


class DataError(EdgeMLError):
    """Input data is missing, empty, or does not have the declared shape or kinds."""

    exit_code = 2


class InputError(EdgeMLError):
    """A prediction request does not match the model's input schema."""

    exit_code = 2


class GateError(EdgeMLError):
    """A model did not meet its recipe's quality gates; nothing was registered."""


class RegistryError(EdgeMLError):
    """The model registry is unreadable, inconsistent or cannot be written."""


class ConversionError(EdgeMLError):
    """A fitted pipeline cannot be converted to ONNX."""


class UnsupportedStepError(ConversionError):
    """No converter is registered for a pipeline step; the message lists the supported ones."""


class ParityError(ConversionError):
    """ONNX and scikit-learn outputs differ beyond tolerance; the message names the rows."""


class PackagingError(EdgeMLError):
    """A model cannot be packaged for a target (opset, IR version, memory, quantization)."""


class BundleError(EdgeMLError):
    """A bundle is malformed or fails verification (checksums, schema, self-test)."""


class SignatureError(BundleError):
    """A bundle signature is missing, malformed, or does not match the public key."""


class RuntimeServiceError(EdgeMLError):
    """The on-device service (HTTP, MQTT, spool) cannot start or continue."""


class StoreError(EdgeMLError):
    """The fleet store named by ``--db`` cannot be used (unreachable, wrong schema revision)."""

    exit_code = 2
