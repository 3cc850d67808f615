"""The composition root: settings in, a wired client out.

Only entry points (the Python API in ``berth/__init__.py``, the CLI, the server) and tests build a
:class:`Berth`; everything below receives what it needs from here.
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping, Sequence
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

    from berth.runtime.loading import LoadedModel


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


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
