"""Open Inference Protocol tensors <-> feature columns (device-safe: stdlib and numpy).

Inputs: one tensor per raw feature, named like it, shape ``[rows]`` or ``[rows, 1]``,
datatype ``BYTES`` for string features and a numeric type (``FP32``, ``FP64``, ``INT*``...)
for numeric ones; ``data`` flat or nested in row-major order, or binary (Triton's binary
tensor data extension: ``parameters.binary_data_size`` bytes after the JSON header,
little-endian; ``BYTES`` elements as a 4-byte little-endian length then the UTF-8 bytes).

Outputs: the model's outputs (all, or those asked for in ``outputs``), as JSON ``data`` or,
when ``parameters.binary_data`` is true for an output (or ``binary_data_output`` for the
request), as binary after the JSON header. Classifier labels are class names (``BYTES``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeml.bundle.manifest import InputSpec
from edgeml.runtime.prediction import Prediction

__all__ = ["NUMPY_TYPES", "TensorError", "decode_bytes", "encode_bytes", "encode_outputs",
           "parse_inputs"]

NUMPY_TYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "FP16": np.dtype("<f2"),
    "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
}
_MAX_ROWS = 1 << 31


class TensorError(ValueError):
    """A tensor in an inference request is malformed (answered with 400)."""


def decode_bytes(chunk: bytes, name: str) -> list[str]:
    """Length-prefixed BYTES elements -> strings."""
    out: list[str] = []
    pos, end = 0, len(chunk)
    while pos < end:
        if pos + 4 > end:
            raise TensorError(f"input {name!r}: truncated BYTES element length")
        (size,) = struct.unpack_from("<I", chunk, pos)
        pos += 4
        if pos + size > end:
            raise TensorError(f"input {name!r}: BYTES element longer than the binary data")
        try:
            out.append(chunk[pos:pos + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise TensorError(f"input {name!r}: BYTES element is not valid UTF-8") from None
        pos += size
    return out


def encode_bytes(values: Sequence[str]) -> bytes:
    parts: list[bytes] = []
    for v in values:
        raw = v.encode("utf-8")
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _shape(raw: Any, name: str) -> tuple[int, int]:
    """(rows, element count) of a ``[rows]`` or ``[rows, 1]`` shape."""
    if type(raw) is not list or not raw or len(raw) > 2 or \
            any(type(d) is not int or d < 0 or d >= _MAX_ROWS for d in raw):
        raise TensorError(f"input {name!r}: shape must be [rows] or [rows, 1] of non-negative "
                          f"integers, got {str(raw)[:60]}")
    if len(raw) == 2 and raw[1] != 1:
        raise TensorError(f"input {name!r}: shape {raw} has {raw[1]} columns; each feature is "
                          "one column: [rows, 1]")
    return raw[0], raw[0]


def _flatten(data: list[Any], shape: list[int], name: str) -> list[Any]:
    """Row-major data, flat or in its natural nesting ([[v], [v]] for [rows, 1]) -> flat."""
    if len(shape) == 2 and data and type(data[0]) is list:
        if any(type(row) is not list or len(row) != shape[1] for row in data):
            raise TensorError(f"input {name!r}: nested data does not match shape {shape}")
        return [v for row in data for v in row]
    return data


def parse_inputs(
    inputs: Any, specs: Sequence[InputSpec], binary: bytes
) -> tuple[dict[str, Any], int]:
    """Validate the request's ``inputs`` and return feature columns and the row count."""
    if type(inputs) is not list or not inputs:
        raise TensorError('"inputs" must be a non-empty list of tensors '
                          '{"name", "shape", "datatype", "data"}')
    by_name = {s.name: s for s in specs}
    expected = ", ".join(by_name)
    columns: dict[str, Any] = {}
    rows = -1
    offset = 0
    for i, tensor in enumerate(inputs):
        if type(tensor) is not dict:
            raise TensorError(f"inputs[{i}] must be an object with name, shape, datatype, data")
        name = tensor.get("name")
        if type(name) is not str:
            raise TensorError(f"inputs[{i}].name must be a string")
        spec = by_name.get(name)
        if spec is None:
            raise TensorError(f"unknown input {name[:60]!r} (expected: {expected})")
        if name in columns:
            raise TensorError(f"input {name!r} is given twice")
        datatype = tensor.get("datatype")
        if type(datatype) is not str:
            raise TensorError(f"input {name!r}: datatype must be a string like FP32 or BYTES")
        if spec.dtype == "string":
            if datatype != "BYTES":
                raise TensorError(f"input {name!r}: datatype {str(datatype)[:20]} does not match "
                                  "the model (BYTES)")
        elif datatype not in NUMPY_TYPES:
            raise TensorError(f"input {name!r}: datatype {str(datatype)[:20]} does not match the "
                              "model (FP32)")
        n, count = _shape(tensor.get("shape"), name)
        params = tensor.get("parameters")
        if params is not None and type(params) is not dict:
            raise TensorError(f"input {name!r}: parameters must be an object")
        size = params.get("binary_data_size") if params else None
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise TensorError(f"input {name!r}: binary_data_size does not fit the binary data")
            chunk = binary[offset:offset + size]
            offset += size
            values: Any
            if datatype == "BYTES":
                values = decode_bytes(chunk, name)
            else:
                dtype = NUMPY_TYPES[datatype]
                if size != count * dtype.itemsize:
                    raise TensorError(f"input {name!r}: {size} bytes of binary data, expected "
                                      f"{count * dtype.itemsize} for {count} {datatype} values")
                values = np.frombuffer(chunk, dtype=dtype)
        else:
            data = tensor.get("data")
            if type(data) is not list:
                raise TensorError(f"input {name!r}: data must be a list of values")
            values = _flatten(data, tensor["shape"], name)
        if len(values) != count:
            raise TensorError(f"input {name!r}: shape says {count} values, data has {len(values)}")
        if rows < 0:
            rows = n
        elif n != rows:
            raise TensorError(f"input {name!r}: has {n} rows, the other inputs have {rows}")
        columns[name] = values
    missing = [s.name for s in specs if s.name not in columns]
    if missing:
        raise TensorError(f"missing input {missing[0]!r} (expected: {expected})")
    if offset != len(binary):
        raise TensorError("binary data is longer than the tensors' binary_data_size add up to")
    return columns, rows


def _wants_binary(params: dict[str, Any], default: bool) -> bool:
    value = params.get("binary_data", default)
    if type(value) is not bool:
        raise TensorError("parameters.binary_data must be true or false")
    return value


def encode_outputs(
    prediction: Prediction, tensors: Sequence[Any], requested: Any, params: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The response ``outputs`` (JSON part) and the binary blobs that follow it, in order."""
    default = params.get("binary_data_output", False)
    if type(default) is not bool:
        raise TensorError("parameters.binary_data_output must be true or false")
    by_name = {t.name: t for t in tensors}
    chosen: list[tuple[Any, bool]] = []
    if requested is None:
        chosen = [(t, default) for t in tensors]
    else:
        if type(requested) is not list:
            raise TensorError('"outputs" must be a list of {"name"} objects')
        for i, out in enumerate(requested):
            name = out.get("name") if type(out) is dict else None
            if type(name) is not str:
                raise TensorError(f"outputs[{i}].name must be a string")
            if name not in by_name:
                raise TensorError(f"unknown output {name[:60]!r} (outputs: {', '.join(by_name)})")
            out_params = out.get("parameters") or {}
            if type(out_params) is not dict:
                raise TensorError(f"outputs[{i}].parameters must be an object")
            chosen.append((by_name[name], _wants_binary(out_params, default)))
    raw = prediction.outputs
    header: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor, binary in chosen:
        array = raw[tensor.name]
        shape = list(array.shape)
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": shape}
        if tensor.datatype == "BYTES":
            values = prediction.labels if tensor.role == "label" else array.reshape(-1).tolist()
            values = [str(v) for v in values or []]
            if binary:
                blob = encode_bytes(values)
        else:
            dtype = NUMPY_TYPES.get(tensor.datatype)
            if binary and dtype is not None:
                blob = np.ascontiguousarray(array, dtype=dtype).tobytes()
            else:
                binary = False
                values = array.reshape(-1).tolist()
        if binary:
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = values
        header.append(entry)
    return header, blobs
