"""The end of a job: its output put in place in one step, its bad rows in one CSV."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from berth.batch import sinks
from berth.batch.specs import JobSpec
from berth.registry.signature import Signature
from berth.runtime.outputs import flat_fields


def finish_output(
    spec: JobSpec, work: Path, streamed: Path | None, signature: Signature, bad: int
) -> None:
    outputs = work / "parts"
    if bad:  # first: a failure here leaves no output in place that a rerun would refuse
        write_errors(spec, work)
    if streamed is not None:
        sinks.place(streamed, spec.output, spec.overwrite)
    else:
        output_parts = sinks.parts(outputs)
        schema = _schema(output_parts) or _empty_output(spec, signature)
        sinks.assemble(spec.output, output_parts, schema, spec.overwrite)
    if not bad and spec.errors_file(work).exists() and spec.overwrite:
        spec.errors_file(work).unlink()  # an earlier run's, no longer true


def write_errors(spec: JobSpec, work: Path) -> None:
    """The bad rows of the finished chunks as one CSV, replaced in one rename."""
    errors_file = spec.errors_file(work)
    error_parts = sinks.parts(work / "errors")
    error_schema = _schema(error_parts)
    if error_schema is None:
        return
    tmp = errors_file.with_name(f".{errors_file.name}.berth-tmp")
    rows = (t for t in sinks.tables(error_parts) if t.num_rows)
    sinks.write_table_file("csv", rows, error_schema, tmp)
    tmp.replace(errors_file)


def _schema(parts: list[Path]) -> pa.Schema | None:
    """The parts' common schema: a chunk whose passthrough column held only nulls has a null
    column, which the other chunks' type absorbs."""
    schemas = [sinks.part_schema(p) for p in parts]
    if not schemas:
        return None
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        # A column that is a number in one chunk and text in another (a passthrough id that is
        # "A3" once): text for all, as within one chunk.
        kinds: dict[str, set[pa.DataType]] = {}
        for schema in schemas:
            for field in schema:
                kinds.setdefault(field.name, set()).add(field.type)
        fields = []
        for field in schemas[0]:
            known = kinds[field.name] - {pa.null()}
            kind = pa.string() if len(known) > 1 else next(iter(known), field.type)
            fields.append(pa.field(field.name, kind))
        return pa.schema(fields)


def _empty_output(spec: JobSpec, signature: Signature) -> pa.Schema:
    """The output's columns for an input without rows: typed as a non-empty run's would be
    (passthrough columns, whose type only data tells, as text)."""
    fields = [pa.field(name, pa.string()) for name in spec.passthrough]
    return pa.schema(fields + flat_fields(signature))
