"""The public Python API: a deliberate, sorted surface."""

from __future__ import annotations

from pathlib import Path

from tests.models import SumModel, numbers

import berth


def test_all_is_sorted_and_complete() -> None:
    assert berth.__all__ == sorted(berth.__all__)
    assert set(berth.__all__) == {
        "ArtifactIntegrityError", "BerthError", "ConflictError", "ForbiddenError",
        "InvalidInputError", "NotFoundError", "SchemaError", "UnauthorizedError",
        "UnavailableError", "UntrustedArtifactError", "__version__", "connect", "get_version",
        "list_models", "list_versions", "load", "register", "set_alias",
    }  # fmt: skip
    for name in berth.__all__:
        assert hasattr(berth, name), name


def test_module_functions_use_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BERTH_HOME", str(tmp_path / "env-home"))
    monkeypatch.setattr(berth, "_default", None)
    v = berth.register(SumModel(), "api-model", training_data=numbers(), trusted=True)
    berth.set_alias("api-model", "production", v.version)
    assert berth.get_version("api-model@production").version == 1
    assert [m.name for m in berth.list_models()] == ["api-model"]
    assert [x.version for x in berth.list_versions("api-model")] == [1]
    assert berth.load("api-model@production").predict({"a": [1.0], "b": [2.0]})[
        "prediction"
    ].tolist() == [3.0]
    assert (tmp_path / "env-home" / "berth.db").exists()
    berth._default.close()  # type: ignore[union-attr]
