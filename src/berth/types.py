"""Shared aliases and Protocols: the seams that layers meet at."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

if TYPE_CHECKING:  # numpy and pandas stay unimported until data flows
    import numpy.typing as npt
    import pandas as pd

JSON = dict[str, Any]
"""A JSON object as stored in metadata columns."""

Outputs: TypeAlias = "dict[str, npt.NDArray[Any]]"
"""Named output arrays of one batch, aligned with its rows (``label``, ``probabilities``...)."""


@runtime_checkable
class Predictor(Protocol):
    """A loaded model version behind one call.

    ``predict`` receives a batch that has already been validated against the version's signature
    (columns in signature order, dtypes coerced) and returns one array per declared output, each
    with ``len(batch)`` rows. Implementations must be safe to call from one thread at a time; the
    inference path serialises calls per version.
    """

    def predict(self, batch: pd.DataFrame) -> Outputs: ...
