"""IsolationForest -> ONE TreeEnsembleRegressor node and four element-wise nodes.

skl2onnx converts each tree separately (a Gather, two tree ensembles and about 25 nodes
of path-length arithmetic per tree: ~2,800 nodes for 100 trees). But a forest's score is
an average of path lengths, which one tree ensemble computes directly:

* each leaf's value is its path length, ``depth(leaf) + c(n_samples(leaf))`` (depth from
  the root = 0, ``c`` the average path length of an unsuccessful BST search,
  scikit-learn's ``_average_path_length``), divided by ``n_estimators * c(max_samples)``
  and negated, so the ensemble (aggregate SUM) gives ``-mean_path / c(max_samples)``;
* ``score_samples = -2 ** that``, ``decision_function = score_samples - offset_`` (the
  ``scores`` output) and ``predict = where(decision < 0, -1, 1)`` (the ``label`` output,
  int64 [N, 1]), exactly the outputs and shapes of skl2onnx's converter (its
  ``score_samples`` option adds a third output, as there).

Each tree sees the columns ``estimators_features_[t]`` (``max_features < 1``): its
feature ids are mapped through them, so no Gather is needed.

Float32: scikit-learn casts X to float32 and compares ``x <= threshold`` with a float64
threshold. The ONNX threshold is the largest float32 <= the float64 one, which sends every
float32 ``x`` the same way. A missing value (NaN) follows ``missing_go_to_left`` as in
scikit-learn.

:func:`register_isolation_forest` installs this converter in skl2onnx (for the process;
it replaces skl2onnx's own IsolationForest converter). edgeml.convert calls it on import.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["forest_attributes", "register_isolation_forest"]

_LEAF = -1  # sklearn.tree._tree.TREE_LEAF


def _average_path_length(n: np.ndarray) -> np.ndarray:
    from sklearn.ensemble._iforest import _average_path_length as c

    return np.asarray(c(np.asarray(n, dtype=np.float64)), dtype=np.float64)


def _float32_at_most(values: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 value."""
    out = values.astype(np.float32)
    up = out.astype(np.float64) > values
    out[up] = np.nextafter(out[up], np.float32(-np.inf))
    return out


def _depths(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    depth = np.zeros(len(left), dtype=np.int64)
    for node in range(len(left)):  # children always have larger ids than their parent
        if left[node] != _LEAF:
            depth[left[node]] = depth[right[node]] = depth[node] + 1
    return depth


def forest_attributes(forest: Any) -> dict[str, Any]:
    """TreeEnsembleRegressor attributes giving ``-mean_path_length / c(max_samples)``."""
    n_trees = len(forest.estimators_)
    denominator = n_trees * float(_average_path_length(np.array([forest.max_samples_]))[0])
    scale = -1.0 / denominator if denominator else 0.0
    attrs: dict[str, list[Any]] = {k: [] for k in (
        "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes", "nodes_values",
        "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true",
        "target_treeids", "target_nodeids", "target_ids", "target_weights",
    )}
    for t, (est, features) in enumerate(zip(forest.estimators_, forest.estimators_features_,
                                            strict=True)):
        tree = est.tree_
        left, right = tree.children_left, tree.children_right
        n = len(left)
        leaf = left == _LEAF
        columns = np.asarray(features, dtype=np.int64)
        feature = np.where(leaf, 0, columns[np.where(leaf, 0, tree.feature)])
        thresholds = np.where(leaf, 0.0, _float32_at_most(np.asarray(tree.threshold)))
        missing_left = getattr(tree, "missing_go_to_left", np.zeros(n, dtype=np.uint8))
        attrs["nodes_treeids"] += [t] * n
        attrs["nodes_nodeids"] += list(range(n))
        attrs["nodes_featureids"] += feature.tolist()
        attrs["nodes_modes"] += ["LEAF" if is_leaf else "BRANCH_LEQ" for is_leaf in leaf]
        attrs["nodes_values"] += thresholds.tolist()
        attrs["nodes_truenodeids"] += np.where(leaf, 0, left).tolist()
        attrs["nodes_falsenodeids"] += np.where(leaf, 0, right).tolist()
        attrs["nodes_missing_value_tracks_true"] += np.where(leaf, 0, missing_left).astype(int).tolist()
        leaves = np.flatnonzero(leaf)
        path = _depths(left, right)[leaves] + _average_path_length(tree.n_node_samples[leaves])
        attrs["target_treeids"] += [t] * len(leaves)
        attrs["target_nodeids"] += leaves.tolist()
        attrs["target_ids"] += [0] * len(leaves)
        attrs["target_weights"] += (path * scale).tolist()
    out: dict[str, Any] = dict(attrs)
    out.update(n_targets=1, aggregate_function="SUM", post_transform="NONE")
    if not denominator:  # max_samples == 1: scikit-learn sets the normalised depth to 1
        out["base_values"] = [-1.0]
    return out


def _convert(scope: Any, operator: Any, container: Any) -> None:
    from onnx import TensorProto

    op = operator.raw_operator
    options = container.get_options(op, dict(score_samples=None))
    x = operator.inputs[0].full_name
    input_type = operator.inputs[0].type.__class__.__name__
    if input_type == "DoubleTensorType":
        raise NotImplementedError("edgeml's IsolationForest converter takes float32 inputs, not double")
    if input_type != "FloatTensorType":  # int64 / bool
        cast = scope.get_unique_variable_name("iforest_input")
        container.add_node("Cast", [x], cast, to=TensorProto.FLOAT,
                           name=scope.get_unique_operator_name("IForestCast"))
        x = cast

    def const(label: str, value: Any, dtype: int) -> str:
        name = scope.get_unique_variable_name(label)
        container.add_initializer(name, dtype, [], [value])
        return name

    def node(op_type: str, inputs: list[str], output: str | None = None, **kw: Any) -> str:
        out = output or scope.get_unique_variable_name(op_type.lower())
        container.add_node(op_type, inputs, out, name=scope.get_unique_operator_name(f"IForest{op_type}"), **kw)
        return out

    exponent = node("TreeEnsembleRegressor", [x], op_domain="ai.onnx.ml", op_version=1,
                    **forest_attributes(op))  # -mean_path / c(max_samples), [N, 1]
    anomaly = node("Pow", [const("two", 2.0, TensorProto.FLOAT), exponent])  # -score_samples
    if options["score_samples"]:
        node("Neg", [anomaly], operator.outputs[2].full_name)
    decision = node("Sub", [const("neg_offset", -float(op.offset_), TensorProto.FLOAT), anomaly],
                    operator.outputs[1].full_name)
    outlier = node("Less", [decision, const("zero", 0.0, TensorProto.FLOAT)])
    node("Where", [outlier, const("minus_one", -1, TensorProto.INT64),
                   const("one", 1, TensorProto.INT64)], operator.outputs[0].full_name)


_DONE: list[bool] = []


def register_isolation_forest() -> None:
    """Make skl2onnx convert IsolationForest with :func:`_convert` (once per process)."""
    if _DONE:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.shape_calculators.isolation_forest import calculate_isolation_forest_output_shapes
    from sklearn.ensemble import IsolationForest

    update_registered_converter(
        IsolationForest, "SklearnIsolationForest", calculate_isolation_forest_output_shapes,
        _convert, overwrite=True, options={"score_samples": [True, False]},
    )
    _DONE.append(True)
