"""Fixtures for the realtime server: Berth homes with small real models, and in-process clients.

Each home is built once per session (models are registered once); each test module builds its own
app from it, so a module loads its models once and no module sees another's server state.

Models in the shared home (``served``, served by ``app`` and ``http``), tabular only, so that most
server tests never load torch:

- ``credit``: a scikit-learn pipeline on float64, float32, int64, int32, bool and a categorical
  string feature; v1 is ``production``, v2 is ``staging`` (and the newest).
- ``numeric``: logistic regression on numbers only (float64 and int64), two versions and no alias,
  so one 2-D FP64 tensor can carry a whole row and "no version" means the newest (v2).

The text home (``served_text``, served by ``text_app`` and ``text_http``, for tests marked
``text``) holds the same two tabular models and:

- ``sentiment``: the session MiniLM encoder with a logistic-regression head, ``production``.
"""

from __future__ import annotations

import contextlib
import functools
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from berth.app import Berth, ServeOptions, build_server
from berth.config import PathOptions, Settings
from berth.runtime.record_reader import RecordReader
from berth.testing import asgi_client

if TYPE_CHECKING:
    from berth.flavors.sentence_transformers import SentenceClassifier

HEADER_LENGTH = "Inference-Header-Content-Length"

CREDIT_FEATURES = ("income", "rate", "age", "accounts", "owner", "purpose")
CREDIT_DTYPES = {
    "income": "FP64",
    "rate": "FP32",
    "age": "INT64",
    "accounts": "INT32",
    "owner": "BOOL",
    "purpose": "BYTES",
}
PURPOSES = ("car", "home", "study")
NUMERIC_FEATURES = ("x0", "x1", "n")

TEXTS = [
    "The room was spotless and the staff were lovely.",
    "Terrible support, I waited an hour.",
    "What a wonderful, friendly place.",
    "Rude staff and a dirty room.",
    "I loved every minute of it.",
    "Awful food, never again.",
]
TEXT_LABELS = ["positive", "negative", "positive", "negative", "positive", "negative"]


def credit_frame(rows: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "income": rng.normal(50_000.0, 15_000.0, rows).round(2),
            "rate": rng.uniform(2.0, 20.0, rows).astype(np.float32),
            "age": rng.integers(18, 80, rows).astype(np.int64),
            "accounts": rng.integers(0, 12, rows).astype(np.int32),
            "owner": rng.random(rows) < 0.4,
            "purpose": rng.choice(np.array(PURPOSES, dtype=object), rows),
        }
    )


def credit_labels(frame: pd.DataFrame, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    score = (
        (frame["rate"].to_numpy() - 11.0) / 5.0
        - (frame["income"].to_numpy() - 50_000.0) / 15_000.0
        - 0.8 * frame["owner"].to_numpy()
        + 0.6 * (frame["purpose"].to_numpy() == "study")
        + rng.normal(0.0, 0.7, len(frame))
    )
    return np.where(score > 0, "yes", "no").astype(object)


def credit_model(frame: pd.DataFrame, labels: np.ndarray, c: float) -> Any:
    encode = make_column_transformer(
        (OneHotEncoder(), ["purpose"]),
        (StandardScaler(), ["income", "rate", "age", "accounts"]),
        remainder="passthrough",
    )
    return make_pipeline(encode, LogisticRegression(C=c, max_iter=2000)).fit(frame, labels)


def numeric_frame(rows: int = 200, seed: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x0": rng.normal(0.0, 1.0, rows),
            "x1": rng.normal(0.0, 1.0, rows),
            "n": rng.integers(0, 10, rows).astype(np.int64),
        }
    )


@dataclass(repr=False)
class Served:
    """A served home and the very objects registered there (to compare outputs with)."""

    home: Path
    credit_v1: Any
    credit_v2: Any
    numeric_v1: Any
    numeric: Any
    """Version 2 of ``numeric``, the newest."""
    credit_rows: pd.DataFrame
    numeric_rows: pd.DataFrame


@dataclass(repr=False)
class ServedText(Served):
    """The text home: the tabular models of ``Served`` and the ``sentiment`` text model."""

    sentiment: SentenceClassifier


def tabular_home(home: Path) -> Served:
    """Fit ``credit`` and ``numeric`` and register them in ``home``."""
    frame = credit_frame()
    labels = credit_labels(frame)
    numbers = numeric_frame()
    target = (numbers["x0"] + numbers["x1"] > 0).astype(int)
    served = Served(
        home,
        credit_v1=credit_model(frame, labels, c=1.0),
        credit_v2=credit_model(frame, labels, c=0.05),
        numeric_v1=LogisticRegression(C=0.01).fit(numbers, target),
        numeric=LogisticRegression(C=1.0).fit(numbers, target),
        credit_rows=frame.head(5),
        numeric_rows=numbers.head(4),
    )
    with Berth(Settings(home=home, user="tester")) as client:
        client.register(served.credit_v1, "credit", training_data=frame)
        client.register(served.credit_v2, "credit", training_data=frame)
        client.set_alias("credit", "production", 1)
        client.set_alias("credit", "staging", 2)
        client.register(served.numeric_v1, "numeric", training_data=numbers)
        client.register(served.numeric, "numeric", training_data=numbers)
    return served


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    """The shared home: tabular models only, so it never loads torch."""
    return tabular_home(tmp_path_factory.mktemp("served") / "home")


@pytest.fixture(scope="session")
def served_text(tmp_path_factory: pytest.TempPathFactory, minilm) -> ServedText:
    """A home of its own with the tabular models and ``sentiment`` (for tests marked ``text``)."""
    from berth.flavors.sentence_transformers import SentenceClassifier

    tabular = tabular_home(tmp_path_factory.mktemp("served-text") / "home")
    sentiment = SentenceClassifier(minilm, head=None, normalize=True)
    sentiment.head = LogisticRegression().fit(sentiment.embed(TEXTS), TEXT_LABELS)
    with Berth(Settings(home=tabular.home, user="tester")) as client:
        client.register(sentiment, "sentiment", training_data=TEXTS)
        client.set_alias("sentiment", "production", 1)
    return ServedText(**vars(tabular), sentiment=sentiment)


def make_app(home: Path, **options: Any) -> Any:
    """The app ``berth serve`` runs, without the alias poller and the access log."""
    path = {k: options.pop(k) for k in ("record", "poll_interval_s", "models") if k in options}
    path.setdefault("poll_interval_s", 0)
    options.setdefault("access_log", False)
    serve = ServeOptions(path=PathOptions(**path), **options)
    return build_server(Settings(home=home, user="tester"), serve)


class Http:
    """A synchronous face on an in-process httpx client whose event loop (and the app's
    lifespan) lives in an anyio portal thread, so module-scoped apps serve sync tests and
    hypothesis examples alike."""

    def __init__(
        self, portal: BlockingPortal, client: httpx.AsyncClient, home: Path | None = None
    ) -> None:
        self.portal = portal
        self.client = client
        self.home = home  # the Berth home served, for tests that change it under the server

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self.portal.call(functools.partial(self.client.request, method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)


@contextlib.contextmanager
def in_process(app: Any, home: Path | None = None) -> Iterator[Http]:
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(asgi_client(app)) as client,
    ):
        yield Http(portal, client, home)


@pytest.fixture(scope="module")
def app(served: Served) -> Any:
    return make_app(served.home)


@pytest.fixture(scope="module")
def http(app: Any, served: Served) -> Iterator[Http]:
    with in_process(app, served.home) as client:
        yield client


@pytest.fixture(scope="module")
def text_app(served_text: ServedText) -> Any:
    return make_app(served_text.home)


@pytest.fixture(scope="module")
def text_http(text_app: Any, served_text: ServedText) -> Iterator[Http]:
    with in_process(text_app, served_text.home) as client:
        yield client


# -- prediction records ------------------------------------------------------------------------


def wait_for_records(
    home: Path, ids: dict[str, set[str]], timeout: float = 20.0
) -> dict[str, dict]:
    """The writer flushes every couple of seconds, off the request path: poll until every id
    (per model) is on disk; returns the rows by prediction id."""
    deadline = time.monotonic() + timeout
    wanted = sum(len(v) for v in ids.values())
    while True:
        found = {
            r["prediction_id"]: r
            for model, pids in ids.items()
            for r in RecordReader(home / "records").read(model).to_pylist()
            if r["prediction_id"] in pids
        }
        if len(found) == wanted or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


# -- OIP helpers -------------------------------------------------------------------------------


def tensor(name: str, datatype: str, values: Any, shape: list[int] | None = None) -> dict:
    data = list(values)
    return {
        "name": name,
        "datatype": datatype,
        "shape": shape or [len(data)],
        "data": data,
    }


def credit_tensors(rows: pd.DataFrame) -> list[dict]:
    """One JSON tensor per feature, each in the datatype of the feature's dtype."""
    return [tensor(f, CREDIT_DTYPES[f], rows[f].tolist()) for f in CREDIT_FEATURES]


def outputs_of(body: dict) -> dict[str, dict]:
    return {o["name"]: o for o in body["outputs"]}


def as_array(output: dict) -> np.ndarray:
    return np.asarray(output["data"]).reshape(output["shape"])


def binary_tensor(name: str, datatype: str, values: np.ndarray) -> tuple[dict, bytes]:
    """A tensor header and its raw little-endian bytes (BYTES: 4-byte LE length + UTF-8)."""
    if datatype == "BYTES":
        blob = b"".join(
            struct.pack("<I", len(b)) + b for b in (str(v).encode() for v in values.ravel())
        )
    else:
        dtype = {
            "FP64": "<f8",
            "FP32": "<f4",
            "INT64": "<i8",
            "INT32": "<i4",
            "BOOL": "|b1",
        }[datatype]
        blob = np.ascontiguousarray(values, dtype=dtype).tobytes()
    header = {
        "name": name,
        "datatype": datatype,
        "shape": list(values.shape),
        "parameters": {"binary_data_size": len(blob)},
    }
    return header, blob


def binary_request(doc: dict, blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps(doc)
    return head + b"".join(blobs), {
        HEADER_LENGTH: str(len(head)),
        "Content-Type": "application/octet-stream",
    }


def split_binary_response(response: httpx.Response) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse a binary-extension response into its JSON header and the outputs as arrays."""
    length = int(response.headers[HEADER_LENGTH])
    head = orjson.loads(response.content[:length])
    blob = memoryview(response.content)[length:]
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for out in head["outputs"]:
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:
            arrays[out["name"]] = as_array(out)
            continue
        raw = bytes(blob[offset : offset + size])
        offset += size
        if out["datatype"] == "BYTES":
            items, pos = [], 0
            while pos < len(raw):
                (n,) = struct.unpack_from("<I", raw, pos)
                items.append(raw[pos + 4 : pos + 4 + n].decode())
                pos += 4 + n
            arrays[out["name"]] = np.array(items, dtype=object).reshape(out["shape"])
        else:
            dtype = {"FP64": "<f8", "FP32": "<f4", "INT64": "<i8", "INT32": "<i4"}[out["datatype"]]
            arrays[out["name"]] = np.frombuffer(raw, dtype=dtype).reshape(out["shape"])
    assert offset == len(blob), "the response declares fewer binary bytes than it carries"
    return head, arrays


def assert_error(response: httpx.Response, status: int, *fragments: str) -> str:
    """``status`` with a JSON ``{"error": ...}`` body whose message holds every fragment."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str), body
    assert body["error"], body
    for fragment in fragments:
        assert fragment in body["error"], (fragment, body["error"])
    return body["error"]
