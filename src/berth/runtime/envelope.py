"""The envelope of a request: what an adapter decodes before it knows which version will answer.

Decoding happens in two phases. First the envelope (who is asking, under which request id, for
which deployment, with which parameters), from which the path resolves the target version; only
then the inputs, against that version's signature. A traffic strategy (canary weights, sticky A/B
assignment by unit id, shadow) therefore sees the request before its tensors are decoded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from berth.errors import InvalidInputError


@dataclass(frozen=True)
class RequestContext:
    """What a router and the prediction records need to know of a request, in every mode."""

    unit_id: str | None = None
    """The unit of assignment (a user, an account): sticky A/B routing and per-unit analysis."""
    request_id: str | None = None
    """The caller's id of the request (OIP ``id``), kept with its records."""
    deployment: str | None = None
    """The deployment the request was addressed to, once deployments exist."""
    source_id: str | None = None
    """Where the inputs came from: a stream message id, a batch job's input row range."""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    """Request parameters (OIP ``parameters``), for strategies and policies that read them."""


NO_CONTEXT = RequestContext()


MAX_UNIT_ID_CHARS = 256
"""The longest unit id accepted: ids of users or accounts, kept in every prediction record."""


def first_unit_id(*candidates: object) -> str | None:
    """The first unit id given, in the adapter's order of precedence (body before header).

    The one rule of every API and of the header form: a unit id is a string of 1 to
    :data:`MAX_UNIT_ID_CHARS` characters. Anything else is refused by name, wherever it came
    from (a number is not turned into a string: ``5`` and ``"5"`` would then be one unit in a
    sticky assignment while the caller sent two kinds of value)."""
    for value in candidates:
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidInputError(
                f"'unit_id' must be a string, not {type(value).__name__} {value!r:.40}"
                + (f' (send "{value}")' if type(value) in (int, float) else "")
            )
        if not value:
            raise InvalidInputError("'unit_id' must not be empty")
        if len(value) > MAX_UNIT_ID_CHARS:
            raise InvalidInputError(
                f"'unit_id' is {len(value)} characters, over the limit of {MAX_UNIT_ID_CHARS}"
            )
        return value
    return None
