"""Settings and tuning value objects.

Settings are read from the environment (prefix ``BERTH_``) once, by the composition root, and passed
down explicitly; nothing below ``app.py`` reads the environment itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr
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
    records_durable: bool = Field(
        default=False,
        description=(
            "Answer a served request only once its prediction records are on disk, in a local "
            "log under the records folder (one sync per group of requests), so that a crash "
            "loses no answered prediction. Off: a crash loses the records of up to the last "
            "2 s (the writer's flush interval)."
        ),
    )
    batch_root: Path | None = Field(
        default=None,
        description=(
            "Work folders of running batch jobs (their checkpoints); default $BERTH_HOME/batch."
        ),
    )
    auth: bool = Field(
        default=False,
        description=(
            "Every request and command acts as a principal with a role (an API key from "
            "`berth keys create`, or a verified token) and is refused without the right one. "
            "Off (the embedded default): whoever runs the process or reaches the server is an "
            "admin; `berth serve` then refuses a non-loopback address without --insecure."
        ),
    )
    api_key: str | None = Field(
        default=None,
        description="The key the CLI and the Python API act with when auth is on.",
    )
    key_pepper: SecretStr | None = Field(
        default=None,
        description=(
            "Secret mixed into every stored API key hash (HMAC-SHA256), kept out of the "
            "database; default a random one in $BERTH_HOME/secrets/key-pepper, created on "
            "first use. Servers sharing a PostgreSQL database must all be given the same one."
        ),
    )
    auth_open_probes: bool = Field(
        default=True,
        description=(
            "With auth on, /v2/health/* and /metrics still answer clients on the loopback "
            "address without a key (probes, a local Prometheus); off: they need one."
        ),
    )
    jwks_file: Path | None = Field(
        default=None,
        description=(
            "JSON Web Key Set of an identity provider: bearer tokens that are JWTs signed by "
            "one of its keys are accepted (needs pip install 'berth[auth]')."
        ),
    )
    jwt_issuer: str | None = Field(default=None, description="Required 'iss' of a token.")
    jwt_audience: str | None = Field(default=None, description="Required 'aud' of a token.")
    jwt_role_claim: str = Field(
        default="berth_role", description="Claim that holds a token's Berth role."
    )
    jwt_groups_claim: str = Field(
        default="groups", description="Claim that lists a token's groups (see jwt_group_roles)."
    )
    jwt_group_roles: dict[str, str] = Field(
        default_factory=dict,
        description=(
            'Groups to roles, as JSON (BERTH_JWT_GROUP_ROLES=\'{"ml-admins": "admin"}\'): a '
            "token without the role claim gets the strongest role of its groups."
        ),
    )
    user: str | None = Field(
        default=None,
        description="Actor recorded in the audit log; default the operating-system user.",
    )
    rate_limits: RateLimits = Field(
        default_factory=lambda: RateLimits(),
        description=(
            "Requests per second and burst per principal on the server, as JSON "
            '(BERTH_RATE_LIMITS=\'{"roles": {"predictor": {"rate": 50, "burst": 100}}, '
            '"keys": {"batch-client": {"rate": 5, "burst": 5}}, "default": null}\'): a key '
            "(or token subject) listed by name takes its own limit, else its role's, else the "
            "default; each principal has its own bucket. Unset: no limit."
        ),
    )
    rate_limit_redis_url: str | None = Field(
        default=None,
        description=(
            "Redis URL (redis://127.0.0.1:6379/0) holding the rate limits' buckets, so that they "
            "hold across workers and replicas (needs pip install 'berth[redis]'); unset: each "
            "server process keeps its own."
        ),
    )
    rate_limit_redis_prefix: str = Field(
        default="berth:ratelimit:",
        description="Prefix of the buckets' Redis keys (one per Berth installation sharing it).",
    )

    signing_public_key: Path | None = Field(
        default=None,
        description=(
            "An ed25519 public key (PEM file): versions load only when signed with its private "
            "key (`berth models sign`); an unsigned or wrongly signed one is refused like a "
            "broken artifact (503 on the server). Unset: signatures are not checked."
        ),
    )
    max_unaliased_versions: int = Field(
        default=4,
        ge=1,
        description=(
            "Versions no alias points at (asked for by number, or a bare name's newest) that "
            "one server process keeps loaded at once; each worker of --workers N keeps its own. "
            "They load on demand and the least recently used idle one is unloaded to make room; "
            "aliased versions are never counted nor unloaded."
        ),
    )
    max_unaliased_mb: float | None = Field(
        default=None,
        gt=0.0,
        description=(
            "Memory budget of those versions in MB, per process, on each version's footprint "
            "measured at load (resident memory growth, at least its artifact's size); unset: "
            "the count alone bounds them."
        ),
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

    def memory_budget(self) -> MemoryBudget:
        """The on-demand versions' budget these settings give (for :class:`PathOptions`)."""
        mb = self.max_unaliased_mb
        return MemoryBudget(
            max_versions=self.max_unaliased_versions,
            max_bytes=None if mb is None else max(1, int(mb * 1024 * 1024)),
        )


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
    part_chars: int | None = Field(
        default=None,
        ge=1,
        description="A request over max_batch_size rows goes in parts of that many rows; for "
        "text models also of at most this many characters, so that a part of long texts takes "
        "about as long as a batch of sentences and a request behind it waits that, not more.",
    )

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1


LongText = Literal["truncate", "refuse"]
_D = TypeVar("_D", bound=_Declared)


class RequestLimits(_Declared):
    """What one request to a model may ask for, so that one client cannot hold the server:
    rows per request, characters per text, and time. Each flavor has defaults
    (``Flavor.limits``); a serving config file's ``models`` table overrides them per model."""

    max_rows: int = Field(
        default=100_000,
        ge=1,
        description="Rows (or texts) per request; more gets a 413 naming the limit. Files "
        "go through `berth batch run`, which has no such limit.",
    )
    max_text_chars: int | None = Field(
        default=None,
        ge=1,
        description="Characters per text for text models; None: no limit. Far more than an "
        "encoder reads (its tokenizer keeps its max length of tokens): the rest only costs "
        "tokenizing.",
    )
    long_text: LongText = Field(
        default="truncate",
        description="A longer text is cut (the response's parameters list which rows) or "
        "refused (422 naming the row).",
    )
    timeout_s: float | None = Field(
        default=30.0,
        gt=0.0,
        description="A request not answered within this gets a 504 and its work is dropped "
        "(taken off the queue, or its result discarded); None: no deadline.",
    )


class ModelServing(_Declared):
    """How one model is served, from the ``models`` table of a serving config file. Unset
    batching settings and limits take the flavor's defaults."""

    max_batch_size: int | None = Field(default=None, ge=1, description="See BatchingConfig.")
    max_latency_ms: float | None = Field(default=None, ge=0.0, description="See BatchingConfig.")
    target_p99_ms: float | None = Field(default=None, gt=0.0, description="See BatchingConfig.")
    part_chars: int | None = Field(default=None, ge=1, description="See BatchingConfig.")
    record: bool = Field(
        default=True,
        description="Write prediction records for this model (off for models whose inputs "
        "must not be kept at all).",
    )

    max_rows: int | None = Field(default=None, ge=1, description="See RequestLimits.")
    max_text_chars: int | None = Field(default=None, ge=1, description="See RequestLimits.")
    long_text: LongText | None = Field(default=None, description="See RequestLimits.")
    timeout_s: float | None = Field(
        default=None, gt=0.0, description="See RequestLimits (0 is not allowed; set a long one)."
    )

    def batching(self, default: BatchingConfig) -> BatchingConfig:
        """The flavor's default with the settings given here laid over it (a setting sent
        through JSON as null is one not given)."""
        return _laid_over(default, self.model_dump(exclude_none=True))

    def limits(self, default: RequestLimits) -> RequestLimits:
        """The flavor's limits with the ones given here laid over them."""
        return _laid_over(default, self.model_dump(exclude_none=True))


def _laid_over(default: _D, given: dict[str, object]) -> _D:
    """``default`` with the ``given`` values of its own fields instead."""
    mine = {k: v for k, v in given.items() if k in type(default).model_fields}
    if not mine:
        return default
    return type(default).model_validate({**default.model_dump(), **mine})


class ThreadLimits(_Declared):
    """Thread pools of a version's inference thread (see ``Flavor.configure_thread``)."""

    threads: int = Field(
        default=1,
        ge=1,
        description="OpenMP/BLAS threads per worker for tabular models: one request's "
        "predict_proba is fastest on one thread, and workers already use the cores.",
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="Threads for text models; default the cores per worker less one (at "
        "least one), the one left for the worker's event loop.",
    )
    workers: int = Field(default=1, ge=1, description="Server worker processes on this host.")

    def torch(self) -> int:
        """torch's threads meet at a barrier after every operator, so one of them off its core
        stalls them all: with two threads on two cores beside the server's own event loop (and
        whatever else runs there), sentiment at 16 connections did 29-34 req/s against 111-127
        with one thread, alternated in one run on a busy machine. So a core is left over."""
        if self.torch_threads:
            return self.torch_threads
        return max(1, (os.cpu_count() or 1) // self.workers - 1)


class MemoryBudget(_Declared):
    """What a server process keeps loaded of the versions no alias points at: at most
    ``max_versions`` of them and, when set, ``max_bytes`` of their measured footprints. One
    version is always allowed, however large, so that none is unservable."""

    max_versions: int = Field(
        default=4, ge=1, description="Unaliased versions loaded at once (see Settings)."
    )
    max_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Their footprints' sum in bytes; None: the count alone.",
    )


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
    memory: MemoryBudget | None = Field(
        default=None,
        description="Budget of the versions no alias points at; None: the settings' "
        "(BERTH_MAX_UNALIASED_VERSIONS, BERTH_MAX_UNALIASED_MB), filled in by the "
        "composition root of each process.",
    )

    def serving(self, model: str) -> ModelServing:
        return self.models.get(model) or ModelServing()

    def with_memory(self, default: MemoryBudget) -> PathOptions:
        """These options, with ``default`` as the budget unless one was given."""
        return self if self.memory is not None else self.model_copy(update={"memory": default})


class RateLimit(_Declared):
    """A token bucket: ``burst`` requests at once, refilled at ``rate`` a second."""

    rate: float = Field(gt=0.0, description="Requests per second, sustained.")
    burst: int = Field(default=1, ge=1, description="Requests at once from a full bucket.")


class RateLimits(_Declared):
    """Which :class:`RateLimit` a principal gets: its key's (or token subject's) name in
    ``keys``, else its role's in ``roles``, else ``default`` (also the limit of each client
    address when auth is off); none of them: not limited."""

    default: RateLimit | None = Field(default=None, description="Everyone else's limit.")
    roles: dict[Literal["admin", "deployer", "predictor", "viewer"], RateLimit] = Field(
        default_factory=dict, description="Limits by role."
    )
    keys: dict[str, RateLimit] = Field(
        default_factory=dict, description="Limits by key name or token subject."
    )

    @property
    def enabled(self) -> bool:
        return bool(self.default or self.roles or self.keys)


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


Settings.model_rebuild()  # its rate limits are declared below it
