"""The quantization vocabulary, defined once (``--quantize``, profiles' ``quantization.policy``).

- ``auto``: int8 only where it pays (MatMul/Gemm weights are most of the parameters: MLPs, not
  trees or linear models), the int8 model is smaller, its holdout metric is within the profile's
  ``max_metric_drop`` points and the target runs opset 11; otherwise float, with the reason.
- ``int8``: always int8; refused (PackagingError) beyond the tolerance or the target's opset.
- ``none``: always float.

Standard library only, so the CLI can offer the choices without importing the converters.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["POLICIES", "QuantizePolicy"]

QuantizePolicy = Literal["auto", "int8", "none"]
POLICIES: tuple[str, ...] = get_args(QuantizePolicy)
