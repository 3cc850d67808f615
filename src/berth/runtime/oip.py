"""Open Inference Protocol v2 (KServe v2) tensors <-> the inference path's frames and outputs.

Supports the JSON encoding and the binary tensor data extension (``binary_data_size`` and the
``Inference-Header-Content-Length`` header), which tritonclient uses by default.

How a request maps onto a signature: a tabular model takes one tensor per feature, named like the
feature, of shape ``[n]`` or ``[n, 1]``; or a single 2-D tensor ``[n, features]`` in signature
order. A text model takes one BYTES tensor of shape ``[n]`` or ``[n, 1]``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from berth.errors import InvalidInputError, SchemaError
from berth.runtime.envelope import RequestContext, first_unit_id
from berth.runtime.outputs import FROM_OIP, TO_OIP, to_tensor

if TYPE_CHECKING:
    import numpy.typing as npt

    from berth.registry.signature import Signature
    from berth.runtime.codecs import Columns
    from berth.types import Outputs

HEADER_LENGTH = "inference-header-content-length"


@dataclass
class OipEnvelope:
    """An OIP request body parsed as far as it can be without a signature (phase one)."""

    tensors: list[dict[str, Any]]
    binary: memoryview
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: Any = None
    """The ``outputs`` member as sent; checked against the signature in phase two."""

    def context(self, unit_header: str | None) -> RequestContext:
        """The envelope for routing: a unit id from ``parameters.unit_id``, else the header."""
        return RequestContext(
            unit_id=first_unit_id(self.parameters.get("unit_id"), unit_header),
            request_id=self.id,
            parameters=self.parameters,
        )


@dataclass
class OipInputs:
    """Phase two: the tensors decoded against the target version's signature."""

    columns: Columns
    outputs: list[tuple[str, bool]]
    """Requested outputs with whether each wants binary data."""


def decode_envelope(body: bytes, header_length: int | None) -> OipEnvelope:
    head = body if header_length is None else body[:header_length]
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidInputError("request body must be a JSON object with 'inputs'")
    tensors = doc.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise InvalidInputError("'inputs' must be a non-empty list of tensors")
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, dict):
            raise InvalidInputError(f"input {i} must be an object")
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInputError("'parameters' must be an object")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInputError("'id' must be a string")
    binary = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    return OipEnvelope(tensors, binary, request_id, parameters, doc.get("outputs"))


def decode_inputs(envelope: OipEnvelope, signature: Signature) -> OipInputs:
    binary = envelope.binary
    offset = 0
    arrays: dict[str, npt.NDArray[Any]] = {}
    for i, tensor in enumerate(envelope.tensors):
        name, array, used = _tensor(tensor, i, binary[offset:])
        offset += used
        if name in arrays:
            raise InvalidInputError(f"input {name!r} is given twice")
        arrays[name] = array
    if offset != len(binary):
        raise InvalidInputError(
            f"binary data is {len(binary)} bytes but the inputs declare {offset}"
        )
    return OipInputs(
        _frame(arrays, signature), _requested(envelope.outputs, envelope.parameters, signature)
    )


def _tensor(
    tensor: dict[str, Any], i: int, binary: memoryview
) -> tuple[str, npt.NDArray[Any], int]:
    import numpy as np

    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"input {i} needs a 'name'")
    datatype = tensor.get("datatype")
    if datatype not in FROM_OIP:
        raise InvalidInputError(
            f"input {name!r}: unknown datatype {datatype!r}; use one of {', '.join(FROM_OIP)}"
        )
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise InvalidInputError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    count = math.prod(shape)
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or size > len(binary):
            raise InvalidInputError(f"input {name!r}: binary_data_size {size!r} is out of range")
        array = _from_binary(name, datatype, bytes(binary[:size]), count)
        return name, array.reshape(shape), size
    if "data" not in tensor:
        raise InvalidInputError(f"input {name!r} has no 'data'")
    data = tensor["data"]
    flat = _flatten(data) if isinstance(data, list) else [data]
    if len(flat) != count:
        raise InvalidInputError(
            f"input {name!r}: shape {shape} holds {count} values but 'data' has {len(flat)}"
        )
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise InvalidInputError(f"input {name!r}: BYTES data must be strings")
        array = np.array(flat, dtype=object)
    else:
        array = _typed(name, datatype, flat)
    return name, array.reshape(shape), 0


def _flatten(data: list[Any]) -> list[Any]:
    if not any(isinstance(v, list) for v in data):
        return data
    out: list[Any] = []
    for v in data:
        out.extend(_flatten(v) if isinstance(v, list) else [v])
    return out


def _typed(name: str, datatype: str, flat: list[Any]) -> npt.NDArray[Any]:
    import numpy as np

    dtype = np.dtype(FROM_OIP[datatype])
    if dtype.kind == "b":
        if not all(isinstance(v, bool) for v in flat):
            raise InvalidInputError(f"input {name!r}: BOOL data must be true or false")
    elif not all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
        raise InvalidInputError(f"input {name!r}: {datatype} data must be numbers")
    elif dtype.kind in "iu" and not all(isinstance(v, int) for v in flat):
        raise InvalidInputError(f"input {name!r}: {datatype} data must be integers")
    try:
        with np.errstate(over="raise", invalid="raise"):
            array = np.array(flat, dtype=dtype)
    except (OverflowError, FloatingPointError, ValueError) as exc:
        raise InvalidInputError(f"input {name!r}: a value does not fit {datatype}") from exc
    return array


def _from_binary(name: str, datatype: str, raw: bytes, count: int) -> npt.NDArray[Any]:
    import numpy as np

    if datatype == "BYTES":
        items, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise InvalidInputError(f"input {name!r}: truncated BYTES element")
            (length,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if pos + length > len(raw):
                raise InvalidInputError(f"input {name!r}: truncated BYTES element")
            try:
                items.append(raw[pos : pos + length].decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise InvalidInputError(f"input {name!r}: BYTES element is not UTF-8") from exc
            pos += length
        if len(items) != count:
            raise InvalidInputError(f"input {name!r}: shape holds {count} values, got {len(items)}")
        return np.array(items, dtype=object)
    dtype = np.dtype(FROM_OIP[datatype]).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise InvalidInputError(
            f"input {name!r}: binary data is {len(raw)} bytes, shape needs {count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))


def _frame(arrays: dict[str, npt.NDArray[Any]], signature: Signature) -> Columns:
    if len(arrays) == 1:
        ((name, array),) = arrays.items()
        if signature.kind == "text" or name not in signature.names:
            width = array.shape[1] if array.ndim == 2 else 1
            if array.ndim == 2 and width == len(signature.inputs) and width > 1:
                return {f: array[:, j].copy() for j, f in enumerate(signature.names)}
            if signature.kind == "text" or len(signature.inputs) == 1:
                return {signature.names[0]: _column(name, array)}
    columns = {name: _column(name, array) for name, array in arrays.items()}
    lengths = {len(c) for c in columns.values()}
    if len(lengths) > 1:
        raise InvalidInputError(f"inputs have different batch sizes: {sorted(lengths)}")
    return columns


def _column(name: str, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    if array.ndim == 1:
        return array
    if array.ndim == 2 and array.shape[1] == 1:
        return array[:, 0]
    raise SchemaError(
        f"input {name!r} has shape {list(array.shape)}; a feature takes [n] or [n, 1]",
        feature=name,
    )


def _requested(
    value: Any, parameters: dict[str, Any], signature: Signature
) -> list[tuple[str, bool]]:
    """The outputs to send and whether each goes as binary data. Checked before predicting, so
    a request for an unknown output is refused without a prediction being made and recorded."""
    every = parameters.get("binary_data_output", False) is True
    declared = [o.name for o in signature.outputs]
    if value is None:
        return [(name, every) for name in declared]
    if not isinstance(value, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in value
    ):
        raise InvalidInputError("'outputs' must be a list of objects with a 'name'")
    wanted = []
    for o in value:
        if declared and o["name"] not in declared:
            raise InvalidInputError(f"unknown output {o['name']!r}; outputs: {', '.join(declared)}")
        params = o.get("parameters")
        binary = params.get("binary_data", every) if isinstance(params, dict) else every
        wanted.append((o["name"], binary is True))
    return wanted


def encode(
    *,
    model: str,
    version: int,
    request_id: str,
    outputs: Outputs,
    signature: Signature,
    requested: list[tuple[str, bool]],
    prediction_ids: list[str],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it."""
    wanted = requested or [(name, False) for name in outputs]
    declared = {o.name for o in signature.outputs} | set(outputs)
    tensors, blobs = [], []
    for name, binary in wanted:
        if name not in outputs:
            raise InvalidInputError(
                f"unknown output {name!r}; outputs: {', '.join(sorted(declared))}"
            )
        tensor, blob = to_tensor(name, outputs[name], binary)
        tensors.append(tensor)
        if blob is not None:
            blobs.append(blob)
    doc = {
        "model_name": model,
        "model_version": str(version),
        "id": request_id,
        "parameters": {"prediction_ids": prediction_ids},
        "outputs": tensors,
    }
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def metadata(name: str, versions: list[str], signature: Signature, platform: str) -> dict[str, Any]:
    return {
        "name": name,
        "versions": versions,
        "platform": platform,
        "inputs": [
            {"name": f.name, "datatype": TO_OIP[f.dtype], "shape": [-1]} for f in signature.inputs
        ],
        "outputs": [
            {"name": o.name, "datatype": TO_OIP[o.dtype], "shape": list(o.shape)}
            for o in signature.outputs
        ],
    }
