"""Decoding an Open Inference Protocol request: Berth's hand-written decoder against a pydantic
model of the same request (what MLServer does), in one run, for the request shapes of the realtime
benchmark (one credit-risk row as 14 tensors; 64 rows; one sentence).

Both sides produce what the inference path needs: named numpy columns, every value checked
(datatype, shape against data, numbers for numeric tensors). pydantic validates the structure from
the JSON bytes in Rust; the columns are then built from the validated model, as MLServer's codecs
do.

    .venv/bin/python bench/oip_decode_bench.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, Field

RESULTS = Path(__file__).resolve().parent / "results"


class Tensor(BaseModel):
    name: str
    shape: list[int] = Field(min_length=1)
    datatype: Literal["BOOL", "INT32", "INT64", "FP32", "FP64", "BYTES"]
    parameters: dict[str, Any] | None = None
    data: list[float | int | str | bool | list[Any]]


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[Tensor] = Field(min_length=1)
    outputs: list[dict[str, Any]] | None = None


_DTYPES = {"BOOL": "bool", "INT32": "int32", "INT64": "int64", "FP32": "float32", "FP64": "float64"}


def pydantic_decode(body: bytes) -> dict[str, np.ndarray]:
    request = InferenceRequest.model_validate_json(body)
    columns = {}
    for tensor in request.inputs:
        if math.prod(tensor.shape) != len(tensor.data):
            raise ValueError("shape and data disagree")
        dtype = object if tensor.datatype == "BYTES" else _DTYPES[tensor.datatype]
        columns[tensor.name] = np.asarray(tensor.data, dtype=dtype).reshape(tensor.shape)
    return columns


def berth_decode(body: bytes, signature: Any) -> dict[str, np.ndarray]:
    from berth.runtime import oip

    return oip.decode_inputs(oip.decode_envelope(body, None), signature).columns


def requests() -> dict[str, tuple[bytes, Any]]:
    from berth.demo import credit
    from berth.registry.signature import infer_signature

    frame = credit.generate(64, seed=1)[list(credit.FEATURES)]
    signature = infer_signature(frame)
    kinds = {f.name: f.dtype for f in signature.inputs}
    to_oip = {"float64": "FP64", "int64": "INT64", "string": "BYTES", "bool": "BOOL"}

    def body(rows: int) -> bytes:
        part = frame.head(rows)
        tensors = [
            {
                "name": name,
                "shape": [rows],
                "datatype": to_oip.get(kinds[name], "FP64"),
                "data": part[name].tolist(),
            }
            for name in frame.columns
        ]
        return orjson.dumps({"inputs": tensors})

    text_sig = infer_signature(["a sentence"])
    text = orjson.dumps(
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["lovely"]}]}
    )
    return {
        "1 row": (body(1), signature),
        "64 rows": (body(64), signature),
        "1 text": (text, text_sig),
    }


def timed(call: Any, seconds: float) -> float:
    """Microseconds per call: the best of five rounds of ``seconds / 5``."""
    best = math.inf
    for _ in range(5):
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 5:
            call()
            calls += 1
        best = min(best, (time.perf_counter() - started) / calls * 1e6)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    results: dict[str, Any] = {"python": platform.python_version(), "cases": {}}
    for name, (body, signature) in requests().items():
        ours = berth_decode(body, signature)
        theirs = pydantic_decode(body)
        assert sorted(ours) == sorted(theirs), (sorted(ours), sorted(theirs))
        berth_us = timed(lambda b=body, s=signature: berth_decode(b, s), args.seconds)
        pydantic_us = timed(lambda b=body: pydantic_decode(b), args.seconds)
        results["cases"][name] = {
            "bytes": len(body),
            "berth_us": round(berth_us, 1),
            "pydantic_us": round(pydantic_us, 1),
            "pydantic_over_berth": round(pydantic_us / berth_us, 2),
        }
        print(f"{name:8} berth {berth_us:8.1f} us   pydantic {pydantic_us:8.1f} us")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "oip_decode.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
