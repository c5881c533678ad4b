"""SGDClassifier(loss="modified_huber"): labels as scikit-learn gives them.

skl2onnx's converter computes modified-Huber probabilities exactly (``(clip(d, -1, 1) + 1) / 2``
per class, normalised, uniform when all are 0) but takes the label as the argmax of those
probabilities. With more than two classes several probabilities clip to the same value, and
the argmax then picks the first of them, where scikit-learn's ``predict`` takes the argmax of
the decision function ``d`` (about 1 row in 10 differs on a 3-class problem). This converter
keeps skl2onnx's probabilities and labels the row by ``argmax(d)``; every other loss and the
binary case (where both argmaxes agree) go to skl2onnx's converter unchanged.

:func:`register_sgd_classifier` installs it in skl2onnx for the process (same options).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["register_sgd_classifier"]


def _convert(scope: Any, operator: Any, container: Any) -> None:
    from onnx import TensorProto
    from skl2onnx.common.data_types import guess_proto_type
    from skl2onnx.operator_converters import sgd_classifier as sk

    op = operator.raw_operator
    options = container.get_options(op, dict(raw_scores=False))
    if op.loss != "modified_huber" or len(op.classes_) <= 2 or options["raw_scores"]:
        sk.convert_sklearn_sgd_classifier(scope, operator, container)
        return
    proto = guess_proto_type(operator.inputs[0].type)
    if proto != TensorProto.DOUBLE:
        proto = TensorProto.FLOAT
    scores = sk._decision_function(scope, operator, container, op, proto)
    # writes the probabilities output itself
    sk._predict_proba_modified_huber(scope, operator, container, scores, len(op.classes_), proto)

    classes = np.asarray(op.classes_)
    if np.issubdtype(classes.dtype, np.number) or classes.dtype == np.bool_:
        values: Any = classes.astype(np.int64)
        class_type = TensorProto.INT64
    else:
        values = np.array([str(c).encode("utf-8") for c in classes])
        class_type = TensorProto.STRING
    classes_name = scope.get_unique_variable_name("classes")
    container.add_initializer(classes_name, class_type, values.shape, values)
    argmax = scope.get_unique_variable_name("argmax_decision")
    label = scope.get_unique_variable_name("label")
    shape = scope.get_unique_variable_name("label_shape")
    container.add_node("ArgMax", [scores], argmax, axis=1, keepdims=1,
                       name=scope.get_unique_operator_name("SGDArgMax"))
    container.add_node("ArrayFeatureExtractor", [classes_name, argmax], label, op_domain="ai.onnx.ml",
                       name=scope.get_unique_operator_name("SGDLabel"))
    container.add_initializer(shape, TensorProto.INT64, [1], [-1])
    container.add_node("Reshape", [label, shape], operator.outputs[0].full_name,
                       name=scope.get_unique_operator_name("SGDLabelReshape"))


_DONE: list[bool] = []


def register_sgd_classifier() -> None:
    """Make skl2onnx convert SGDClassifier with :func:`_convert` (once per process)."""
    if _DONE:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.shape_calculators.linear_classifier import (
        calculate_linear_classifier_output_shapes,
    )
    from sklearn.linear_model import SGDClassifier

    update_registered_converter(
        SGDClassifier, "SklearnSGDClassifier", calculate_linear_classifier_output_shapes, _convert,
        overwrite=True,
        options={"zipmap": [True, False, "columns"], "nocl": [True, False],
                 "output_class_labels": [False, True], "raw_scores": [True, False]},
    )
    _DONE.append(True)
