"""The quantize stage: apply the policy (``auto`` | ``int8`` | ``none``, defined in
:mod:`edgeml.package.policy`) and judge the int8 model on the holdout.

``int8`` is refused and ``auto`` ships float, with the reason, when the target's runtime stops
below the quantizer's opset (:data:`edgeml.convert.quantize.QUANTIZER_MIN_OPSET`: known before
quantizing, so nothing is quantized in vain), or when the holdout metric drops more than the
profile's ``max_metric_drop`` points; ``auto`` also ships float when int8 does not pay
(:func:`edgeml.convert.quantize.decide`) or is not smaller.

The metric is label-based (the quantization comparison runs on labels and predictions):
classification uses the recipe's scoring when it is one of accuracy, balanced_accuracy,
f1/precision/recall macro/weighted, else accuracy; regression uses R² (a drop of 0.01 is one
point); anomaly detection uses F1 on the anomaly class when the holdout has labels, else the
agreement of int8 labels with the float model's labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeml.errors import PackagingError, UsageError
from edgeml.package.policy import POLICIES

__all__ = ["QuantizationOutcome", "apply_policy", "quality_metric"]

_LABEL_SCORINGS = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "precision_macro",
                   "precision_weighted", "recall_macro", "recall_weighted")


@dataclass(frozen=True)
class QuantizationOutcome:
    model: bytes  # what ships
    applied: bool
    policy: str
    reason: str
    max_metric_drop: float
    report: dict[str, Any] = field(default_factory=dict)  # sizes, metric and latency before/after

    def manifest_block(self) -> dict[str, Any]:
        """Deterministic facts only (no latency): the manifest must not change between runs."""
        r = self.report
        block: dict[str, Any] = {"policy": self.policy, "applied": self.applied, "reason": self.reason,
                                 "max_metric_drop": self.max_metric_drop}
        if r:
            block.update({
                "metric": r["metric_name"],
                "metric_float": round(r["metric_before"], 6),
                "metric_int8": round(r["metric_after"], 6),
                "drop_points": round(r["drop_points"], 4),
                "size_float": r["size_before"],
                "size_int8": r["size_after"],
            })
        return block


def quality_metric(meta: dict[str, Any], y: Any, float_labels: Callable[[], Any]) -> tuple[
        str, Callable[[Any, Any], float], Any]:
    """(name, metric(y_true, y_pred), y_true) for the task in model.json ``meta``."""
    from sklearn import metrics as skm

    task = meta["task"]
    if task == "classification":
        scoring = str((meta.get("model") or {}).get("scoring") or "accuracy")
        name = scoring if scoring in _LABEL_SCORINGS else "accuracy"
        if name == "accuracy":
            return name, lambda t, p: float(skm.accuracy_score(t, p)), y
        if name == "balanced_accuracy":
            return name, lambda t, p: float(skm.balanced_accuracy_score(t, p)), y
        kind, average = name.split("_")
        fn = {"f1": skm.f1_score, "precision": skm.precision_score, "recall": skm.recall_score}[kind]
        return name, lambda t, p: float(fn(t, p, average=average, zero_division=0)), y
    if task == "regression":
        return "r2", lambda t, p: float(skm.r2_score(t, np.ravel(p))), y
    if y is not None:
        truth = (np.asarray(y).astype(float) > 0).astype(int)  # 1 = anomaly in the data's labels
        return "f1", lambda t, p: float(skm.f1_score(t, (np.ravel(p) == -1).astype(int), zero_division=0)), truth
    return ("label_agreement",
            lambda t, p: float(np.mean(np.ravel(p).astype(int) == np.ravel(t).astype(int))),
            float_labels())


def _stable_name(quantized: bytes, original: bytes) -> bytes:
    """onnxruntime's quantizer names the graph with a random uuid: keep the original name so that
    repackaging gives the same bytes."""
    import onnx

    q, o = onnx.load_model_from_string(quantized), onnx.load_model_from_string(original)
    if q.graph.name == o.graph.name:
        return quantized
    q.graph.name = o.graph.name
    return bytes(q.SerializeToString())


def _runtime_refusal(max_opset: int, target: str) -> str | None:
    """Why the target cannot run an int8 model, if it cannot."""
    from edgeml.convert.quantize import QUANTIZER_MIN_OPSET

    if max_opset >= QUANTIZER_MIN_OPSET:
        return None
    return (f"the model does not fit {target}: int8 needs ai.onnx opset {QUANTIZER_MIN_OPSET} "
            f"(onnxruntime's quantizer), the target runs up to {max_opset}")


def apply_policy(model: bytes, X: Any, y: Any, meta: dict[str, Any], *, policy: str,
                 max_metric_drop: float, max_opset: int, target: str,
                 float_labels: Callable[[], Any]) -> QuantizationOutcome:
    """Decide, quantize and compare; see the module docstring. ``max_opset`` is the target
    runtime's ai.onnx opset, ``target`` names it in messages (e.g. ``rpi4 (onnxruntime 1.32.0)``)."""
    from edgeml.convert.quantize import compare, decide, quantize_dynamic_int8

    if policy not in POLICIES:
        raise UsageError(f"quantization policy {policy!r} is not one of {', '.join(POLICIES)}")
    if policy == "none":
        return QuantizationOutcome(model, False, policy, "policy none", max_metric_drop)
    refusal = _runtime_refusal(max_opset, target)
    if refusal and policy == "int8":
        raise PackagingError(f"int8 model refused: {refusal}")
    if refusal:
        return QuantizationOutcome(model, False, policy, f"int8 does not fit ({refusal}); shipping float",
                                   max_metric_drop)
    decision = decide(model)
    if policy == "auto" and not decision.quantize:
        return QuantizationOutcome(model, False, policy, decision.reason, max_metric_drop)
    why = decision.reason if policy == "auto" else "policy int8"
    quantized = _stable_name(quantize_dynamic_int8(model), model)
    name, metric, truth = quality_metric(meta, y, float_labels)
    report = compare(model, quantized, X, truth, task=meta["task"], metric=metric, metric_name=name,
                     greater_is_better=True, runs=50).to_dict()
    drop = float(report["drop_points"])
    if policy == "auto" and report["size_after"] >= report["size_before"]:
        reason = (f"int8 is not smaller ({report['size_after']:,} >= {report['size_before']:,} bytes); "
                  "shipping float")
        return QuantizationOutcome(model, False, policy, reason, max_metric_drop, report)
    if drop <= max_metric_drop:
        reason = f"{why}; holdout {name} drop {drop:.2f} points <= {max_metric_drop:g}"
        return QuantizationOutcome(quantized, True, policy, reason, max_metric_drop, report)
    msg = (f"int8 holdout {name} dropped {drop:.2f} points ({report['metric_before']:.4f} -> "
           f"{report['metric_after']:.4f}), more than max_metric_drop {max_metric_drop:g}")
    if policy == "int8":
        raise PackagingError(f"quantized model refused: {msg}. Use --quantize none or auto.")
    return QuantizationOutcome(model, False, policy, msg + "; shipping float", max_metric_drop, report)
