"""Settings and tuning value objects.

Settings are read from the environment (prefix ``BERTH_``) once, by the composition root, and passed
down explicitly; nothing below ``app.py`` reads the environment itself.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
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
