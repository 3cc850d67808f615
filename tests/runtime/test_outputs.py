"""The one output codec: the per-class rule holds alike in JSON rows, flat columns and records."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from berth.registry.signature import Feature, Output, Signature
from berth.runtime.outputs import (
    flat_fields,
    from_plain_columns,
    per_class,
    to_flat_columns,
    to_plain_columns,
    to_record_columns,
    to_rows,
)

SIG = Signature(
    kind="tabular",
    inputs=(Feature(name="x", dtype="float64"),),
    outputs=(
        Output(name="label", dtype="string", shape=(-1,), classes=("no", "yes")),
        Output(name="probabilities", dtype="float64", shape=(-1, 2), classes=("no", "yes")),
        Output(name="embedding", dtype="float32", shape=(-1, 3)),
    ),
)
OUTPUTS = {
    "label": np.array(["yes", "no"], dtype=object),
    "probabilities": np.array([[0.2, 0.8], [0.9, 0.1]]),
    "embedding": np.arange(6, dtype=np.float32).reshape(2, 3),
}


def test_the_per_class_rule() -> None:
    label, proba, embedding = SIG.outputs
    assert per_class(proba) == ["no", "yes"]
    assert per_class(label) is None  # 1-D: a value per row
    assert per_class(embedding) is None  # 2-D without classes
    assert per_class(proba, np.zeros((2, 3))) is None  # the values disagree: not keyed
    assert per_class(None) is None


def test_rows_flat_columns_and_records_shape_the_same_outputs() -> None:
    rows = to_rows(OUTPUTS, SIG)
    assert rows[0] == {
        "label": "yes",
        "probabilities": {"no": 0.2, "yes": 0.8},
        "embedding": [0.0, 1.0, 2.0],
    }
    flat = to_flat_columns(OUTPUTS, SIG, 2)
    assert list(flat) == ["label", "probabilities_no", "probabilities_yes", "embedding"]
    assert flat["probabilities_yes"].to_pylist() == [0.8, 0.1]
    assert flat["embedding"].to_pylist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    # The declared fields type what an output without rows still has, and match the data's.
    fields = {f.name: f.type for f in flat_fields(SIG)}
    assert list(fields)[:3] == ["prediction_id", "model", "version"]
    assert fields["probabilities_no"] == pa.float64()
    assert fields["label"] == pa.string()
    empty = to_flat_columns({}, SIG, 0)
    assert {k: v.type for k, v in empty.items()} == {k: fields[k] for k in empty}
    records = to_record_columns(OUTPUTS)
    assert records["out.probabilities"].type == pa.list_(pa.float64(), 2)
    assert records["out.label"].to_pylist() == ["yes", "no"]


def test_plain_columns_cross_a_process_boundary_and_come_back_whole() -> None:
    frame = pd.DataFrame(to_plain_columns(OUTPUTS))
    back = from_plain_columns(frame)
    assert set(back) == set(OUTPUTS)
    for name, values in OUTPUTS.items():
        np.testing.assert_array_equal(back[name], values)


def test_a_column_view_goes_out_as_an_oip_tensor() -> None:
    """A python model returning ``proba[:, 1]`` (not C-contiguous) still encodes."""
    import orjson

    from berth.runtime.outputs import to_tensor

    view = np.arange(8, dtype=np.float64).reshape(4, 2)[:, 1]
    tensor, blob = to_tensor("p", view, binary=False)
    assert blob is None
    body = orjson.loads(orjson.dumps(tensor, option=orjson.OPT_SERIALIZE_NUMPY))
    assert body["data"] == [1.0, 3.0, 5.0, 7.0]
    tensor, blob = to_tensor("p", view, binary=True)
    assert np.frombuffer(blob, dtype="<f8").tolist() == [1.0, 3.0, 5.0, 7.0]
