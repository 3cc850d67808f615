"""Reading inputs from files and standard input: CSV, JSON, JSONL, Parquet; errors that name the
file and say how to fix the call."""

from __future__ import annotations

import io
import sys
import types
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

from berth.errors import InvalidInputError
from berth.runtime.files import read_input

FRAME = pd.DataFrame(
    {"age": [30.5, 41.0, 52.25], "plan": ["basic", "pro", "basic"], "visits": [1, 0, 7]}
)
RECORDS = [
    {"age": 30.5, "plan": "basic", "visits": 1},
    {"age": 41.0, "plan": "pro", "visits": 0},
    {"age": 52.25, "plan": "basic", "visits": 7},
]


def assert_same_table(frame: Any) -> None:
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["age", "plan", "visits"]
    assert frame.to_dict("records") == RECORDS
    assert frame["visits"].dtype.kind == "i"
    assert frame["age"].dtype.kind == "f"


# -- round trips -------------------------------------------------------------------------------


def test_csv(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    FRAME.to_csv(path, index=False)
    assert_same_table(read_input(str(path)))


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    FRAME.to_parquet(path)
    assert_same_table(read_input(str(path)))


@pytest.mark.parametrize("suffix", ["jsonl", "ndjson", "JSONL"])
def test_jsonl(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"rows.{suffix}"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in RECORDS) + b"\n\n")
    assert_same_table(read_input(str(path)))


@pytest.mark.parametrize("document", [RECORDS, {"records": RECORDS}, {"texts": ["a", "b"]}])
def test_json_gives_the_document(tmp_path: Path, document: Any) -> None:
    path = tmp_path / "payload.json"
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    assert read_input(str(path)) == document


def test_format_option_overrides_the_suffix(tmp_path: Path) -> None:
    path = tmp_path / "export.txt"
    FRAME.to_csv(path, index=False)
    assert_same_table(read_input(str(path), "csv"))


def test_format_option_wins_over_a_misleading_suffix(tmp_path: Path) -> None:
    path = tmp_path / "really-jsonl.json"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in RECORDS))
    assert_same_table(read_input(str(path), "jsonl"))


# -- errors ------------------------------------------------------------------------------------


def test_unknown_suffix_points_at_format_option(tmp_path: Path) -> None:
    path = tmp_path / "rows.xlsx"
    path.write_bytes(b"whatever")
    with pytest.raises(InvalidInputError) as exc:
        read_input(str(path))
    message = str(exc.value)
    assert "--format" in message
    assert "rows.xlsx" in message
    assert ".csv" in message


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "rows.csv"
    with pytest.raises(InvalidInputError) as exc:
        read_input(str(path))
    assert str(path) in str(exc.value)


def test_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"records": [1, 2')
    with pytest.raises(InvalidInputError) as exc:
        read_input(str(path))
    assert "invalid JSON" in str(exc.value)
    assert str(path) in str(exc.value)


def test_invalid_jsonl_names_the_file_line(tmp_path: Path) -> None:
    # The bad object is on line 3 of the file; "line 1" (of that object) would mislead.
    path = tmp_path / "rows.jsonl"
    path.write_text('{"age": 1}\n{"age": 2}\n{"age": \n')
    with pytest.raises(InvalidInputError) as exc:
        read_input(str(path))
    assert "invalid JSON" in str(exc.value)
    assert "line 3" in str(exc.value)


@pytest.mark.parametrize("content", ["1\n2\n", '"a"\n', "null\n"])
def test_jsonl_lines_must_be_objects(tmp_path: Path, content: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(content)
    with pytest.raises(InvalidInputError) as exc:
        read_input(str(path))
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("name", ["empty.csv", "empty.json", "empty.jsonl"])
@pytest.mark.parametrize("content", ["", "  \n\n"])
def test_empty_file(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InvalidInputError, match="is empty") as exc:
        read_input(str(path))
    assert name in str(exc.value)


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(InvalidInputError, match="Parquet") as exc:
        read_input(str(path))
    assert str(path) in str(exc.value)


def test_csv_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(b"a,b\n\xff\xfe,\x00\n")
    with pytest.raises(InvalidInputError, match="invalid CSV"):
        read_input(str(path))


def test_unknown_format_option(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    FRAME.to_csv(path, index=False)
    with pytest.raises(InvalidInputError, match="unknown format 'xml'"):
        read_input(str(path), "xml")


# -- standard input ----------------------------------------------------------------------------


@pytest.fixture
def stdin(monkeypatch: pytest.MonkeyPatch) -> Any:
    def feed(raw: bytes) -> None:
        monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(raw)))

    return feed


def test_stdin_json_document(stdin: Any) -> None:
    stdin(orjson.dumps({"records": RECORDS}, option=orjson.OPT_INDENT_2))
    assert read_input("-") == {"records": RECORDS}


def test_stdin_json_list(stdin: Any) -> None:
    stdin(b"  \n" + orjson.dumps(RECORDS))
    assert read_input("-") == RECORDS


def test_stdin_jsonl(stdin: Any) -> None:
    stdin(b"\n".join(orjson.dumps(r) for r in RECORDS) + b"\n")
    assert_same_table(read_input("-"))


def test_stdin_csv(stdin: Any) -> None:
    stdin(FRAME.to_csv(index=False).encode())
    assert_same_table(read_input("-"))


def test_stdin_format_option_skips_sniffing(stdin: Any) -> None:
    stdin(b'{"age": 1}\n')  # would sniff as one JSON document
    frame = read_input("-", "jsonl")
    assert isinstance(frame, pd.DataFrame)
    assert frame.to_dict("records") == [{"age": 1}]


def test_stdin_empty(stdin: Any) -> None:
    stdin(b" \n")
    with pytest.raises(InvalidInputError, match="standard input is empty"):
        read_input("-")


def test_stdin_invalid_json(stdin: Any) -> None:
    stdin(b"[1, 2")
    with pytest.raises(InvalidInputError, match="standard input: invalid JSON"):
        read_input("-")
