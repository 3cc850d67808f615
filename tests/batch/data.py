"""Inputs for batch jobs and what scoring them must give."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from berth.app import Berth
from berth.batch.specs import JobSpec, destination, source

FEATURES = ["age", "income", "plan"]
REF = "churn@production"


def customers(rows: int, seed: int = 0) -> pd.DataFrame:
    """An ``id`` to pass through plus the model's three features."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": np.arange(1000, 1000 + rows, dtype=np.int64),
            "age": rng.integers(18, 90, rows, dtype=np.int64),
            "income": rng.uniform(0, 9000, rows).round(2),
            "plan": rng.choice(["basic", "pro", "team"], rows),
        }
    )


def write_parquet(frame: pd.DataFrame, path: Path, row_group_size: int = 64) -> Path:
    pq.write_table(
        pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=row_group_size
    )
    return path


def spec(input_: str | Path, output: str | Path, **options: Any) -> JobSpec:
    query = options.pop("query", None)
    table = options.pop("table", None)
    options.setdefault("passthrough", ("id",))
    options.setdefault("chunk_rows", 50)
    return JobSpec(
        reference=REF,
        input=source(str(input_), query=query),
        output=destination(str(output), table=table),
        **options,
    )


def expected(client: Berth, frame: pd.DataFrame) -> pd.DataFrame:
    """What scoring ``frame`` with churn v1 in process gives: the output a job must write."""
    model = client.load("churn/1")
    outputs = model.predict(frame[FEATURES])
    return pd.DataFrame(
        {
            "id": frame["id"].to_numpy(),
            "model": "churn",
            "version": np.int32(1),
            "label": outputs["label"],
            "probabilities_0": outputs["probabilities"][:, 0],
            "probabilities_1": outputs["probabilities"][:, 1],
        }
    )


def without_ids(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["prediction_id"]).reset_index(drop=True)


def train_churn() -> tuple[Any, pd.DataFrame]:
    frame = customers(400, seed=1)
    score = (frame["age"] - 50) / 15 + np.where(frame["plan"] == "pro", 1.0, -0.5)
    labels = (score > 0).astype(np.int64)
    model = make_pipeline(
        make_column_transformer((OneHotEncoder(), ["plan"]), (StandardScaler(), ["age", "income"])),
        LogisticRegression(),
    )
    model.fit(frame[FEATURES], labels)
    return model, frame[FEATURES]


def register_churn(client: Berth, churn_model: Any) -> None:
    model, training = churn_model
    client.register(model, "churn", training_data=training)
    client.set_alias("churn", "production", 1)


class Stop(Exception):
    """Raised by :class:`StopAfter`: a job stopped half-way, as by a crash."""


class StopAfter:
    """A progress watcher that stops the job once ``rows`` rows are done."""

    def __init__(self, rows: int = 1) -> None:
        self.rows = rows

    def start(self, *args: object) -> None: ...

    def phase(self, text: str) -> None: ...

    def advance(self, rows: int, errors: int, total: int | None) -> None:
        if rows >= self.rows:
            raise Stop
