"""What one request may ask of the path (issue 10, item 1): rows per request, characters per
text, a deadline, and large requests split into the micro-batcher's calls so that others are not
starved behind them. In-process paths over a real registry; the HTTP statuses through the app."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pandas as pd
import pytest
from tests.runtime.test_path import Tracing, frame, infer, model_of, register, with_pool

from berth.app import Berth, ServeOptions, build_server
from berth.config import ModelServing, PathOptions
from berth.errors import DeadlineExceededError, SchemaError, TooLargeError
from berth.runtime.path import InferencePath
from berth.runtime.pool import ModelPool
from berth.testing import asgi_client


class TextLength:
    """The length of each text: what it was given is what it answers."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, batch: pd.DataFrame) -> np.ndarray:
        self.calls.append(len(batch))
        return batch["text"].map(len).to_numpy(dtype=np.float64)


def register_text(client: Berth, name: str) -> None:
    client.register(TextLength(), name, training_data=["short", "a longer text"], trusted=True)


def texts(*values: str) -> dict[str, np.ndarray]:
    return {"text": np.asarray(values, dtype=object)}


# -- rows per request --------------------------------------------------------------------------


def test_a_request_over_the_row_limit_is_refused_naming_the_limit(client: Berth) -> None:
    register(client, Tracing(1.0), "rows")

    async def body(pool: ModelPool, path: InferencePath) -> None:
        ok = await infer(path, "rows", frame(*range(5)))
        assert len(ok.outputs["prediction"]) == 5
        with pytest.raises(TooLargeError, match=r"at most 5 rows a request and this one has 6"):
            await infer(path, "rows", frame(*range(6)))
        assert model_of(pool.served[("rows", 1)]).calls == [[0.0, 1.0, 2.0, 3.0, 4.0]]

    with_pool(client, body, {"rows": ModelServing(max_rows=5)})


def test_the_flavors_give_defaults_and_the_config_overrides_them(client: Berth) -> None:
    register(client, Tracing(1.0), "defaults")
    register_text(client, "words")
    path = InferencePath(
        client.registry, PathOptions(models={"words": ModelServing(timeout_s=5.0)})
    )
    tabular = path.limits(path.resolve_sync("defaults").info)
    assert (tabular.max_rows, tabular.max_text_chars, tabular.timeout_s) == (100_000, None, 30.0)
    # A plain Python model is tabular; a serving config gives it a text limit.
    words = path.limits(path.resolve_sync("words").info)
    assert (words.max_rows, words.timeout_s) == (100_000, 5.0)

    from berth.flavors import get_flavor

    text = get_flavor("sentence_transformers").limits
    assert (text.max_rows, text.max_text_chars, text.long_text) == (256, 10_000, "truncate")


# -- characters per text -----------------------------------------------------------------------


def test_long_texts_are_cut_said_in_the_result_and_recorded_as_predicted(client: Berth) -> None:
    register_text(client, "cut")

    async def body(pool: ModelPool, path: InferencePath) -> None:
        result = await infer(path, "cut", texts("tiny", "x" * 50, "twelve chars", "y" * 11))
        assert result.outputs["prediction"].tolist() == [4.0, 10.0, 10.0, 10.0]
        assert result.parameters == {"truncated": [1, 2, 3]}
        assert result.validated.record_inputs["text"].tolist() == [
            "tiny",
            "x" * 10,
            "twelve cha",
            "y" * 10,
        ]
        plain = await infer(path, "cut", texts("tiny"))
        assert plain.parameters == {}

    with_pool(client, body, {"cut": ModelServing(max_text_chars=10)})


def test_long_texts_are_refused_when_the_policy_says_so(client: Berth) -> None:
    register_text(client, "strict")
    serving = {"strict": ModelServing(max_text_chars=10, long_text="refuse")}

    async def body(pool: ModelPool, path: InferencePath) -> None:
        with pytest.raises(SchemaError, match=r"'text' of row 1 has 50 characters.*at most 10"):
            await infer(path, "strict", texts("tiny", "x" * 50))
        assert model_of(pool.served[("strict", 1)]).calls == []

    with_pool(client, body, serving)

    # The sync face with bad_rows="refuse" (batch jobs): the long rows are set aside with
    # their reasons, the others scored, positions kept in order.
    path = InferencePath(client.registry, PathOptions(models=serving), records=None)
    target = path.resolve_sync("strict")
    result = path.run_sync(
        target, texts("x" * 11, "ok", "y" * 12, "fine"), bad_rows="refuse", record=False
    )
    assert result.outputs["prediction"].tolist() == [2.0, 4.0]
    assert result.validated.bad_rows.tolist() == [0, 2]
    assert result.validated.kept is not None
    assert result.validated.kept.tolist() == [1, 3]
    assert "row 0 has 11 characters" in result.validated.reasons[0]
    assert "row 2 has 12 characters" in result.validated.reasons[1]


# -- the deadline ------------------------------------------------------------------------------


def test_a_request_past_its_deadline_fails_and_its_queued_work_is_dropped(
    client: Berth,
) -> None:
    register(client, Tracing(1.0, delay_s=0.4), "late")
    serving = {"late": ModelServing(timeout_s=0.15, max_batch_size=8, max_latency_ms=0.0)}

    async def body(pool: ModelPool, path: InferencePath) -> None:
        await path.resolve("late")  # loaded before the clock starts
        served = pool.served[("late", 1)]
        calls = model_of(served).calls
        first = asyncio.ensure_future(infer(path, "late", frame(1.0)))
        while not calls:  # the first call is under way; the second queues behind it
            await asyncio.sleep(0.005)
        with pytest.raises(DeadlineExceededError, match=r"deadline of 0.15 s"):
            await infer(path, "late", frame(2.0))
        with pytest.raises(DeadlineExceededError):
            await first  # under way when its deadline passed: its result is dropped
        assert served.batcher is not None
        for _ in range(500):  # the first call ends and the queue is looked at again
            if served.batcher.depth == 0:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert served.batcher.depth == 0
        assert calls == [[1.0]], calls  # the second request was never predicted

    with_pool(client, body, serving)


# -- large requests share the calls ------------------------------------------------------------


def test_a_large_request_goes_in_calls_of_the_batch_size_in_order(client: Berth) -> None:
    register(client, Tracing(1.0), "large")

    async def body(pool: ModelPool, path: InferencePath) -> None:
        result = await infer(path, "large", frame(*range(10), b=1.0))
        assert result.outputs["prediction"].tolist() == [float(i + 1) for i in range(10)]
        assert [len(c) for c in model_of(pool.served[("large", 1)]).calls] == [4, 4, 2]

    with_pool(client, body, {"large": ModelServing(max_batch_size=4)})


def test_a_small_request_is_not_starved_behind_a_large_one(client: Berth) -> None:
    register(client, Tracing(1.0, delay_s=0.03), "fair")

    async def body(pool: ModelPool, path: InferencePath) -> None:
        done: list[str] = []

        async def tagged(tag: str, data: pd.DataFrame) -> None:
            await infer(path, "fair", data)
            done.append(tag)

        large = asyncio.ensure_future(tagged("large", frame(*range(100))))
        await asyncio.sleep(0.05)  # the large request's first call is under way
        await tagged("small", frame(1000.0))
        assert done == ["small"]  # answered while the large request still had calls to go
        await large
        calls = model_of(pool.served[("fair", 1)]).calls
        # The small one went with one of the large one's parts, not after all 25 of them.
        position = next(i for i, call in enumerate(calls) if 1000.0 in call)
        assert position < 5, calls
        assert sum(len(c) for c in calls) == 101

    with_pool(client, body, {"fair": ModelServing(max_batch_size=4)})


# -- over HTTP: the statuses -------------------------------------------------------------------


def test_http_answers_413_422_504_and_says_what_was_cut(client: Berth) -> None:
    register(client, Tracing(1.0, delay_s=0.3), "slow")
    register_text(client, "words")
    options = ServeOptions(
        path=PathOptions(
            poll_interval_s=0,
            models={
                "slow": ModelServing(timeout_s=0.1, max_rows=2),
                "words": ModelServing(max_text_chars=5),
            },
        )
    )
    app = build_server(client.settings, options)

    async def go() -> None:
        async with asgi_client(app) as http:
            big = {"records": [{"a": 1.0, "b": 2.0}] * 3}
            r = await http.post("/v1/predict/slow", content=orjson.dumps(big))
            assert r.status_code == 413
            assert "at most 2 rows" in r.json()["error"]
            oip = {
                "inputs": [
                    {"name": name, "shape": [3], "datatype": "FP64", "data": [1, 2, 3]}
                    for name in ("a", "b")
                ]
            }
            r = await http.post("/v2/models/slow/infer", content=orjson.dumps(oip))
            assert r.status_code == 413, r.text
            one = {"records": [{"a": 1.0, "b": 2.0}]}
            r = await http.post("/v1/predict/slow", content=orjson.dumps(one))
            assert r.status_code == 504
            assert "deadline of 0.1 s" in r.json()["error"]
            r = await http.post(
                "/v1/predict/words", content=orjson.dumps({"texts": ["hi", "far too long"]})
            )
            assert r.status_code == 200, r.text
            assert r.json()["parameters"] == {"truncated": [1]}
            assert [p["prediction"] for p in r.json()["predictions"]] == [2.0, 5.0]
            tensor = {
                "inputs": [
                    {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["far too long"]}
                ]
            }
            r = await http.post("/v2/models/words/infer", content=orjson.dumps(tensor))
            assert r.status_code == 200, r.text
            assert r.json()["parameters"]["truncated"] == [0]

    asyncio.run(go())


def test_a_large_text_request_goes_in_parts_of_at_most_part_chars(client: Berth) -> None:
    register_text(client, "parts")
    lengths = [10, 10, 10, 5, 30, 1]

    async def body(pool: ModelPool, path: InferencePath) -> None:
        result = await infer(path, "parts", texts(*("x" * n for n in lengths)))
        assert result.outputs["prediction"].tolist() == [float(n) for n in lengths]
        # 20 characters a part: 10+10 | 10+5 | 30 (alone: a part has at least one row) | 1
        assert model_of(pool.served[("parts", 1)]).calls == [2, 2, 1, 1]
        small = await infer(path, "parts", texts("x" * 19))
        assert small.outputs["prediction"].tolist() == [19.0]
        assert model_of(pool.served[("parts", 1)]).calls[-1] == 1

    with_pool(client, body, {"parts": ModelServing(max_batch_size=8, part_chars=20)})


def test_texts_cut_in_a_batch_chunk_are_recorded_as_cut(client: Berth) -> None:
    """The sync face with an Arrow table (what batch jobs pass): the records keep the texts
    as predicted, not the Arrow strings as they came in."""
    import pyarrow as pa

    register_text(client, "arrow")
    path = InferencePath(
        client.registry, PathOptions(models={"arrow": ModelServing(max_text_chars=4)})
    )
    table = pa.table({"text": pa.array(["tiny", "much longer"], type=pa.string())})
    result = path.run_sync(path.resolve_sync("arrow"), table, bad_rows="refuse", record=False)
    assert result.outputs["prediction"].tolist() == [4.0, 4.0]
    assert result.parameters == {"truncated": [1]}
    assert list(result.validated.record_inputs["text"]) == ["tiny", "much"]
