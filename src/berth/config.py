"""Settings and tuning value objects.

Settings are read from the environment (prefix ``BERTH_``) once, by the composition root, and passed
down explicitly; nothing below ``app.py`` reads the environment itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where Berth keeps its state and who is acting."""

    model_config = SettingsConfigDict(env_prefix="BERTH_", extra="ignore")

    home: Path = Field(
        default=Path(".berth"),
        description="Folder for the embedded SQLite database and the artifact store.",
    )
    database_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL of the metadata database; default SQLite at $BERTH_HOME/berth.db. "
            "PostgreSQL: postgresql+psycopg://user@host/db"
        ),
    )
    artifact_root: Path | None = Field(
        default=None,
        description="Content-addressed artifact store; default $BERTH_HOME/artifacts.",
    )
    records_root: Path | None = Field(
        default=None,
        description="Folder of the prediction records (Parquet); default $BERTH_HOME/records.",
    )
    batch_root: Path | None = Field(
        default=None,
        description=(
            "Work folders of running batch jobs (their checkpoints); default $BERTH_HOME/batch."
        ),
    )
    user: str | None = Field(
        default=None,
        description="Actor recorded in the audit log; default the operating-system user.",
    )

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'berth.db').resolve()}"

    def resolved_artifact_root(self) -> Path:
        return (self.artifact_root or self.home / "artifacts").resolve()

    def resolved_records_root(self) -> Path:
        return (self.records_root or self.home / "records").resolve()

    def resolved_batch_root(self) -> Path:
        return (self.batch_root or self.home / "batch").resolve()


# -- tuning value objects ----------------------------------------------------------------------


class _Declared(BaseModel):
    """Settings read from files or handed between processes: an unknown key is a mistake."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingConfig(_Declared):
    """How concurrent requests for one version are grouped into one predictor call."""

    max_batch_size: int = Field(default=1, ge=1, description="Rows per call; 1 turns it off.")
    max_latency_ms: float = Field(
        default=0.0,
        ge=0.0,
        description="How long a lone request waits for company; 0 never waits but still takes "
        "together whatever queued while the previous call ran.",
    )
    target_p99_ms: float | None = Field(
        default=None,
        gt=0.0,
        description="Tune the waiting window online to keep the p99 latency under this.",
    )

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1


class ModelServing(_Declared):
    """How one model is served, from the ``models`` table of a serving config file. Unset
    batching settings take the flavor's defaults."""

    max_batch_size: int | None = Field(default=None, ge=1, description="See BatchingConfig.")
    max_latency_ms: float | None = Field(default=None, ge=0.0, description="See BatchingConfig.")
    target_p99_ms: float | None = Field(default=None, gt=0.0, description="See BatchingConfig.")
    record: bool = Field(
        default=True,
        description="Write prediction records for this model (off for models whose inputs "
        "must not be kept at all).",
    )

    def batching(self, default: BatchingConfig) -> BatchingConfig:
        """The flavor's default with the settings given here laid over it (a setting sent
        through JSON as null is one not given)."""
        given = self.model_dump(exclude_none=True, exclude={"record"})
        if not given:
            return default
        return BatchingConfig.model_validate({**default.model_dump(), **given})


class ThreadLimits(_Declared):
    """Thread pools of a version's inference thread (see ``Flavor.configure_thread``)."""

    threads: int = Field(
        default=1,
        ge=1,
        description="OpenMP/BLAS threads per worker for tabular models: one request's "
        "predict_proba is fastest on one thread, and workers already use the cores.",
    )
    torch_threads: int | None = Field(
        default=None, ge=1, description="Threads for text models; default the cores / workers."
    )
    workers: int = Field(default=1, ge=1, description="Server worker processes on this host.")

    def torch(self) -> int:
        return self.torch_threads or max(1, (os.cpu_count() or 1) // self.workers)


class PathOptions(_Declared):
    """How the inference path runs, whichever adapter starts it (server, stream consumer)."""

    record: bool = Field(default=True, description="Write prediction records at all.")
    poll_interval_s: float = Field(
        default=2.0,
        ge=0.0,
        description="How often alias moves are picked up; 0 turns the poller off.",
    )
    threads: ThreadLimits = Field(default_factory=ThreadLimits)
    models: dict[str, ModelServing] = Field(
        default_factory=dict, description="Per-model serving settings, by model name."
    )

    def serving(self, model: str) -> ModelServing:
        return self.models.get(model) or ModelServing()


class ServeOptions(_Declared):
    """``berth serve``: the path's options and the HTTP side's. Handed to uvicorn's worker
    processes as JSON (``BERTH_SERVE_OPTIONS``)."""

    path: PathOptions = Field(default_factory=PathOptions)
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1, description="Larger request bodies get a 413."
    )
    access_log: bool = Field(default=True, description="One JSON line per request on stderr.")
    body_timeout_s: float = Field(
        default=30.0,
        gt=0.0,
        description="A request body must arrive within this many seconds of its first read, "
        "else 408 (a slow or stalled client would hold its connection and handler).",
    )
