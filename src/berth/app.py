"""The composition root: settings in, a wired client out.

Only entry points (the Python API in ``berth/__init__.py``, the CLI, the server) and tests build a
:class:`Berth`; everything below receives what it needs from here.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from berth.config import ModelServing, PathOptions, ServeOptions, Settings
from berth.errors import InvalidInputError, UnauthorizedError
from berth.registry import access
from berth.registry.access import Principal
from berth.registry.artifacts import ArtifactStore
from berth.registry.db import Database
from berth.registry.keys import Authenticator, KeyInfo, NewKey
from berth.registry.references import parse_reference
from berth.registry.service import AuditEvent, ModelSummary, Registry, VersionInfo
from berth.registry.signature import RangePolicy, Signature

if TYPE_CHECKING:
    import pandas as pd
    from fastapi import FastAPI

    from berth.batch.jobs import JobInfo, JobStore
    from berth.batch.pipeline import Progress
    from berth.batch.runner import BatchContext
    from berth.batch.specs import JobSpec
    from berth.runtime.handle import ModelHandle
    from berth.runtime.path import InferencePath
    from berth.runtime.records import RecordPolicy

T = TypeVar("T", bound=BaseModel)


class Berth:
    """A handle on one Berth home (metadata database plus artifact store).

    Every method acts as :attr:`principal`: with auth off (the embedded default) the local
    user, an admin named by the ``user`` setting; with auth on (``BERTH_AUTH``) the principal of
    the ``api_key`` setting (an API key or a token, verified like the server does), and nothing
    without one. The database is the boundary: whoever can open it can also turn auth off, so
    a principal here says who acts (the audit log's actor) and guards against mistakes.

    >>> client = Berth(Settings(home=Path("/tmp/berth-doc")))
    >>> [m.name for m in client.list_models()]  # doctest: +SKIP
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        record_policy: RecordPolicy | None = None,
        principal: Principal | None = None,
    ) -> None:
        """``record_policy`` applies to every prediction record this client's paths write
        (served, batch, library): the seam where privacy policies plug in. ``principal``
        overrides the one the settings give (an embedding application's own caller)."""
        self.settings = settings or Settings()
        self.record_policy = record_policy
        self.store = ArtifactStore(
            self.settings.resolved_artifact_root(), self.settings.signing_public_key
        )
        # With the store, a lost database is refused, not re-created empty beside its artifacts.
        self.db = Database(self.settings.resolved_database_url(), artifacts=self.store)
        self.registry = Registry(self.db, self.store)
        self._principal = principal
        self._auth: Authenticator | None = None
        self._path: InferencePath | None = None
        self._path_lock = threading.Lock()

    # -- who acts --------------------------------------------------------------------------------

    @property
    def auth(self) -> Authenticator:
        """Verifies keys and tokens against this home's ``api_keys`` table (and JWKS file)."""
        if self._auth is None:
            self._auth = Authenticator.from_settings(self.settings, self.db)
        return self._auth

    @property
    def principal(self) -> Principal:
        """Who this client acts as (resolved on first use). Raises ``UnauthorizedError`` when
        auth is on and no key was given, or the key is not good."""
        if self._principal is None:
            settings = self.settings
            if not settings.auth:
                self._principal = Principal(settings.user or access.local_user(), "admin")
            elif settings.api_key:
                self._principal = self.auth.principal(settings.api_key)
            else:
                raise UnauthorizedError(
                    "auth is on (BERTH_AUTH): act with a key, --api-key KEY or BERTH_API_KEY "
                    "(an admin creates one with berth keys create)"
                )
        return self._principal

    @property
    def actor(self) -> str:
        """The name the audit log records for this client's changes."""
        return self.principal.name

    @contextlib.contextmanager
    def acting(self) -> Iterator[Principal]:
        """Run the block as this client's principal (what each method does)."""
        with access.acting_as(self.principal) as principal:
            yield principal

    def create_key(
        self,
        name: str,
        role: str,
        *,
        scopes: Sequence[str] = (),
        expires_in: timedelta | None = None,
    ) -> NewKey:
        """A new API key (``NewKey.key`` is its only copy: give it to its holder now). Needs
        the ``keys`` permission (admin)."""
        with self.acting():
            return self.auth.keys.create(name, role, scopes=scopes, expires_in=expires_in)

    def list_keys(self) -> list[KeyInfo]:
        with self.acting():
            return self.auth.keys.list()

    def revoke_key(self, name: str) -> KeyInfo:
        """Revoke a key: refused at once here, by servers within their cache's few seconds."""
        with self.acting():
            return self.auth.keys.revoke(name)

    def close(self) -> None:
        if self._path is not None:
            self._path.close_sync()
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
        measure_latency: bool = True,
        range_policy: RangePolicy | Mapping[str, RangePolicy] | None = None,
    ) -> VersionInfo:
        """Save ``model`` as the next immutable version of ``name``.

        ``training_data`` gives the signature (when not given), the data fingerprint and the
        reference profile that drift monitoring compares traffic with. ``trusted=True`` allows
        formats that run code when loaded (pickle) and is recorded on the version. With
        ``training_data``, the saved model is also loaded back and timed on its rows (single rows
        and a batch: half a second of calls after the load, ten seconds at most, while a second
        copy of the model is in memory), stored as ``lineage["latency"]`` and shown by
        ``berth models show``; ``measure_latency=False`` skips it. A model that fails there only
        gets no figure.
        With ``training_data`` each numeric feature's observed range (minimum and maximum there)
        is stored in the signature; ``range_policy`` says what a request value outside it does:
        ``"warn"`` (the default: predicted, its prediction record lists the feature in
        ``warnings``) or ``"refuse"`` (a 422 naming the feature, value and range; a refused row
        in a batch job), for every numeric feature or per feature (``{"age": "refuse"}``).
        Raises ``InvalidInputError`` for a bad name, signature, metric or training data and
        ``UntrustedArtifactError`` when the model needs a code-executing format without trust.
        """
        from berth.runtime.registration import register_model  # imports data libraries

        with self.acting():
            # Before the artifact is written: a refused registration leaves nothing behind
            # (trust, an admin's decision, is checked by register_model before it reads a byte).
            access.require("register", name)
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
                measure_latency=measure_latency,
                range_policy=range_policy,
            )

    @property
    def path(self) -> InferencePath:
        """The inference path's sync face for this client (the CLI, batch jobs, ``load``):
        prediction records to the home, no server metrics, no alias poller."""
        with self._path_lock:
            if self._path is None:
                self._path = self._build_path()
            return self._path

    def _build_path(self) -> InferencePath:
        from berth.runtime.path import InferencePath
        from berth.runtime.records import RecordProducer

        records = RecordProducer(self.settings.resolved_records_root(), policy=self.record_policy)
        return InferencePath(
            self.registry,
            PathOptions(poll_interval_s=0),
            records=records,
            configure_threads=False,
        )

    def load(self, ref: str, *, record: bool = False) -> ModelHandle:
        """Resolve ``name`` (the production alias, else the newest version), ``name/3``,
        ``name@alias`` or ``name@latest`` once, and load it (every artifact byte checked
        against its SHA-256). ``record=True`` writes prediction records of its predictions."""
        from berth.runtime.handle import ModelHandle

        with self.acting():
            target = self.path.resolve_sync(ref)
        handle = ModelHandle(self.path, target, record=record)
        handle.predictor  # noqa: B018 - load now: a broken artifact fails here, not later
        return handle

    def get_version(self, ref: str) -> VersionInfo:
        """The version ``ref`` means now (the one rule of every entry point)."""
        from berth.runtime.routing import Resolver  # light: no data library

        with self.acting():
            return Resolver(self.registry).lookup(parse_reference(ref))

    def list_models(self, search: str | None = None) -> list[ModelSummary]:
        with self.acting():
            return self.registry.list_models(search)

    def list_versions(
        self, name: str, *, tags: Mapping[str, str] | None = None
    ) -> list[VersionInfo]:
        with self.acting():
            return self.registry.list_versions(name, tags=tags)

    def set_alias(self, name: str, alias: str, version: int) -> int | None:
        with self.acting():
            return self.registry.set_alias(name, alias, version, actor=self.actor)

    def delete_alias(self, name: str, alias: str) -> int:
        with self.acting():
            return self.registry.delete_alias(name, alias, actor=self.actor)

    def delete_version(self, name: str, version: int) -> VersionInfo:
        with self.acting():
            return self.registry.delete_version(name, version, actor=self.actor)

    def collect_garbage(self, older_than_s: float = 3600.0) -> dict[str, int]:
        with self.acting():
            return self.registry.collect_garbage(older_than_s=older_than_s, actor=self.actor)

    def get_profile(self, ref: str) -> dict[str, Any] | None:
        with self.acting():
            info = self.get_version(ref)
            return self.registry.get_profile(info.model, info.version)

    def alias_history(self, name: str) -> list[AuditEvent]:
        with self.acting():
            return self.registry.alias_history(name)

    # -- batch -----------------------------------------------------------------------------------

    @property
    def jobs(self) -> JobStore:
        from berth.batch.jobs import JobStore

        return JobStore(self.db)

    def batch_context(self) -> BatchContext:
        from berth.batch.runner import BatchContext

        return BatchContext(
            path=self.path,
            jobs=self.jobs,
            work_root=self.settings.resolved_batch_root(),
            artifact_root=self.store.root,
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

        with self.acting():
            return run_job(
                self.batch_context(),
                spec,
                resume=resume,
                progress=progress,
                schedule_id=schedule_id,
            )


# -- serving -----------------------------------------------------------------------------------

SERVE_OPTIONS_ENV = "BERTH_SERVE_OPTIONS"
"""JSON of :class:`ServeOptions`, handed to worker processes that uvicorn starts."""


def build_path(
    client: Berth, options: PathOptions, *, metrics_folder: Path | None = None
) -> InferencePath:
    """The inference path as a server or a stream consumer runs it: metrics, the queued record
    writer, the poller following alias moves, thread pools tuned per flavor. ``metrics_folder``:
    prometheus-client's multiprocess folder when this is one of several workers."""
    from berth.runtime.metrics import Metrics
    from berth.runtime.path import InferencePath
    from berth.runtime.record_writers import QueuedRecordWriter, RecorderLimits
    from berth.runtime.records import RecordProducer

    options = options.with_memory(client.settings.memory_budget())  # per process, each worker
    metrics = Metrics(metrics_folder)
    root = client.settings.resolved_records_root()
    limits = RecorderLimits(durable=client.settings.records_durable)
    queued = QueuedRecordWriter(root, limits, on_drop=metrics.records_dropped.inc)
    records = (
        RecordProducer(root, queued=queued, policy=client.record_policy) if options.record else None
    )
    return InferencePath(client.registry, options, records=records, metrics=metrics)


def build_server(
    settings: Settings,
    options: ServeOptions,
    *,
    record_policy: RecordPolicy | None = None,
    metrics_folder: Path | None = None,
) -> FastAPI:
    """The app ``berth serve`` runs. With ``metrics_folder`` (one of several workers) /metrics
    merges every worker's metrics, and this worker refreshes its queue gauges every second."""
    from berth.runtime.metrics import GaugeSampler
    from berth.server.app import create_app
    from berth.server.ratelimit import RateLimiter

    client = Berth(settings, record_policy=record_policy)
    path = build_path(client, options.path, metrics_folder=metrics_folder)
    # The server acts as no one: each request as the principal its credential names.
    auth = client.auth if settings.auth else None
    probes = settings.auth_open_probes
    limiter = RateLimiter.from_settings(settings)  # None: no limit set
    if metrics_folder is None:
        return create_app(
            path, options, on_shutdown=client.close, auth=auth, open_probes=probes, limiter=limiter
        )
    metrics = path.metrics
    assert metrics is not None
    sampler = GaugeSampler(lambda: metrics.sample(path.queue_depths(), path.records_queued))

    def shut_down() -> None:
        sampler.stop()
        client.close()

    sampler.start()
    return create_app(
        path, options, on_shutdown=shut_down, auth=auth, open_probes=probes, limiter=limiter
    )


def server_factory() -> FastAPI:
    """For ``uvicorn --factory`` in each worker process: settings and options from the env, and
    multiprocess metrics when ``PROMETHEUS_MULTIPROC_DIR`` names their folder (``berth serve
    --workers N`` sets both)."""
    from berth.runtime.metrics import MULTIPROCESS_ENV

    raw = os.environ.get(SERVE_OPTIONS_ENV)
    options = ServeOptions.model_validate_json(raw) if raw else ServeOptions()
    folder = os.environ.get(MULTIPROCESS_ENV)
    return build_server(Settings(), options, metrics_folder=Path(folder) if folder else None)


def read_serving_file(file: str) -> dict[str, ModelServing]:
    """``{"models": {"sentiment": {"max_batch_size": 32, "target_p99_ms": 80}}}`` in JSON or
    TOML; unlisted models take their flavor's defaults. Every mistake names the file and key."""
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
    if not isinstance(doc, dict) or set(doc) - {"models"}:
        raise InvalidInputError(f"serving config {file!r}: put per-model settings under 'models'")
    models = doc.get("models", {})
    if not isinstance(models, dict):
        raise InvalidInputError(f"serving config {file!r}: 'models' must map names to settings")
    return {
        name: declared(ModelServing, values, f"{file}: models.{name}")
        for name, values in models.items()
    }


def declared(cls: type[T], data: object, where: str) -> T:
    """``cls`` validated from ``data``; a mistake becomes one line naming the key."""
    from pydantic import ValidationError

    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        message = "unknown setting" if first.get("type") == "extra_forbidden" else first["msg"]
        raise InvalidInputError(f"{where}: {key}: {message}") from None
