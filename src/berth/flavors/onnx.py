"""ONNX graphs, run with onnxruntime on the CPU.

Two input layouts are understood. One tensor per feature (shape ``[N, 1]`` or ``[N]``, what
skl2onnx makes from a DataFrame) declares the signature itself. One 2-D tensor ``[N, F]`` does
not name its features, so the user gives a signature or training data, and the predictor stacks
the validated columns, in signature order, into one matrix of the input's dtype.

skl2onnx's output names are renamed (``output_label`` -> ``label``, ``output_probability`` ->
``probabilities``, ``variable`` -> ``prediction``) so that an ONNX classifier answers like every
other flavor. A ZipMap node (a list of dicts per row) is cut off at load time in favour of the
probability tensor it reads, which keeps the per-row Python loop off the request path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from berth.errors import InvalidInputError, UnavailableError
from berth.flavors.base import Flavor, classifier_outputs
from berth.registry.signature import Dtype, Feature, Output, Signature
from berth.types import Outputs, Predictor

_FILE = "model.onnx"
_DATA = "model.onnx.data"
# A protobuf message cannot be serialised past 2 GiB: bigger graphs keep their weights beside.
_EXTERNAL_ABOVE = 2**31 - 2**24
RENAMES = {"output_label": "label", "output_probability": "probabilities", "variable": "prediction"}
# ONNX TensorProto element types -> signature dtypes. float16 is widened: the signature has no
# half type, and the predictor casts back to what the graph expects.
_ELEM_DTYPES: dict[int, Dtype] = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
    8: "string", 9: "bool", 10: "float32", 11: "float64", 12: "uint32", 13: "uint64",
}  # fmt: skip
# onnxruntime's type strings -> numpy dtypes the session accepts.
_ORT_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64, "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
    "tensor(string)": object,
}  # fmt: skip
_CLASSIFIER_OPS = ("ZipMap", "LinearClassifier", "TreeEnsembleClassifier", "SVMClassifier")


class OnnxFlavor(Flavor):
    name = "onnx"
    extra = "onnx"
    packages = ("onnx", "onnxruntime")

    def matches(self, model: object) -> bool:
        kind = type(model)
        return kind.__module__.split(".")[0] == "onnx" and kind.__qualname__ == "ModelProto"

    def save(self, model: object, path: Path, *, trusted: bool, threads: int = 1) -> dict[str, Any]:
        onnx = self.import_module("onnx")
        if not self.matches(model):
            raise InvalidInputError(f"the onnx flavor saves an onnx.ModelProto, not {type(model)}")
        if threads < 1:
            raise InvalidInputError(f"threads must be at least 1, got {threads}")
        proto: Any = model
        if proto.ByteSize() > _EXTERNAL_ABOVE:
            proto = onnx.ModelProto()
            proto.CopyFrom(model)  # saving as external data rewrites the message: not the user's
            onnx.save_model(
                proto,
                str(path / _FILE),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=_DATA,
            )
        else:
            (path / _FILE).write_bytes(proto.SerializeToString())
        zipmap = any(node.op_type == "ZipMap" for node in proto.graph.node)
        return {"file": _FILE, "threads": threads, "zipmap": zipmap}

    def read(self, source: Path, *, trusted: bool) -> object:
        if source.suffix.lower() != ".onnx":
            raise InvalidInputError(f"{source.name}: an ONNX model file ends in .onnx")
        onnx = self.import_module("onnx")
        try:
            return onnx.load(str(source))
        except Exception as exc:  # protobuf's DecodeError and onnx's own errors alike
            raise InvalidInputError(f"{source.name} is not a readable ONNX model: {exc}") from exc

    def load(self, path: Path, options: dict[str, Any], signature: Signature) -> Predictor:
        ort = self.import_module("onnxruntime")
        file = path / options.get("file", _FILE)
        settings = ort.SessionOptions()
        # One thread per session: the server runs one session per version and scales with
        # workers; onnxruntime's default (every core) oversubscribes the machine under load.
        settings.intra_op_num_threads = int(options.get("threads", 1))
        settings.inter_op_num_threads = 1
        # Only a ZipMap needs the onnx package at load time; plain graphs need onnxruntime alone.
        graph = _without_zipmap(self.import_module("onnx"), file) if options.get("zipmap") else None
        try:
            session = ort.InferenceSession(
                graph if graph is not None else str(file),
                sess_options=settings,
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise UnavailableError(f"onnxruntime cannot load this model: {exc}") from exc
        return OnnxPredictor(session, signature)

    def signature(self, model: object) -> Signature | None:
        inputs = list(_graph(model).input)
        shapes = [_tensor_type(tensor) for tensor in inputs]
        if not inputs or (len(inputs) == 1 and len(shapes[0][1]) == 2 and shapes[0][1][1] != 1):
            return None  # one matrix: its columns have no names
        features = []
        for tensor, (elem, dims) in zip(inputs, shapes, strict=True):
            per_feature = len(dims) == 1 or (len(dims) == 2 and dims[1] == 1)
            if elem not in _ELEM_DTYPES or not per_feature:
                return None
            features.append(Feature(name=tensor.name, dtype=_ELEM_DTYPES[elem]))
        return Signature(kind="tabular", inputs=tuple(features))

    def outputs(self, model: object, signature: Signature) -> list[Output]:
        graph = _graph(model)
        declared = {RENAMES.get(t.name, t.name): t for t in graph.output}
        classes = _classes(model)
        if "label" in declared and "probabilities" in declared and classes is not None:
            probability = _output_dtype(declared["probabilities"])
            return classifier_outputs(classes, probability_dtype=probability)
        outputs = []
        for name, tensor in declared.items():
            _, dims = _tensor_type(tensor)
            shape = (-1, *(d if d > 0 else -1 for d in dims[1:]))
            if name == "prediction" and shape == (-1, 1):
                shape = (-1,)
            outputs.append(Output(name=name, dtype=_output_dtype(tensor), shape=shape))
        return outputs


class OnnxPredictor:
    """Feeds either one tensor per feature or one matrix, and returns every graph output under
    its Berth name."""

    def __init__(self, session: Any, signature: Signature) -> None:
        self.session = session
        self.inputs = [
            (i.name, _ORT_DTYPES.get(i.type, np.float32), list(i.shape))
            for i in session.get_inputs()
        ]
        self.output_names = [o.name for o in session.get_outputs()]
        self.names = [RENAMES.get(n, n) for n in self.output_names]
        self.per_feature = all(
            name in signature.names and (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1))
            for name, _, shape in self.inputs
        )
        if not self.per_feature:
            _check_matrix(self.inputs, signature)

    def predict(self, batch: pd.DataFrame) -> Outputs:
        if self.per_feature:
            feed = {
                name: _column(batch[name], dtype, len(shape)) for name, dtype, shape in self.inputs
            }
        else:
            name, dtype, _ = self.inputs[0]
            feed = {name: batch.to_numpy(dtype=dtype)}
        try:
            results = self.session.run(self.output_names, feed)
        except Exception as exc:  # onnxruntime's pybind errors: a graph that rejects the batch
            raise UnavailableError(f"the ONNX model failed on this batch: {exc}") from exc
        outputs: Outputs = {}
        for name, values in zip(self.names, results, strict=True):
            array = np.asarray(values)
            if name == "prediction" and array.ndim == 2 and array.shape[1] == 1:
                array = array.ravel()
            outputs[name] = array
        return outputs


def _column(values: pd.Series, dtype: Any, rank: int) -> npt.NDArray[Any]:
    array = values.to_numpy(dtype=dtype)
    return array if rank == 1 else array.reshape(-1, 1)


def _check_matrix(inputs: list[tuple[str, Any, list[Any]]], signature: Signature) -> None:
    names = ", ".join(name for name, _, _ in inputs)
    if len(inputs) != 1 or len(inputs[0][2]) != 2:
        raise InvalidInputError(
            f"the ONNX graph's inputs ({names}) are neither one tensor per signature feature "
            f"nor one 2-D matrix; signature features: {', '.join(signature.names)}"
        )
    width = inputs[0][2][1]
    if isinstance(width, int) and width != len(signature.inputs):
        raise InvalidInputError(
            f"the ONNX input {names!r} takes {width} features but the signature has "
            f"{len(signature.inputs)}"
        )


def _graph(model: object) -> Any:
    graph = getattr(model, "graph", None)
    if graph is None:
        raise InvalidInputError(f"expected an onnx.ModelProto, got {type(model).__name__}")
    return graph


def _tensor_type(value: Any) -> tuple[int, list[int]]:
    """Element type and dims of a graph value; a symbolic or missing dim reads as 0."""
    tensor = value.type.tensor_type
    return int(tensor.elem_type), [int(d.dim_value) for d in tensor.shape.dim]


def _output_dtype(value: Any) -> Dtype:
    if value.type.HasField("tensor_type"):
        return _ELEM_DTYPES.get(_tensor_type(value)[0], "float64")
    return "float32"  # ZipMap's per-row maps, which load turns back into their float tensor


def _classes(model: object) -> list[Any] | None:
    """Class labels from the metadata ("classes", comma-separated) or a classifier node: the
    ZipMap, else one that writes a graph output, else any (an inner model of an ensemble)."""
    for prop in getattr(model, "metadata_props", []):
        if prop.key == "classes" and prop.value:
            return _numeric_if_possible(prop.value.split(","))
    graph = _graph(model)
    final = {value.name for value in graph.output}
    nodes = [node for node in graph.node if node.op_type in _CLASSIFIER_OPS]
    nodes.sort(key=lambda n: (n.op_type != "ZipMap", final.isdisjoint(n.output)))
    for node in nodes:
        for attr in node.attribute:
            if attr.name in ("classlabels_ints", "classlabels_int64s") and attr.ints:
                return [int(v) for v in attr.ints]
            if attr.name == "classlabels_strings" and attr.strings:
                return [v.decode() for v in attr.strings]
    return None


def _numeric_if_possible(values: list[str]) -> list[Any]:
    try:
        return [int(v) for v in values]
    except ValueError:
        return values


def _without_zipmap(onnx: Any, file: Path) -> bytes:
    """The graph with each ZipMap cut off: its float input tensor takes over its output name."""
    model = onnx.load(str(file))
    graph = model.graph
    for zipmap in [n for n in graph.node if n.op_type == "ZipMap"]:
        source, target = zipmap.input[0], zipmap.output[0]
        graph.node.remove(zipmap)
        for node in graph.node:
            node.output[:] = [target if o == source else o for o in node.output]
            node.input[:] = [target if i == source else i for i in node.input]
        for value in graph.value_info:
            if value.name == source:
                value.name = target
        for value in graph.output:
            if value.name == target:
                value.CopyFrom(
                    onnx.helper.make_tensor_value_info(target, onnx.TensorProto.FLOAT, None)
                )
    return bytes(model.SerializeToString())


FLAVOR = OnnxFlavor()
