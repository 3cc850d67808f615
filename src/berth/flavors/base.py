"""The flavor seam: how one framework's model is saved into an artifact and loaded back.

A flavor never touches the registry or the database: it writes files into a folder it is given and
reads them back from a folder it is given. The registration service seals the folder into the
content-addressed store and records the options that ``save`` returns.
"""

from __future__ import annotations

import abc
import importlib
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
import orjson

from berth.config import BatchingConfig, RequestLimits, ThreadLimits
from berth.errors import InvalidInputError, MissingExtraError, UntrustedArtifactError
from berth.registry.profile import Embedder
from berth.registry.signature import Dtype, Output, Signature
from berth.types import Predictor

TABULAR_BATCHING = BatchingConfig(max_batch_size=1024, max_latency_ms=0.0)
"""Tabular models never wait (a lone request runs at once) but take together whatever queued
while the previous call ran: under load that tripled credit-risk's throughput on two cores.
Up to 1,024 rows a call, so that requests of many rows share calls too (with 32, a 64-row
request went alone every time): a tree ensemble pays per call (a Python-level step per tree)
far more than per row, and 1,024 rows take a few milliseconds."""

TEXT_BATCHING = BatchingConfig(max_batch_size=32, max_latency_ms=5.0, part_chars=8_192)
"""Transformers gain several-fold from batches, worth a short wait for company. A large request
goes in parts of 32 texts or 8,192 characters (4 texts of 300 words), whichever comes first: 32
texts cut at 256 tokens took seconds a part, which a sentence sent meanwhile waited."""

TABULAR_LIMITS = RequestLimits(max_rows=100_000, timeout_s=30.0)
"""100,000 rows take a tree ensemble a second or two; a 10 MB body holds about 15,000 rows of
30 features anyway. More belongs in `berth batch run`."""

TEXT_LIMITS = RequestLimits(max_rows=256, max_text_chars=10_000, timeout_s=60.0)
"""A MiniLM reads 256 tokens of a text (its tokenizer cuts the rest): 10,000 characters is
about 1,500 words, past what any 512-token encoder reads, so the cut changes no prediction and
only saves tokenizing. 256 texts of that length take about 10 s on two cores here; 1,000 took
55 s with 1.2 GB of memory."""

Modality = Literal["tabular", "text"]

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".cloudpickle", ".bin", ".pt", ".pth", ".ckpt")
"""Files that Python's unpickler reads (PyTorch's ``.bin``/``.pt`` weights are pickles too):
loading one runs whatever code it names, so only a trusted version may hold one."""

TRUSTED_TYPES = "trusted_types.json"
"""The file, inside an artifact, that lists the types each skops file of it may load
(``{"format": 1, "files": {"model.skops": [...]}}``). It is written before the artifact is
sealed, so the content hash covers it: a list changed on disk fails the SHA-256 check, and the
loader never reads a list from the database."""

IMPORT_LOCK = threading.RLock()
"""Held while a flavor imports its framework, so that imports from loader threads never interleave
with one that temporarily hides a module (see ``sklearn.import_skops``)."""


class Flavor(abc.ABC):
    """One framework's save and load.

    Subclasses set ``name`` (stored with each version), ``extra`` (the pip extra that installs the
    framework) and ``packages`` (distributions whose versions are recorded in lineage).
    """

    name: ClassVar[str]
    extra: ClassVar[str]
    packages: ClassVar[tuple[str, ...]] = ()
    modality: ClassVar[Modality] = "tabular"
    """What the models take: named features, or text."""
    batching: ClassVar[BatchingConfig] = TABULAR_BATCHING
    """How the server groups concurrent requests for a version of this flavor by default."""
    limits: ClassVar[RequestLimits] = TABULAR_LIMITS
    """What one request may ask of a version of this flavor by default."""

    @abc.abstractmethod
    def matches(self, model: object) -> bool:
        """Whether ``model`` is an object of this flavor's framework (no heavy import needed)."""

    @abc.abstractmethod
    def save(self, model: object, path: Path, *, trusted: bool) -> dict[str, Any]:
        """Write ``model`` into the empty folder ``path``; return the options ``load`` needs.

        Raises ``UntrustedArtifactError`` when saving would need a format that runs code on load
        (pickle) and ``trusted`` is false.
        """

    @abc.abstractmethod
    def load(self, path: Path, options: dict[str, Any], signature: Signature) -> Predictor:
        """Load what ``save`` wrote; the folder has already passed its SHA-256 check."""

    def read(self, source: Path, *, trusted: bool) -> object:
        """Load a user's saved model file or folder into a framework object, for registration."""
        raise InvalidInputError(f"the {self.name} flavor cannot register from a file; use the API")

    def outputs(self, model: object, signature: Signature) -> list[Output]:
        """The arrays ``predict`` will return, with classes for classifiers."""
        return []

    def signature(self, model: object) -> Signature | None:
        """A signature the model declares itself (text models, typed ONNX graphs), if any."""
        return None

    def embedder(self, model: object) -> Embedder | None:
        """For text models: a function from texts to embeddings, for the reference profile."""
        return None

    def requires_trust(self, options: dict[str, Any]) -> bool:
        """Whether loading runs code from the artifact (pickle), given what ``save`` returned."""
        return False

    def check_trust(self, path: Path, options: dict[str, Any], *, trusted: bool) -> None:
        """Refuse, before anything of the artifact at ``path`` is read, a version that is not
        trusted but would run code of the artifact's when loaded: one that holds a pickle
        (whatever the options in the database say), or whose format is one (``requires_trust``).
        Raises ``UntrustedArtifactError``."""
        if trusted:
            return
        found = pickled_files(path)
        if found:
            raise UntrustedArtifactError(
                f"its artifact holds {found[0]}, a pickle, which runs code when loaded, but it "
                "was not registered as trusted (an admin's trusted=True)"
            )
        if self.requires_trust(options):
            raise UntrustedArtifactError(
                "it loads with code execution but was not registered as trusted"
            )

    def configure_thread(self, limits: ThreadLimits) -> None:
        """Set the thread pools of the thread that will run this flavor's predictions. OpenMP
        keeps its thread count per thread, so a limit set anywhere else would not reach it: a
        single-row ``predict_proba`` of a gradient-boosting model on the default two OpenMP
        threads was 20x slower here, the threads fighting the server's own for two cores."""
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # without it, the libraries' own defaults
            return
        threadpool_limits(limits=limits.threads, user_api="openmp")
        threadpool_limits(limits=limits.threads, user_api="blas")

    # -- edge export (declared here; the edge deployment implements them per flavor) ----------

    def export_onnx(
        self, path: Path, options: dict[str, Any], signature: Signature, out: Path, *, opset: int
    ) -> ExportedModel:
        """Write the version at ``path`` as an ONNX graph into the empty folder ``out``.

        The graph takes the pre-processed inputs that :meth:`export_assets` describes and gives
        the outputs of the signature. Raises ``InvalidInputError`` when this flavor (or this
        model) has no ONNX form.
        """
        raise InvalidInputError(f"the {self.name} flavor cannot be exported to ONNX yet")

    def export_assets(self, path: Path, options: dict[str, Any], out: Path) -> list[str]:
        """Copy what a device needs beside the graph (a tokenizer, label names) into ``out``;
        the names written. Tabular flavors need nothing: their pre-processing comes from the
        signature."""
        return []

    def import_module(self, module: str) -> ModuleType:
        try:
            with IMPORT_LOCK:
                return importlib.import_module(module)
        except ImportError as exc:
            raise MissingExtraError(module, self.extra, f"the {self.name} flavor") from exc


class TextFlavor(Flavor):
    """A flavor of text models: they take one text feature, gain several-fold from batches, and
    run on torch, whose thread pool is process-wide."""

    modality = "text"
    batching = TEXT_BATCHING
    limits = TEXT_LIMITS

    def configure_thread(self, limits: ThreadLimits) -> None:
        """torch's pool is process-wide: the cores per worker less one (see ThreadLimits)."""
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(limits.torch())


@dataclass(frozen=True)
class ExportedModel:
    """What :meth:`Flavor.export_onnx` wrote."""

    graph: str
    """The ONNX file's name inside the output folder."""
    inputs: tuple[str, ...]
    """The graph's input names, in the order the bundle's pre-processing feeds them."""
    outputs: tuple[str, ...]
    """The graph's output names, mapped onto the signature's outputs in order."""
    opset: int


def unreadable(source: Path, framework: str, exc: Exception) -> InvalidInputError:
    """A user's model folder its framework could not read, in one line: torch's and
    transformers' refusals (a weights-only unpickler, a damaged safetensors header, a missing
    file) are paragraphs whose first line says enough."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return InvalidInputError(f"{source}: {framework} cannot load it: {first}")


def pickled_files(folder: Path) -> list[str]:
    """The pickles under ``folder`` (relative paths, sorted), found by name: nothing is read."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file()
    )


def write_trusted_types(folder: Path, types: dict[str, list[str]]) -> None:
    """Write :data:`TRUSTED_TYPES` into an artifact being saved: per skops file of it, the
    types (beyond skops' own defaults) that loading it may build."""
    body = {"format": 1, "files": {name: sorted(set(t)) for name, t in types.items()}}
    (folder / TRUSTED_TYPES).write_bytes(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))


def sealed_trusted_types(folder: Path, file: str) -> list[str] | None:
    """The types the sealed artifact at ``folder`` trusts for its skops ``file``; ``None`` when
    the artifact has no list (registered before the lists were sealed). A list that is there but
    unreadable, or silent about ``file``, trusts nothing beyond skops' defaults."""
    try:
        raw = (folder / TRUSTED_TYPES).read_bytes()
    except FileNotFoundError:
        return None
    try:
        listed = orjson.loads(raw)["files"].get(file, [])
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return []
    return [str(t) for t in listed] if isinstance(listed, list) else []


def classifier_outputs(
    classes: npt.ArrayLike, probability_dtype: Dtype = "float64"
) -> list[Output]:
    labels = np.asarray(classes)
    values = tuple(v.item() if isinstance(v, np.generic) else v for v in labels.tolist())
    return [
        Output(name="label", dtype=dtype_name(labels), shape=(-1,), classes=values),
        Output(
            name="probabilities", dtype=probability_dtype, shape=(-1, len(values)), classes=values
        ),
    ]


def dtype_name(values: npt.NDArray[Any]) -> Dtype:
    """The signature dtype for a numpy array: object and unicode arrays are strings."""
    kind = values.dtype.kind
    if kind in "OUS":
        return "string"
    name = values.dtype.name
    return name if name in _DTYPES else "float64"  # type: ignore[return-value]


_DTYPES = {
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float32", "float64",
}  # fmt: skip
