"""The composition root: settings in, a wired client out.

Only entry points (the Python API in ``berth/__init__.py``, the CLI, the server) and tests build a
:class:`Berth`; everything below receives what it needs from here.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from berth.config import Settings
from berth.registry.artifacts import ArtifactStore
from berth.registry.db import Database
from berth.registry.references import parse_reference
from berth.registry.service import AuditEvent, ModelSummary, Registry, VersionInfo
from berth.registry.signature import Signature

if TYPE_CHECKING:
    import pandas as pd
    from fastapi import FastAPI

    from berth.batch.jobs import JobInfo, JobStore
    from berth.batch.runner import BatchContext, Progress
    from berth.batch.specs import JobSpec
    from berth.runtime.loading import LoadedModel
    from berth.runtime.path import InferencePath, ServingConfig


class Berth:
    """A handle on one Berth home (metadata database plus artifact store).

    >>> client = Berth(Settings(home=Path("/tmp/berth-doc")))
    >>> [m.name for m in client.list_models()]  # doctest: +SKIP
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.db = Database(self.settings.resolved_database_url())
        self.store = ArtifactStore(self.settings.resolved_artifact_root())
        self.registry = Registry(self.db, self.store)
        self.actor = self.settings.user or _os_user()

    def close(self) -> None:
        self.db.dispose()

    def __enter__(self) -> Berth:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register(
        self,
        model: object,
        name: str,
        *,
        flavor: str | None = None,
        signature: Signature | Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, Any] | None = None,
        training_data: pd.DataFrame | Sequence[str] | None = None,
        tags: Mapping[str, str] | None = None,
        description: str = "",
        trusted: bool = False,
        code_path: Path | None = None,
        save_options: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> VersionInfo:
        """Save ``model`` as the next immutable version of ``name``.

        ``training_data`` gives the signature (when not given), the data fingerprint and the
        reference profile that drift monitoring compares traffic with. ``trusted=True`` allows
        formats that run code when loaded (pickle) and is recorded on the version.
        Raises ``InvalidInputError`` for a bad name, signature, metric or training data and
        ``UntrustedArtifactError`` when the model needs a code-executing format without trust.
        """
        from berth.runtime.registration import register_model  # imports data libraries

        return register_model(
            self.registry,
            model,
            name,
            actor=self.actor,
            flavor=flavor,
            signature=signature,
            metrics=metrics,
            params=params,
            training_data=training_data,
            tags=tags,
            description=description,
            trusted=trusted,
            code_path=code_path,
            save_options=save_options,
            source=source,
        )

    def load(self, ref: str) -> LoadedModel:
        """Load ``name``, ``name/3`` or ``name@alias``, verifying the artifact's SHA-256."""
        from berth.runtime.loading import load_version

        return load_version(self.registry, ref)

    def get_version(self, ref: str) -> VersionInfo:
        return self.registry.resolve(parse_reference(ref))

    def list_models(self, search: str | None = None) -> list[ModelSummary]:
        return self.registry.list_models(search)

    def list_versions(
        self, name: str, *, tags: Mapping[str, str] | None = None
    ) -> list[VersionInfo]:
        return self.registry.list_versions(name, tags=tags)

    def set_alias(self, name: str, alias: str, version: int) -> int | None:
        return self.registry.set_alias(name, alias, version, actor=self.actor)

    def delete_alias(self, name: str, alias: str) -> int:
        return self.registry.delete_alias(name, alias, actor=self.actor)

    def delete_version(self, name: str, version: int) -> VersionInfo:
        return self.registry.delete_version(name, version, actor=self.actor)

    def collect_garbage(self, older_than_s: float = 3600.0) -> dict[str, int]:
        return self.registry.collect_garbage(older_than_s=older_than_s, actor=self.actor)

    def get_profile(self, ref: str) -> dict[str, Any] | None:
        info = self.get_version(ref)
        return self.registry.get_profile(info.model, info.version)

    def alias_history(self, name: str) -> list[AuditEvent]:
        return self.registry.alias_history(name)

    # -- batch -----------------------------------------------------------------------------------

    @property
    def jobs(self) -> JobStore:
        from berth.batch.jobs import JobStore

        return JobStore(self.db)

    def batch_context(self) -> BatchContext:
        from berth.batch.runner import BatchContext

        return BatchContext(
            registry=self.registry,
            jobs=self.jobs,
            work_root=self.settings.resolved_batch_root(),
            records_root=self.settings.resolved_records_root(),
            actor=self.actor,
        )

    def run_batch(
        self,
        spec: JobSpec,
        *,
        resume: str | None = None,
        progress: Progress | None = None,
        schedule_id: int | None = None,
    ) -> JobInfo:
        """Run a batch job to the end (or resume one); see :func:`berth.batch.runner.run_job`."""
        from berth.batch.runner import run_job

        return run_job(
            self.batch_context(), spec, resume=resume, progress=progress, schedule_id=schedule_id
        )


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# -- serving -----------------------------------------------------------------------------------

SERVE_OPTIONS_ENV = "BERTH_SERVE_OPTIONS"
"""JSON of :class:`ServeOptions`, handed to worker processes that uvicorn starts."""


@dataclass(frozen=True)
class ServeOptions:
    config_file: str | None = None
    record: bool = True
    poll_interval_s: float = 2.0
    max_body_bytes: int = 10 * 1024 * 1024
    threads: int = 1
    """OpenMP/BLAS threads per worker for tabular models: one request's predict_proba is fastest
    on one thread, and workers already use the cores."""
    torch_threads: int | None = None
    """Threads for text models; default the cores divided by the workers."""
    access_log: bool = True
    workers: int = 1


def build_path(client: Berth, options: ServeOptions) -> InferencePath:
    from berth.runtime.metrics import Metrics
    from berth.runtime.path import InferencePath, ModelPool
    from berth.runtime.records import RecordWriter

    metrics = Metrics()
    pool = ModelPool(
        client.registry,
        configs=load_serving_configs(options.config_file),
        metrics=metrics,
        poll_interval_s=options.poll_interval_s,
        thread_init=thread_tuner(options),
    )
    recorder = None
    if options.record:
        recorder = RecordWriter(
            client.settings.resolved_records_root(), on_drop=metrics.records_dropped.inc
        )
    return InferencePath(pool, recorder, metrics)


def build_server(settings: Settings, options: ServeOptions) -> FastAPI:
    from berth.server.app import ServerLimits, create_app

    client = Berth(settings)
    return create_app(
        build_path(client, options),
        ServerLimits(max_body_bytes=options.max_body_bytes, access_log=options.access_log),
        on_shutdown=client.close,
    )


def server_factory() -> FastAPI:
    """For ``uvicorn --factory`` in each worker process: settings and options from the env."""
    import json

    raw = os.environ.get(SERVE_OPTIONS_ENV)
    options = ServeOptions(**json.loads(raw)) if raw else ServeOptions()
    return build_server(Settings(), options)


def load_serving_configs(file: str | None) -> dict[str, ServingConfig]:
    """``{"models": {"sentiment": {"max_batch_size": 32, "target_p99_ms": 80}}}`` in JSON or
    TOML; unlisted models take their flavor's defaults."""
    from berth.errors import InvalidInputError
    from berth.runtime.path import ServingConfig

    if file is None:
        return {}
    path = Path(file)
    if not path.is_file():
        raise InvalidInputError(f"serving config {file!r} does not exist")
    try:
        if path.suffix == ".toml":
            import tomllib

            doc = tomllib.loads(path.read_text())
        else:
            import json

            doc = json.loads(path.read_text())
    except ValueError as exc:
        raise InvalidInputError(f"serving config {file!r} is not valid: {exc}") from exc
    models = doc.get("models", {}) if isinstance(doc, dict) else None
    if not isinstance(models, dict):
        raise InvalidInputError(f"serving config {file!r}: 'models' must map names to settings")
    return {
        name: ServingConfig.from_dict(values, f"{file}: models.{name}")
        for name, values in models.items()
    }


def thread_tuner(options: ServeOptions) -> Callable[[VersionInfo], None]:
    """Sets the thread pools of a version's inference thread as it starts. OpenMP keeps its
    thread count per thread, so a limit set anywhere else would not reach it: a single-row
    ``predict_proba`` of a gradient-boosting model on the default two OpenMP threads was 20x
    slower here, the threads fighting the server's own for two cores."""
    torch_threads = options.torch_threads or max(1, (os.cpu_count() or 1) // options.workers)

    def tune(info: VersionInfo) -> None:
        if info.flavor in ("sentence_transformers", "transformers"):
            torch = sys.modules.get("torch")
            if torch is not None:
                torch.set_num_threads(torch_threads)
            return
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=options.threads, user_api="openmp")
        threadpool_limits(limits=options.threads, user_api="blas")

    return tune
