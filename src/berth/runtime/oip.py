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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, NotRequired, Union, get_args

import orjson
from pydantic import (
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)
from typing_extensions import TypedDict

from berth.errors import InvalidInputError, SchemaError
from berth.runtime.codecs import InputBlock
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
    """An OIP request body parsed as far as it can be without a signature (phase one): its
    structure and every value's JSON type are checked; nothing is matched to features yet."""

    tensors: list[Any]
    """The tensors, checked (dicts of name, shape, datatype, parameters, data)."""
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

    columns: Columns | InputBlock
    outputs: list[tuple[str, bool]]
    """Requested outputs with whether each wants binary data."""


def decode_envelope(body: bytes, header_length: int | None) -> OipEnvelope:
    head = body if header_length is None else body[:header_length]
    try:
        request = _REQUEST.validate_json(head)
    except ValidationError as exc:
        raise InvalidInputError(_diagnose(head, exc)) from None
    binary = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    return OipEnvelope(
        request["inputs"],
        binary,
        request.get("id"),
        request.get("parameters") or {},
        request.get("outputs"),
    )


def _diagnose(head: bytes, exc: ValidationError) -> str:
    """One line naming what is wrong, from the body as a client sees it."""
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as not_json:
        return f"request body is not valid JSON: {not_json}"
    if not isinstance(doc, dict):
        return "request body must be a JSON object with 'inputs'"
    tensors = doc.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        return "'inputs' must be a non-empty list of tensors"
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, dict):
            return f"input {i} must be an object"
    if not isinstance(doc.get("parameters") or {}, dict):
        return "'parameters' must be an object"
    if doc.get("id") is not None and not isinstance(doc.get("id"), str):
        return "'id' must be a string"
    for error in exc.errors():
        if error["loc"][:1] == ("inputs",) and len(error["loc"]) > 1:
            return _problem(tensors, {**error, "loc": error["loc"][1:]})
    return f"invalid request: {exc.errors()[0]['msg']}"


def decode_inputs(envelope: OipEnvelope, signature: Signature) -> OipInputs:
    binary = envelope.binary
    offset = 0
    arrays: dict[str, npt.NDArray[Any]] = {}
    for tensor in envelope.tensors:
        name, array, used = _tensor(tensor, binary[offset:])
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


# The request's structure and every value's JSON type are checked by pydantic, from the JSON bytes
# in one call: bench/oip_decode_bench.py measured the hand-written checks at 52 us for a
# 14-tensor row against 23 us for a pydantic model of the request. Only what pydantic does not
# do is written here: turning its first error into one line naming the input, binary tensors, and
# shapes against data.


_Count = Annotated[StrictInt, Field(ge=0)]
MAX_DIMENSIONS = 8
"""More dimensions than any input of a tabular or text model has (numpy itself stops at 64)."""


def _data(scalar: Any) -> Any:
    """A flat list (by far the most common, so tried first), a scalar, or lists nested as deep
    as a shape may go (row-major, as OIP allows)."""
    kinds: list[Any] = [list[scalar], scalar]
    nested: Any = list[scalar]
    for _ in range(MAX_DIMENSIONS - 1):
        nested = list[nested]
        kinds.append(nested)
    return Annotated[Union[(*kinds, None)], Field(union_mode="left_to_right")]


class _Tensor(TypedDict):
    name: Annotated[StrictStr, Field(min_length=1)]
    shape: Annotated[list[_Count], Field(min_length=1, max_length=MAX_DIMENSIONS)]
    parameters: NotRequired[dict[str, Any] | None]


class _Bool(_Tensor):
    datatype: Literal["BOOL"]
    data: NotRequired[_data(StrictBool)]  # type: ignore[valid-type]


_INTS = Literal["INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"]


class _Int(_Tensor):
    datatype: _INTS
    data: NotRequired[_data(StrictInt)]  # type: ignore[valid-type]


class _Float(_Tensor):
    datatype: Literal["FP16", "FP32", "FP64"]
    data: NotRequired[_data(StrictInt | StrictFloat)]  # type: ignore[valid-type]


class _Bytes(_Tensor):
    datatype: Literal["BYTES"]
    data: NotRequired[_data(StrictStr)]  # type: ignore[valid-type]


_KINDS = {"BOOL": "true or false", "BYTES": "strings", "FP16": "numbers", "FP32": "numbers"}
_KINDS |= {"FP64": "numbers"} | {t: "integers" for t in get_args(_INTS)}


_AnyTensor = Annotated[_Bool | _Int | _Float | _Bytes, Field(discriminator="datatype")]


class _Request(TypedDict):
    # TypedDicts, not models: validated in Rust alike, without building an object per tensor.
    id: NotRequired[StrictStr | None]
    parameters: NotRequired[dict[str, Any] | None]
    inputs: Annotated[list[_AnyTensor], Field(min_length=1)]
    outputs: NotRequired[Any]


_REQUEST = TypeAdapter(_Request)


def _problem(tensors: list[dict[str, Any]], error: Any) -> str:
    """Pydantic's first error as the one line a client reads."""
    loc = error["loc"]
    i = loc[0]
    tensor = tensors[i]
    name = tensor.get("name")
    if not isinstance(name, str) or not name or (len(loc) > 2 and loc[2] == "name"):
        return f"input {i} needs a 'name'"
    field = loc[2] if len(loc) > 2 else None
    if field is None:  # the discriminator: no datatype, or not one of ours
        datatype = tensor.get("datatype")
        return f"input {name!r}: unknown datatype {datatype!r}; use one of {', '.join(FROM_OIP)}"
    if field == "shape":
        return (
            f"input {name!r}: 'shape' must be a list of 1 to {MAX_DIMENSIONS} non-negative integers"
        )
    if field == "data":
        datatype = tensor["datatype"]
        return f"input {name!r}: {datatype} data must be {_KINDS[datatype]}"
    return f"input {name!r}: '{field}' {error['msg'].lower()}"


def _tensor(tensor: Any, binary: memoryview) -> tuple[str, npt.NDArray[Any], int]:
    import numpy as np

    name, shape, datatype = tensor["name"], tensor["shape"], tensor["datatype"]
    count = math.prod(shape)
    parameters = tensor.get("parameters")
    size = parameters.get("binary_data_size") if parameters else None
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
            raise InvalidInputError(f"input {name!r}: binary_data_size {size!r} is out of range")
        array = _from_binary(name, datatype, bytes(binary[:size]), count)
        return name, array.reshape(shape), size
    data = tensor.get("data")
    if data is None:
        raise InvalidInputError(f"input {name!r} has no 'data'")
    if not isinstance(data, list):
        data = [data]
    elif data and isinstance(data[0], list):
        data = _flatten(data)
    if len(data) != count:
        raise InvalidInputError(
            f"input {name!r}: shape {shape} holds {count} values but 'data' has {len(data)}"
        )
    try:
        if datatype in ("FP16", "FP32"):  # a float64 that does not fit is an error, not inf
            with np.errstate(over="raise", invalid="raise"):
                array = np.array(data, dtype=FROM_OIP[datatype])
        else:
            array = np.array(data, dtype=object if datatype == "BYTES" else FROM_OIP[datatype])
    except (OverflowError, FloatingPointError, ValueError) as exc:
        raise InvalidInputError(f"input {name!r}: a value does not fit {datatype}") from exc
    return name, (array if len(shape) == 1 else array.reshape(shape)), 0


def _flatten(data: list[Any]) -> list[Any]:
    """Nested lists (pydantic has checked they nest evenly deep) in row-major order."""
    out: list[Any] = []
    for v in data:
        out.extend(_flatten(v) if isinstance(v, list) else [v])
    return out


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


def _frame(arrays: dict[str, npt.NDArray[Any]], signature: Signature) -> Columns | InputBlock:
    if len(arrays) == 1:
        ((name, array),) = arrays.items()
        if signature.kind == "text" or name not in signature.names:
            width = array.shape[1] if array.ndim == 2 else 1
            if array.ndim == 2 and width == len(signature.inputs) and width > 1:
                return InputBlock(tuple(signature.names), array)
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
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it;
    ``parameters`` go into the response's beside the prediction ids."""
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
        "parameters": {"prediction_ids": prediction_ids, **(parameters or {})},
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
