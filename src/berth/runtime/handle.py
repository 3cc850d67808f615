"""What ``berth.load`` returns: one resolved version behind the one inference path."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from berth.runtime.codecs import to_columns
from berth.runtime.outputs import to_rows

if TYPE_CHECKING:
    from berth.registry.service import VersionInfo
    from berth.registry.signature import Signature
    from berth.runtime.path import InferencePath, Result
    from berth.runtime.routing import Target
    from berth.types import Outputs, Predictor


class ModelHandle:
    """A version resolved once (``berth.load("credit-risk")`` keeps answering with the version
    that ``production`` pointed at when it was loaded), predicting through the sync face of the
    inference path: the same validation, predictor call and output shapes as the server.

    ``record=True`` writes prediction records (mode ``library``) as every other mode does, each
    call's records durably in a file of its own before ``predict`` returns (compaction merges
    them later); off by default, since library calls are often tests, notebooks and evaluations
    rather than traffic.
    """

    def __init__(self, path: InferencePath, target: Target, *, record: bool = False) -> None:
        self.path = path
        self.target = target
        self.record = record

    @property
    def version(self) -> VersionInfo:
        return self.target.info

    @property
    def signature(self) -> Signature:
        return self.target.info.signature

    @property
    def predictor(self) -> Predictor:
        """The flavor's predictor, loaded (for inspection; predictions go through ``predict``)."""
        return self.path.pool.loaded_now(self.target.info).predictor

    def run(self, data: Any) -> Result:
        """Validate ``data`` (a DataFrame, records, ``{"records": ...}``, ``{"texts": ...}``,
        columns, a 2-D array in signature order, an Arrow table) and predict on it."""
        result = self.path.run_sync(
            self.target,
            to_columns(data, self.signature),
            mode="library",
            record=self.record,
            record_key=_call_key() if self.record else None,
        )
        if result.recorded is not None:
            result.recorded.result()
        return result

    def predict(self, data: Any) -> Outputs:
        return self.run(data).outputs

    def predict_records(self, data: Any) -> list[dict[str, Any]]:
        """One JSON-ready dict per row, probabilities keyed by class (as ``/v1/predict``)."""
        return to_rows(self.predict(data), self.signature)


def _call_key() -> str:
    import uuid

    from berth.runtime.record_writers import LIBRARY_PREFIX

    return f"{LIBRARY_PREFIX}{uuid.uuid4().hex}"
