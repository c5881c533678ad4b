"""Renaming graph inputs and outputs after conversion, subgraphs included."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgeml.errors import ConversionError


def rename_outputs(model: Any, names: Sequence[str]) -> None:
    graph = model.graph
    if len(graph.output) != len(names):
        got = [o.name for o in graph.output]
        raise ConversionError(f"expected outputs {list(names)}, the converter produced {got}")
    mapping = {o.name: new for o, new in zip(graph.output, names, strict=True) if o.name != new}
    if not mapping:
        return
    taken = {n for node in graph.node for n in (*node.input, *node.output)} - set(mapping)
    clash = taken & set(mapping.values())
    if clash:
        raise ConversionError(f"cannot rename outputs: {sorted(clash)} already used in the graph")
    for node in graph.node:
        for seq in (node.input, node.output):
            for i, name in enumerate(seq):
                if name in mapping:
                    seq[i] = mapping[name]
    for o in graph.output:
        o.name = mapping.get(o.name, o.name)


def _rename_in_graph(graph: Any, mapping: dict[str, str]) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]
        for attr in node.attribute:  # subgraphs (Scan, Loop, If) may capture outer names
            if attr.HasField("g"):
                _rename_in_graph(attr.g, mapping)
            for sub in attr.graphs:
                _rename_in_graph(sub, mapping)


def restore_input_names(model: Any, names: Sequence[str]) -> None:
    """skl2onnx sanitizes input names (``sepal length (cm)`` -> ``sepal_length__cm_``);
    ONNX allows any name, so devices get the raw feature names back."""
    graph = model.graph
    if len(graph.input) != len(names):
        return  # the caller's check reports the mismatch
    mapping = {v.name: new for v, new in zip(graph.input, names, strict=True) if v.name != new}
    if not mapping:
        return
    taken = {n for node in graph.node for n in node.output} | {i.name for i in graph.initializer}
    clash = taken & set(mapping.values())
    if clash:
        raise ConversionError(f"cannot restore input names: {sorted(clash)} already used in the graph")
    _rename_in_graph(graph, mapping)
    for v in graph.input:
        v.name = mapping.get(v.name, v.name)
