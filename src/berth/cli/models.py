"""``berth models``: list, show, register, alias and delete versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from berth.errors import InvalidInputError
from berth.flavors import FLAVOR_NAMES, flavor_for_path, get_flavor
from berth.registry.references import parse_reference
from berth.registry.service import VersionInfo
from berth.registry.signature import Signature
from berth.runtime.files import read_input

from .context import client
from .output import bold, console, key_values, print_json, size, when

app = typer.Typer(
    help="Models and their versions in the registry.\n\n"
    "Example: berth models show credit-risk@production",
    no_args_is_help=True,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command("list")
def list_models(
    ctx: typer.Context,
    search: Annotated[
        str | None, typer.Option("--search", "-s", help="Only names or descriptions with this.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List models with their newest version and aliases.

    Example: berth models list --search credit
    """
    models = client(ctx).list_models(search)
    if as_json:
        print_json(models)
        return
    table = Table("model", "versions", "latest", "aliases", "updated", "description")
    for m in models:
        aliases = ", ".join(f"{a}→{v}" for a, v in m.aliases.items())
        table.add_row(
            m.name,
            str(m.versions),
            str(m.latest_version or "-"),
            aliases,
            when(m.updated_at),
            m.description,
        )
    if models:
        console.print(table)
    elif search:
        console.print(f"No model matches {search!r}.")
    else:
        console.print("No models yet. Try: berth demo")


@app.command("versions")
def versions(
    ctx: typer.Context,
    name: str,
    limit: Annotated[int, typer.Option(help="Show the newest N (0: all).", min=0)] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List the versions of a model, newest last.

    Example: berth models versions credit-risk --limit 10
    """
    found = client(ctx).list_versions(name)
    hidden = max(0, len(found) - limit) if limit else 0
    if as_json:
        print_json([_version_dict(v) for v in found[hidden:]])
        return
    table = Table("version", "aliases", "flavor", "metrics", "size", "created", "by")
    if hidden:
        table.caption = f"{hidden} older versions not shown; --limit 0 shows all"
    for v in found[hidden:]:
        metrics = ", ".join(f"{k}={val:.4g}" for k, val in sorted(v.metrics.items()))
        table.add_row(
            str(v.version),
            ", ".join(v.aliases),
            v.flavor,
            metrics,
            size(v.size_bytes),
            when(v.created_at),
            v.created_by,
        )
    console.print(table)


@app.command("show")
def show(ctx: typer.Context, ref: str, as_json: JsonFlag = False) -> None:
    """Show one version: signature, metrics, params, lineage. A bare name shows the newest.

    Example: berth models show credit-risk@production
    """
    c = client(ctx)
    info = c.get_version(ref)
    if as_json:
        print_json(_version_dict(info))
        return
    bold(info.ref, f"  aliases: {', '.join(info.aliases) or '-'}")
    console.print(f"flavor {info.flavor}, {size(info.size_bytes)}, sha256 {info.digest}")
    console.print(
        f"created {when(info.created_at)} by {info.created_by}{', trusted' if info.trusted else ''}"
    )
    if info.description:
        console.print(info.description)
    console.print(_signature_table(info.signature))
    for title, values in (("metrics", info.metrics), ("params", info.params), ("tags", info.tags)):
        if values:
            bold(title, " " + ", ".join(f"{k}={v}" for k, v in values.items()))
    data = info.lineage.get("training_data")
    if data:
        bold("training data", f" {data['rows']} rows, fingerprint {data['fingerprint'][:16]}…")
    code = info.lineage.get("code")
    if code:
        dirty = " (uncommitted changes)" if code.get("dirty") else ""
        bold("code", f" commit {code['commit'][:12]}{dirty}")
    env = info.lineage.get("environment", {})
    if env:
        packages = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items())
        bold("environment", f" Python {env.get('python')}; {packages}")
    latency = info.lineage.get("latency")
    if latency:
        bold("latency", " " + _latency(latency))


@app.command("history")
def history(ctx: typer.Context, name: str, as_json: JsonFlag = False) -> None:
    """Every alias move of a model: when, who, from which version to which.

    Example: berth models history credit-risk
    """
    events = client(ctx).alias_history(name)
    if as_json:
        print_json(events)
        return
    table = Table("when", "who", "alias", "from", "to")
    for e in events:
        table.add_row(
            when(e.at),
            e.actor,
            e.subject.split("@", 1)[1],
            str(e.details.get("from") or "-"),
            str(e.details.get("to") or "-"),
        )
    console.print(table)


@app.command("register")
def register(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A saved model file or folder.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Model name.")],
    flavor: Annotated[
        str | None,
        typer.Option(help=f"One of {', '.join(FLAVOR_NAMES)}; guessed from the file otherwise."),
    ] = None,
    training_data: Annotated[
        str | None,
        typer.Option(help="CSV/Parquet/JSONL of training features: signature and profile."),
    ] = None,
    signature: Annotated[
        Path | None, typer.Option(help="A signature JSON file (instead of --training-data).")
    ] = None,
    metric: Annotated[list[str], typer.Option(help="name=value, repeatable.")] = [],  # noqa: B006
    param: Annotated[list[str], typer.Option(help="name=value, repeatable.")] = [],  # noqa: B006
    tag: Annotated[list[str], typer.Option(help="name=value, repeatable.")] = [],  # noqa: B006
    description: str = "",
    alias: Annotated[
        list[str], typer.Option(help="Point this alias at the new version; repeatable.")
    ] = [],  # noqa: B006
    trusted: Annotated[
        bool, typer.Option(help="Allow formats that run code when loaded (pickle). Vet first.")
    ] = False,
    measure_latency: Annotated[
        bool,
        typer.Option(
            help="Load the saved model back and time it on rows of --training-data (shown by "
            "`models show`)."
        ),
    ] = True,
    range_policy: Annotated[
        list[str],
        typer.Option(
            help="What a value outside a numeric feature's range in --training-data does: warn "
            "(the default: predicted, listed in its record's warnings) or refuse (422), for "
            "every feature, or FEATURE=warn|refuse; repeatable."
        ),
    ] = [],  # noqa: B006
) -> None:
    """Register a saved model as the next version of NAME.

    Example: berth models register model.skops --name churn --training-data train.parquet
    --metric auc=0.91 --alias staging
    """
    if not path.exists():
        raise InvalidInputError(f"model path {str(path)!r} does not exist")
    c = client(ctx)
    if trusted:  # an admin's decision, taken before the file is read (reading may run it)
        from berth.runtime.registration import require_trust

        with c.acting():
            require_trust(trusted)
    chosen = flavor or flavor_for_path(path)
    model = get_flavor(chosen).read(path, trusted=trusted)
    sig = None
    if signature is not None:
        sig = Signature.from_dict(read_input(str(signature), "json"), source=str(signature))
    data = read_input(training_data) if training_data else None
    metrics: dict[str, float] = {}
    for key, value in key_values(metric, "metric").items():
        try:
            metrics[key] = float(value)
        except ValueError:
            raise InvalidInputError(f"metric {key!r} must be a number, got {value!r}") from None
    info = c.register(
        model,
        name,
        flavor=chosen,
        signature=sig,
        training_data=data,
        metrics=metrics,
        params=key_values(param, "param"),
        tags=key_values(tag, "tag"),
        description=description,
        trusted=trusted,
        source=str(path.resolve()),
        measure_latency=measure_latency,
        range_policy=_range_policy(range_policy),
    )
    for a in alias:
        c.set_alias(name, a, info.version)
    aliases = f"; aliases: {', '.join(alias)}" if alias else ""
    console.print(f"registered {info.ref} ({info.flavor}, {size(info.size_bytes)}){aliases}")


@app.command("alias")
def alias(
    ctx: typer.Context,
    name: str,
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS")],
    version: Annotated[int | None, typer.Argument(help="Version to point at.")] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the alias.")] = False,
) -> None:
    """Point ALIAS of NAME at VERSION (or remove it with --delete). Servers follow the move.

    Example: berth models alias credit-risk production 2
    """
    c = client(ctx)
    if delete:
        removed = c.delete_alias(name, alias_name)
        console.print(f"removed {name}@{alias_name} (was version {removed})")
        return
    if version is None:
        raise InvalidInputError("give the VERSION to point the alias at, or --delete")
    before = c.set_alias(name, alias_name, version)
    moved = f"from version {before} " if before is not None else ""
    console.print(f"{name}@{alias_name} moved {moved}to version {version}")


@app.command("delete")
def delete(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="NAME/VERSION")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete one version (refused while an alias points at it). Numbers are never reused.

    Example: berth models delete credit-risk/1 --yes
    """
    reference = parse_reference(ref)
    if reference.version is None:
        raise InvalidInputError(f"name one version to delete, like {reference.name}/3")
    if not yes and not typer.confirm(f"Delete {ref}?"):
        raise typer.Exit(1)
    info = client(ctx).delete_version(reference.name, reference.version)
    console.print(f"deleted {info.ref}")


# -- berth models sign (issue 11: signed versions) -------------------------------------------


@app.command("sign")
def sign(
    ctx: typer.Context,
    ref: Annotated[
        str | None, typer.Argument(help="The version to sign (NAME/N, NAME@ALIAS, NAME).")
    ] = None,
    key: Annotated[
        Path | None, typer.Option("--key", help="The ed25519 private key (PEM) to sign with.")
    ] = None,
    generate_key: Annotated[
        Path | None,
        typer.Option(
            "--generate-key",
            help="Write a new private key here (and its public key beside it, NAME.pub.pem) "
            "instead of signing.",
        ),
    ] = None,
) -> None:
    """Sign a version with an ed25519 key, so that servers and clients configured with the
    public key (BERTH_SIGNING_PUBLIC_KEY) load it; unsigned or wrongly signed versions are
    refused there. The signature covers the version's name, number, digest, trust and its
    artifact's manifest. `openssl genpkey -algorithm ed25519 -out private.pem` makes a key too
    (public half: `openssl pkey -in private.pem -pubout -out public.pem`).

    Example: berth models sign --generate-key release.pem && berth models sign credit-risk/3
    --key release.pem
    """
    from berth.registry import access, signing

    if generate_key is not None:
        if ref is not None or key is not None:
            raise InvalidInputError("--generate-key makes a key only: sign with --key after")
        private, public = signing.generate_key(generate_key)
        fingerprint = signing.key_id(signing.load_public_key(public))
        console.print(f"wrote private key {private} (keep it secret) and public key {public}")
        console.print(f"key {fingerprint}: set BERTH_SIGNING_PUBLIC_KEY={public} on servers")
        return
    if ref is None or key is None:
        raise InvalidInputError("give the version to sign and --key PRIVATE.pem")
    c = client(ctx)
    with c.acting():
        principal = access.require("admin")  # a signature vouches for a version, as trust does
    info = c.get_version(ref)
    written = signing.sign_version(
        c.store,
        model=info.model,
        version=info.version,
        digest=info.digest,
        trusted=info.trusted,
        private_key=key,
        signed_by=principal.name,
    )
    public_id = signing.key_id(signing.load_private_key(key).public_key())
    console.print(f"signed {info.ref} (sha256 {info.digest[:12]}…) with key {public_id}: {written}")


# -- end of berth models sign --------------------------------------------------------------


def _range_policy(given: list[str]) -> Any:
    """``--range-policy refuse`` (every feature) or ``--range-policy age=refuse`` (repeatable);
    the values are checked by the registration."""
    whole = [g for g in given if "=" not in g]
    if not whole:
        return key_values(given, "--range-policy") or None
    if len(given) > 1:
        raise InvalidInputError(
            "--range-policy: give one policy for every feature, or FEATURE=POLICY options"
        )
    return whole[0]


def _signature_table(signature: Signature) -> Table:
    table = Table(
        "input", "dtype", "allowed", title=f"{signature.kind} signature", title_justify="left"
    )
    for f in signature.inputs:
        if f.categories:
            allowed = ", ".join(f.categories[:8]) + (" …" if len(f.categories) > 8 else "")
        elif f.minimum is not None or f.maximum is not None:
            allowed = f"[{f.minimum}, {f.maximum}]"
        else:
            allowed = "any" + (" or null" if f.nullable else "")
        if f.observed:
            allowed += f"; seen [{f.observed_minimum}, {f.observed_maximum}], {f.range_policy}"
        table.add_row(f.name, f.dtype, allowed)
    for o in signature.outputs:
        classes = ", ".join(map(str, o.classes)) if o.classes else ""
        table.add_row(f"→ {o.name}", f"{o.dtype} {list(o.shape)}", classes)
    return table


def _latency(figures: dict[str, Any]) -> str:
    """The registration's timing of the predictor alone (validation and transport come on top)."""
    text = (
        f"one row {figures['single_row_ms']:.3g} ms (median of {figures['single_row_calls']} "
        f"calls, p90 {figures['single_row_p90_ms']:.3g} ms)"
    )
    if "batch_rows" in figures:
        per_row = figures["batch_ms_per_row"]
        rows_per_s = f", {float(f'{1e3 / per_row:.3g}'):,.0f} rows/s" if per_row > 0 else ""
        text += f"; {figures['batch_rows']:,} rows at once {per_row * 1e3:.3g} µs a row{rows_per_s}"
    text += f"; load {figures['load_ms']:,.0f} ms"
    threads = figures.get("openmp_threads")
    if threads:
        text += f"; {threads} OpenMP thread{'s' if threads > 1 else ''}"
    return text + " (measured at registration)"


def _version_dict(v: VersionInfo) -> dict[str, object]:
    return {
        "ref": v.ref,
        "model": v.model,
        "version": v.version,
        "aliases": list(v.aliases),
        "flavor": v.flavor,
        "digest": v.digest,
        "size_bytes": v.size_bytes,
        "signature": v.signature.to_dict(),
        "metrics": v.metrics,
        "params": v.params,
        "tags": v.tags,
        "lineage": v.lineage,
        "description": v.description,
        "trusted": v.trusted,
        "created_at": v.created_at,
        "created_by": v.created_by,
    }
