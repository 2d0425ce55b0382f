"""Commands about a store's integrity and portability: verify, export, import."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from losa_cache.cli.common import JsonOpt, QuietOpt, emit_json, human_bytes, user_errors
from losa_cache.cli.store_cmds import StorageOpt


class ExportFormat(str, Enum):
    hdf5 = "hdf5"


def verify(
    store: Annotated[str, typer.Argument(help="Store path or URL.")],
    repair: Annotated[
        bool, typer.Option(help="Clear the done markers of damaged shards (then rerun extract).")
    ] = False,
    storage_options: StorageOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Re-read every finished shard and compare it with the checksums recorded at write time.

    Names damaged or truncated shards; exit code 1 if any are found and not repaired.
    Shards not extracted yet (or left by an interrupted run or repair) are listed too.
    With --repair, rerunning the same `losa-cache extract` command rewrites exactly those;
    a repair that is interrupted can simply be run again.

    Example: losa-cache verify stores/cifar.zarr --repair
    """
    from losa_cache.store.store import parse_storage_options
    from losa_cache.store.writer import verify_store

    with user_errors():
        options = parse_storage_options(storage_options)
        report = verify_store(store, repair, options, progress=not quiet)
    if json_out:
        emit_json(report)
    else:
        _print_verify(report)
    if report["bad_shards"] and not report["repaired"]:
        raise typer.Exit(1)


def _print_verify(report: dict) -> None:
    n, total = report["shards_checked"], report["shards_total"]
    if not report["bad_shards"]:
        typer.echo(f"{report['store']}: {n} of {total} shards checked, all match their checksums")
    else:
        typer.echo(
            f"{report['store']}: {len(report['bad_shards'])} damaged shard(s) of {n} checked"
        )
    for bad in report["bad"]:
        typer.echo(
            f"  shard {bad['shard']} rows {bad['rows'][0]}-{bad['rows'][1] - 1} "
            f"{bad['array']}: {bad['reason']}"
        )
    if report["repaired"]:
        typer.echo("marked for repair: rerun the same `losa-cache extract` command")
    elif report["bad_shards"]:
        typer.echo("repair: losa-cache verify --repair STORE, then rerun the extract command")
    pending, partial = report["pending_shards"], report["partial_shards"]
    if pending:
        left = f", {len(partial)} with leftovers of an interrupted run" if partial else ""
        typer.echo(
            f"{len(pending)} shard(s) not extracted yet ({_ranges(pending)}){left}: rerunning "
            "the extract command rewrites them whole"
        )
    for taps, shards in report.get("pending_extension_shards", {}).items():
        if shards:
            typer.echo(
                f"taps {taps}: {len(shards)} shard(s) not written ({_ranges(shards)}): rerun "
                f"`losa-cache extract ... --extend --taps {taps}`"
            )


def _ranges(shards: list[int]) -> str:
    """``[1, 2, 3, 7]`` as ``"shards 1-3, 7"`` (the first ten runs)."""
    runs: list[list[int]] = []
    for s in shards:
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    text = ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs[:10])
    return "shards " + text + (", ..." if len(runs) > 10 else "")


def export(
    store: Annotated[str, typer.Argument(help="Store path or URL.")],
    out: Annotated[Path, typer.Argument(help="HDF5 file to write.")],
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="Output format.")
    ] = ExportFormat.hdf5,
    compression: Annotated[
        str | None, typer.Option(help="HDF5 compression: gzip | lzf (default: none).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
    storage_options: StorageOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Copy a whole store (every array and attribute) into one HDF5 file.

    Example: losa-cache export stores/cifar.zarr --format hdf5 cifar.h5
    """
    from losa_cache.store.hdf5 import export_hdf5
    from losa_cache.store.store import parse_storage_options

    with user_errors():
        options = parse_storage_options(storage_options)
        summary = export_hdf5(store, out, options, not quiet, overwrite, compression)
    if json_out:
        emit_json(summary)
    else:
        typer.echo(f"wrote {out}: {summary['arrays']} arrays, {human_bytes(summary['bytes'])}")


def import_store(
    h5: Annotated[Path, typer.Argument(help="HDF5 file written by `losa-cache export`.")],
    store: Annotated[
        str, typer.Argument(help="Store path or URL to create (a new or empty folder).")
    ],
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing losa-cache store (never other files).")
    ] = False,
    storage_options: StorageOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Recreate a store from an HDF5 export, bit-exact (same chunks, codecs, attributes).

    Example: losa-cache import cifar.h5 stores/cifar.zarr
    """
    from losa_cache.store.hdf5 import import_hdf5
    from losa_cache.store.store import parse_storage_options

    with user_errors():
        if not h5.is_file():
            raise FileNotFoundError(f"no HDF5 file at {h5}")
        options = parse_storage_options(storage_options)
        summary = import_hdf5(h5, store, options, not quiet, overwrite)
    if json_out:
        emit_json(summary)
    else:
        typer.echo(f"created {store}: {summary['arrays']} arrays, {human_bytes(summary['bytes'])}")
