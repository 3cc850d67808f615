"""Observed ranges in batch jobs: a row outside a refusing range goes to the errors file like any
invalid row; under warn (the default) it is scored and its prediction record says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from tests.batch.data import customers, spec

from berth.app import Berth
from berth.runtime.record_reader import RecordReader


def _register(client: Berth, churn_model: Any, **options: Any) -> pd.DataFrame:
    model, training = churn_model
    client.register(model, "churn", training_data=training, measure_latency=False, **options)
    client.set_alias("churn", "production", 1)
    return training


def test_a_row_outside_a_refusing_range_goes_to_the_errors_file(
    client: Berth, churn_model: Any, tmp_path: Path
) -> None:
    training = _register(client, churn_model, range_policy={"age": "refuse"})
    lo, hi = int(training["age"].min()), int(training["age"].max())
    frame = customers(100)
    frame.loc[7, "age"] = hi + 50
    frame.loc[40, "age"] = lo - 1
    frame.loc[41, "income"] = 1e9  # income's policy is warn: scored
    path = tmp_path / "in.csv"
    frame.to_csv(path, index=False)
    job = client.run_batch(spec(path, tmp_path / "scores.csv"))

    assert (job.rows, job.errors) == (100, 2)
    errors = pd.read_csv(tmp_path / "scores.errors.csv")
    assert errors["row"].tolist() == [7, 40]
    assert errors["error"].tolist() == [
        f"feature 'age' value {hi + 50} is outside the range seen in training [{lo}, {hi}] "
        "(its range policy is 'refuse')",
        f"feature 'age' value {lo - 1} is outside the range seen in training [{lo}, {hi}] "
        "(its range policy is 'refuse')",
    ]
    scored = pd.read_csv(tmp_path / "scores.csv")
    assert len(scored) == 98
    assert 1041 in scored["id"].tolist()


def test_under_warn_the_row_is_scored_and_its_record_lists_the_feature(
    client: Berth, churn_model: Any, tmp_path: Path
) -> None:
    training = _register(client, churn_model)
    frame = customers(60)
    frame["income"] = frame["income"].clip(0, training["income"].max())
    frame["age"] = frame["age"].clip(training["age"].min(), training["age"].max())
    frame.loc[5, "age"] = 200
    frame.loc[6, ["age", "income"]] = [-3, -1.0]
    path = tmp_path / "in.csv"
    frame.to_csv(path, index=False)
    job = client.run_batch(spec(path, tmp_path / "scores.csv"))

    assert (job.rows, job.errors) == (60, 0)
    records = RecordReader(client.settings.resolved_records_root()).read("churn").to_pandas()
    assert len(records) == 60
    warned = {
        int(row["in.age"]): list(row["warnings"])
        for _, row in records.iterrows()
        if row["warnings"] is not None
    }
    assert warned == {200: ["out_of_range:age"], -3: ["out_of_range:age", "out_of_range:income"]}
