"""Signatures: the typed input and output schema of a version.

A tabular signature names each feature with a dtype and, where the user declares them, an allowed
range or category set. Registration with training data also records each numeric feature's
observed range (its minimum and maximum there) and what a value outside it does: ``warn`` (the
default: the prediction is made and its record lists the feature, for monitoring) or ``refuse``
(a 422, or the row refused in a batch job). A declared range is always enforced. A text signature
has one string input, ``text``. Outputs name the arrays a predictor returns (``label``,
``probabilities``...) with their shapes and, for classifiers, classes. Validation against a
signature lives in ``berth.runtime.validation``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from berth.errors import InvalidInputError

if TYPE_CHECKING:
    import pandas as pd

Dtype = Literal[
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float32", "float64", "string",
]  # fmt: skip
NUMERIC: frozenset[str] = frozenset(
    ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64"]
)
TEXT_INPUT = "text"
RangePolicy = Literal["warn", "refuse"]
RANGE_POLICIES: tuple[RangePolicy, ...] = ("warn", "refuse")
# Below this many distinct values a string column is taken for a category set.
_MAX_INFERRED_CATEGORIES = 64


class Feature(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    dtype: Dtype
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    categories: tuple[str, ...] | None = None
    description: str = ""
    observed_minimum: float | None = None
    observed_maximum: float | None = None
    """The range of the training data (recorded at registration); see ``range_policy``."""
    range_policy: RangePolicy = "warn"
    """What a value outside the observed range does: ``warn`` (predicted; its record lists the
    feature in ``warnings``) or ``refuse`` (a 422 naming the feature, the value and the range,
    or with ``bad_rows="refuse"`` the row refused)."""

    @model_validator(mode="after")
    def _coherent(self) -> Feature:
        if self.categories is not None and self.dtype != "string":
            raise ValueError(f"feature {self.name!r}: categories need dtype 'string'")
        for lo, hi, what in (
            (self.minimum, self.maximum, "range"),
            (self.observed_minimum, self.observed_maximum, "observed range"),
        ):
            if (lo is not None or hi is not None) and self.dtype not in NUMERIC:
                raise ValueError(f"feature {self.name!r}: a {what} needs a numeric dtype")
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"feature {self.name!r}: {what} minimum is above maximum")
        return self

    @property
    def observed(self) -> bool:
        """Whether values are checked against an observed range."""
        return self.observed_minimum is not None or self.observed_maximum is not None


class Output(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    dtype: Dtype
    shape: tuple[int, ...] = (-1,)
    """-1 is the batch dimension; ``(-1, 2)`` is two values per row."""
    classes: tuple[str | int | float | bool, ...] | None = None


class Signature(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["tabular", "text"]
    inputs: tuple[Feature, ...]
    outputs: tuple[Output, ...] = ()
    unknown_categories: Literal["error", "allow"] = "error"
    """What an unseen category does: fail validation, or pass to the model as is."""

    @model_validator(mode="after")
    def _coherent(self) -> Signature:
        names = [f.name for f in self.inputs]
        if not names:
            raise ValueError("a signature needs at least one input")
        if len(set(names)) != len(names):
            raise ValueError("input names must be unique")
        if self.kind == "text" and (names != [TEXT_INPUT] or self.inputs[0].dtype != "string"):
            raise ValueError(f"a text signature has exactly one string input named {TEXT_INPUT!r}")
        return self

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.inputs]

    def feature(self, name: str) -> Feature:
        for f in self.inputs:
            if f.name == name:
                return f
        raise KeyError(name)

    def with_outputs(self, outputs: Sequence[Output]) -> Signature:
        return self.model_copy(update={"outputs": tuple(outputs)})

    def with_observed_ranges(
        self,
        ranges: Mapping[str, tuple[float, float]],
        policy: RangePolicy | Mapping[str, RangePolicy] | None = None,
    ) -> Signature:
        """A copy whose numeric features carry the observed ``ranges`` (by feature; a feature
        that already has an observed range keeps it) and the range ``policy``: one for every
        numeric feature, or some features' by name (the others keep theirs; the default is
        ``warn``). Raises ``InvalidInputError`` for a policy naming an unknown or non-numeric
        feature, an unknown policy, or a policy with no observed range to apply to."""
        policies = _range_policies(self, policy)
        features = []
        for f in self.inputs:
            update: dict[str, Any] = {}
            if f.dtype in NUMERIC and not f.observed and f.name in ranges:
                lo, hi = ranges[f.name]
                update |= {"observed_minimum": float(lo), "observed_maximum": float(hi)}
            if f.name in policies:
                update["range_policy"] = policies[f.name]
            features.append(Feature.model_validate({**f.model_dump(), **update}) if update else f)
        ranged = {f.name for f in features if f.observed}
        named = [] if isinstance(policy, str) else [n for n in policies if n not in ranged]
        if named or (policies and not ranged & set(policies)):
            which = f" for {', '.join(map(repr, named))}" if named else ""
            raise InvalidInputError(
                f"range_policy{which}: no observed range to apply it to (register with "
                "training_data=, where the ranges come from, or declare observed_minimum and "
                "observed_maximum in the signature)"
            )
        return self.model_copy(update={"inputs": tuple(features)})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=False)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "signature") -> Signature:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "signature"
            raise InvalidInputError(f"invalid {source}: {where}: {first['msg']}") from exc

    @classmethod
    def for_text(cls) -> Signature:
        return cls(kind="text", inputs=(Feature(name=TEXT_INPUT, dtype="string"),))


def _range_policies(
    signature: Signature, policy: RangePolicy | Mapping[str, RangePolicy] | None
) -> dict[str, RangePolicy]:
    """The policy of each feature it is set for, checked."""
    numeric = [f.name for f in signature.inputs if f.dtype in NUMERIC]
    if policy is None:
        return {}
    if isinstance(policy, str):
        if policy not in RANGE_POLICIES:
            raise InvalidInputError(
                f"range_policy {policy!r}: use one of {', '.join(RANGE_POLICIES)}, or a policy "
                "per feature"
            )
        given: Mapping[str, Any] = dict.fromkeys(numeric, policy)
        if not numeric:
            raise InvalidInputError("range_policy: the signature has no numeric feature")
    else:
        given = policy
    for name, value in given.items():
        if value not in RANGE_POLICIES:
            raise InvalidInputError(
                f"range_policy {value!r} for {name!r}: use one of {', '.join(RANGE_POLICIES)}"
            )
        if name not in signature.names:
            raise InvalidInputError(
                f"range_policy names unknown feature {name!r}; features: "
                f"{', '.join(signature.names)}"
            )
        if name not in numeric:
            raise InvalidInputError(
                f"range_policy for {name!r}: a range policy applies to numeric features only"
            )
    return dict(given)


def infer_signature(
    data: pd.DataFrame | Sequence[str],
    *,
    ranges: bool = False,
    unknown_categories: Literal["error", "allow"] = "error",
) -> Signature:
    """Infer a signature from training data.

    A DataFrame gives a tabular signature: numeric and boolean columns keep their dtype; string
    columns with few distinct values become category sets. ``ranges=True`` also turns the observed
    minimum and maximum into an enforced range, which is rarely what production wants. A sequence
    of strings gives a text signature.
    """
    import pandas as pd

    if not isinstance(data, pd.DataFrame):
        if isinstance(data, pd.Series):
            data = data.tolist()
        if isinstance(data, str) or not all(isinstance(t, str) for t in data):
            raise InvalidInputError("text training data must be a sequence of strings")
        return Signature.for_text()
    if data.shape[1] == 0:
        raise InvalidInputError("training data has no columns")
    features = [_infer_feature(str(name), data[name], ranges) for name in data.columns]
    return Signature(kind="tabular", inputs=tuple(features), unknown_categories=unknown_categories)


def _infer_feature(name: str, column: pd.Series, ranges: bool) -> Feature:
    import numpy as np
    import pandas as pd

    nullable = bool(column.isna().any())
    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return Feature(name=name, dtype="bool", nullable=nullable)
    if pd.api.types.is_numeric_dtype(dtype):
        np_name = np.dtype(getattr(dtype, "numpy_dtype", dtype)).name  # type: ignore[arg-type]
        if np_name not in NUMERIC:
            raise InvalidInputError(f"feature {name!r}: unsupported dtype {dtype}")
        lo = hi = None
        if ranges and column.notna().any():
            lo, hi = float(column.min()), float(column.max())
        if nullable and np_name.startswith(("int", "uint")):
            np_name = "float64"  # pandas turns a missing integer into NaN
        return Feature(name=name, dtype=np_name, nullable=nullable, minimum=lo, maximum=hi)  # type: ignore[arg-type]
    if isinstance(dtype, pd.CategoricalDtype):
        cats = tuple(str(c) for c in dtype.categories)
        return Feature(name=name, dtype="string", nullable=nullable, categories=cats)
    if pd.api.types.is_string_dtype(dtype) or dtype is np.dtype(object):
        values = column.dropna()
        if not values.map(lambda v: isinstance(v, str)).all():
            raise InvalidInputError(f"feature {name!r}: mixes strings with other types")
        distinct = values.unique()
        few = len(distinct) <= _MAX_INFERRED_CATEGORIES
        found = tuple(sorted(str(v) for v in distinct)) if few else None
        return Feature(name=name, dtype="string", nullable=nullable, categories=found)
    raise InvalidInputError(f"feature {name!r}: unsupported dtype {dtype}")
