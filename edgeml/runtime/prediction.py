"""What a prediction returns: :class:`Prediction` (device-safe: standard library and numpy).

One object for the three tasks, decoded lazily from the raw ONNX outputs (the hot path
pays only for what a caller reads; each view is computed once):

- ``labels``: class names (classification) or ``"anomaly"``/``"normal"`` (anomaly);
- ``probabilities``: the ``[rows, classes]`` matrix, columns in ``classes`` order;
- ``values``: regression predictions, ``[rows]``;
- ``scores``: anomaly scores (scikit-learn's ``decision_function``: negative is anomalous);
- ``outputs``: the raw ONNX outputs by name (what the Open Inference Protocol returns).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ANOMALY", "NORMAL", "Decoder", "Prediction"]

ANOMALY = "anomaly"
NORMAL = "normal"


@dataclass(frozen=True)
class Decoder:
    """What a Predictor knows about its outputs, shared by all its predictions."""

    task: str
    names: tuple[str, ...]  # ONNX output names, in run order
    roles: tuple[str, ...]  # label | probabilities | prediction | score, same order
    classes: list[str] | None = None
    label_map: dict[Any, str] = field(default_factory=dict)  # numeric label -> class name

    def index(self, role: str) -> int:
        return self.roles.index(role) if role in self.roles else -1


class Prediction:
    """The result of :meth:`edgeml.runtime.Predictor.predict` for a batch of rows."""

    __slots__ = ("_labels", "_results", "decoder")

    def __init__(self, decoder: Decoder, results: list[np.ndarray]) -> None:
        self.decoder = decoder
        self._results = results
        self._labels: list[str] | None = None

    @property
    def task(self) -> str:
        return self.decoder.task

    @property
    def classes(self) -> list[str] | None:
        return self.decoder.classes

    @property
    def outputs(self) -> dict[str, np.ndarray]:
        return dict(zip(self.decoder.names, self._results, strict=False))

    def _role(self, role: str) -> np.ndarray | None:
        i = self.decoder.index(role)
        return self._results[i] if i >= 0 else None

    @property
    def labels(self) -> list[str] | None:
        if self._labels is None:
            raw = self._role("label")
            if raw is None:
                return None
            flat = raw.reshape(-1)
            if self.decoder.task == "anomaly":
                self._labels = [ANOMALY if v == -1 else NORMAL for v in flat.tolist()]
            elif flat.dtype == object:
                self._labels = flat.tolist()
            else:
                lm = self.decoder.label_map
                self._labels = [lm.get(v) or str(v) for v in flat.tolist()]
        return self._labels

    @property
    def probabilities(self) -> np.ndarray | None:
        return self._role("probabilities")

    @property
    def values(self) -> np.ndarray | None:
        raw = self._role("prediction")
        return None if raw is None else raw.reshape(len(raw), -1)[:, 0]

    @property
    def scores(self) -> np.ndarray | None:
        raw = self._role("score")
        return None if raw is None else raw.reshape(-1)

    def __len__(self) -> int:
        return len(self._results[0]) if self._results else 0

    def __repr__(self) -> str:
        return f"Prediction(task={self.task!r}, rows={len(self)})"

    def probability_dicts(self) -> list[dict[str, float]]:
        """``[{class: p}, ...]`` per row (classification with a probability output)."""
        probs, classes = self.probabilities, self.classes
        if probs is None or classes is None:
            return []
        return [dict(zip(classes, row, strict=False)) for row in probs.tolist()]

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-able dict per row, as ``POST /v1/predict`` returns them.

        classification ``{"label", "probabilities": {class: p}}``, regression
        ``{"prediction"}``, anomaly ``{"label": "anomaly"|"normal", "score"}``.
        """
        task = self.decoder.task
        if task == "regression":
            values = self.values
            return [] if values is None else [{"prediction": v} for v in values.tolist()]
        labels = self.labels or []
        if task == "classification":
            if self.probabilities is None:
                return [{"label": label} for label in labels]
            return [
                {"label": label, "probabilities": probs}
                for label, probs in zip(labels, self.probability_dicts(), strict=False)
            ]
        scores = self.scores
        if scores is None:
            return [{"label": label} for label in labels]
        return [{"label": label, "score": s} for label, s in zip(labels, scores.tolist(), strict=False)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"task", "predictions": rows()}`` plus ``classes`` for classifiers."""
        out: dict[str, Any] = {"task": self.task, "predictions": self.rows()}
        if self.classes is not None:
            out["classes"] = list(self.classes)
        return out
