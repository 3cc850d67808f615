"""``--engine ray``: the same job with its predictions made on Ray Data (a local Ray here) writes
what the local engine writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import ray
from tests.batch.data import customers, expected, spec, without_ids, write_parquet

from berth.app import Berth
from berth.runtime.record_reader import RecordReader


def test_ray_engine_output_is_the_local_engines(
    churn: Berth, churn_model: Any, tmp_path: Path
) -> None:
    model, training = churn_model
    churn.register(model, "churn", training_data=training)  # v2, newest; production stays v1
    frame = customers(1_000)
    frame.loc[[10, 500], "plan"] = "gold"  # two bad rows: the errors file must match too
    source = write_parquet(frame, tmp_path / "in.parquet")
    # A bare name: both engines resolve it as every entry point does (production: v1).
    local = churn.run_batch(
        spec(source, tmp_path / "local.parquet", chunk_rows=150).replace(reference="churn")
    )
    on_ray = churn.run_batch(
        spec(source, tmp_path / "ray.parquet", chunk_rows=150, engine="ray").replace(
            reference="churn"
        )
    )
    assert not ray.is_initialized()  # the job started its local Ray and shut it down
    assert (local.version, on_ray.version) == (1, 1)

    assert (on_ray.status, on_ray.engine, on_ray.rows, on_ray.errors) == (
        "succeeded",
        "ray",
        1_000,
        2,
    )
    pd.testing.assert_frame_equal(
        without_ids(pd.read_parquet(tmp_path / "ray.parquet")),
        without_ids(pd.read_parquet(tmp_path / "local.parquet")),
    )
    good = frame.drop(index=[10, 500]).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        without_ids(pd.read_parquet(tmp_path / "ray.parquet")),
        expected(churn, good),
        check_dtype=False,
    )
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "ray.errors.csv"), pd.read_csv(tmp_path / "local.errors.csv")
    )
    records = RecordReader(churn.settings.resolved_records_root()).read("churn", version=1)
    assert records.num_rows == 2 * 998
    assert local.id != on_ray.id
