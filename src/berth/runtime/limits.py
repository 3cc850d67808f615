"""Characters per text: which texts are over a version's ``max_text_chars``, and cutting or
refusing them (the path's other limits, rows and time, are one comparison each in ``path``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from berth.errors import SchemaError

if TYPE_CHECKING:
    import pandas as pd

    from berth.config import RequestLimits
    from berth.registry.signature import Signature
    from berth.runtime.codecs import Columns
    from berth.runtime.routing import Target


def long_texts(
    signature: Signature, columns: Columns, limits: RequestLimits
) -> dict[str, np.ndarray[Any, Any]]:
    """Rows of each text feature longer than the limit allows (none without a limit)."""
    if limits.max_text_chars is None:
        return {}
    found = {}
    for feature in signature.inputs:
        if feature.dtype != "string" or feature.name not in columns:
            continue
        values = columns[feature.name]
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        rows = np.flatnonzero(lengths > limits.max_text_chars)
        if len(rows):
            found[feature.name] = rows
    return found


def too_long(
    target: Target, name: str, row: int, values: Any, limits: RequestLimits
) -> SchemaError:
    """The refusal of a text over the limit (``long_text = 'refuse'``), naming its row."""
    return SchemaError(
        f"{name!r} of row {row} has {len(values[row]):,} characters; {target.info.ref} takes "
        f"at most {limits.max_text_chars:,} (long_text = 'refuse')",
        feature=name,
    )


def cut_texts(
    frame: pd.DataFrame,
    columns: Columns,
    long: dict[str, np.ndarray[Any, Any]],
    limits: RequestLimits,
) -> np.ndarray[Any, Any]:
    """Cut the long texts in place of the frame's and the columns' values; the rows cut."""
    if not long:
        return np.empty(0, dtype=np.intp)
    size = limits.max_text_chars
    for name, rows in long.items():
        values = columns[name].copy()
        for row in rows.tolist():
            values[row] = values[row][:size]
        columns[name] = values
        frame[name] = values
    return np.unique(np.concatenate(list(long.values())))
