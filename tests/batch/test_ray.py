"""``--engine ray``: the same job with its predictions made on Ray Data (a local Ray here) writes
what the local engine writes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import ray
from tests.batch.data import customers, expected, spec, without_ids, write_parquet

from berth.app import Berth
from berth.runtime.records import read_records


def test_ray_engine_output_is_the_local_engines(churn: Berth, tmp_path: Path) -> None:
    frame = customers(1_000)
    frame.loc[[10, 500], "plan"] = "gold"  # two bad rows: the errors file must match too
    source = write_parquet(frame, tmp_path / "in.parquet")
    local = churn.run_batch(spec(source, tmp_path / "local.parquet", chunk_rows=150))
    on_ray = churn.run_batch(spec(source, tmp_path / "ray.parquet", chunk_rows=150, engine="ray"))
    assert not ray.is_initialized()  # the job started its local Ray and shut it down

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
    records = read_records(churn.settings.resolved_records_root(), "churn", version=1)
    assert records.num_rows == 2 * 998
    assert local.id != on_ray.id
