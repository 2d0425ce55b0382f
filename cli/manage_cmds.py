"""Commands about a store's contents and integrity, wiring only: info, subset, tasks, verify,
export, import. Each builds its config (next to the library code it drives) from the flags,
calls the library, and prints text or JSON."""

from __future__ import annotations

from typing import Any

import typer

from losa_cache.cli.common import emit_json, human_bytes, table, user_errors
from losa_cache.cli.options import build, command, config_params, output_params
from losa_cache.store.hdf5 import ExportConfig, ImportConfig, export_hdf5, import_hdf5
from losa_cache.store.info import InfoConfig, TaskListConfig, store_info, task_summaries
from losa_cache.store.store import parse_storage_options
from losa_cache.store.subset import SubsetConfig, subset_store
from losa_cache.store.tasks import TaskAddConfig, add_task_from_file
from losa_cache.store.writer import VerifyConfig, verify_store

__all__ = ["export", "import_store", "info", "subset", "tasks_app", "verify"]


def _params(cls: type, json_help: str, *, quiet: bool = False) -> list[Any]:
    return [*config_params(cls), *output_params(json_help, quiet=quiet)]


def _info(json_out: bool, storage_options: str | None, **values: Any) -> None:
    with user_errors():
        (cfg,) = build(values, InfoConfig)
        d = store_info(cfg.store, parse_storage_options(storage_options), sources=cfg.sources)
    if json_out:
        return emit_json(d)
    typer.echo("\n".join(d["sources"]) if cfg.sources else _info_text(cfg, d))


def _info_text(cfg: InfoConfig, d: dict[str, Any]) -> str:
    out: list[str] = []
    out.append(
        f"store        {cfg.store}  ({'complete' if d['complete'] else 'INCOMPLETE'}: "
        f"{d['shards_done']}/{d['shards_total']} shards)"
    )
    fp = d["fingerprint"]
    out.append(
        f"backbone     {fp['model']}  weights sha256 {fp['weights_sha256'][:16]}...  "
        f"({fp['weights_source']})"
    )
    out.append(
        f"preprocess   {fp['input_size']} {fp['interpolation']} crop {fp['crop_pct']} "
        f"{fp.get('crop_mode') or ''} mean {fp['mean']} std {fp['std']}"
    )
    carved = (d["extract_config"] or {}).get("split")
    how = f"  (held out of train by --split {carved})" if carved else ""
    out.append(f"images       {d['num_images']:,}  splits {d['splits']}{how}")
    out.append(f"tokens       {d['token_layout']}")
    out.append(f"layers       {len(d['layers'])} of {d['depth']}: {d['layers']}")
    out.append(f"taps         {', '.join(d['taps'])} ({d['arrays']} arrays of (N, T, D))")
    if d["tap_layers"] != d["layers"]:
        out.append(f"tap blocks   {d['tap_layers']} (attn/mlp)")
    for e in d["extensions"]:
        state = "" if e["shards_done"] == e["shards_total"] else "  INCOMPLETE: rerun --extend"
        out.append(
            f"  added      {', '.join(e['taps'])}: {e['shards_done']}/{e['shards_total']} "
            f"shards{state}"
        )
    out.append(f"tasks        {d['tasks']}  (default {d['default_task']})")
    out.append(
        f"storage      {d['dtype']}, codec {d['codec']}, chunk {d['chunk_rows']} rows, "
        f"shard {d['shard_rows']} rows"
    )
    out.append(
        f"bytes        {human_bytes(d['bytes_stored'])} on disk, "
        f"{human_bytes(d['bytes_logical'])} of features: {d['size_note']}"
    )
    per_image, images = d["transfer_bytes_per_image"], d["num_images"]
    splits = ", ".join(f"{k} {human_bytes(per_image * n)}" for k, n in d["splits"].items())
    out.append(
        f"transfer     {per_image / 1e6:.3f} MB = {per_image / 2**20:.3f} MiB per image; "
        f"{human_bytes(per_image * images)} for the {images:,} images ({splits})"
    )
    out.append(f"integrity    {d['integrity']}")
    out.append(f"skipped      {len(d['skipped'])}")
    for s in d["skipped"][:20]:
        out.append(f"  row {s['row']}: {s['error']}")

    return "\n".join(out)


info = command(
    _info,
    _params(InfoConfig, "Print the summary as JSON."),
    """Images, splits,
    layers, tasks, fingerprint, progress, size and compression.

    Example: losa-cache info stores/cifar.zarr --json

    Example (a label file to fill in for `tasks add`): losa-cache info stores/cifar.zarr \
--sources > sources.txt
    """,
)


def _subset(json_out: bool, storage_options: str | None, **values: Any) -> None:
    with user_errors():
        (cfg,) = build(values, SubsetConfig)
        options = parse_storage_options(storage_options)
        d = subset_store(cfg.src, cfg.dst, cfg.layers, cfg.taps, cfg.dtype, cfg.rows, options,
                         options)  # fmt: skip
    if json_out:
        return emit_json(d)
    typer.echo(
        f"{cfg.dst}: {d['num_images']:,} images, taps {', '.join(d['taps'])}, {d['dtype']}; "
        f"wrote {d['shards_written']} of {d['shards_total']} shards "
        f"({human_bytes(d['bytes_written'])}); see: losa-cache info {cfg.dst}"
    )


subset = command(
    _subset,
    _params(SubsetConfig, "Print the summary as JSON."),
    """Copy part of
    a store (no backbone run): same fingerprint, checksummed, resumable.

    Example: losa-cache subset stores/inat.zarr s3://bucket/inat-sum4.zarr --taps sum:4 \
--dtype int8 --rows train,val
    """,
)

tasks_app = typer.Typer(
    help="Labellings of one store: many tasks, one extraction.", no_args_is_help=True
)


def _tasks_add(json_out: bool, storage_options: str | None, **values: Any) -> None:
    with user_errors():
        (cfg,) = build(values, TaskAddConfig)
        options = parse_storage_options(storage_options)
        summary = add_task_from_file(cfg.store, cfg.name, cfg.labels, cfg.overwrite, options)
    if json_out:
        return emit_json(summary)
    typer.echo(f"task {cfg.name!r}: {summary['labelled']:,} of {summary['rows']:,} rows "
               f"labelled, {len(summary['classes'])} classes")  # fmt: skip


tasks_app.command("add")(command(_tasks_add, _params(TaskAddConfig, "Print the summary as "
    "JSON."), """Attach a new labelling to existing features (no re-extraction).

    The file has one `<source> <label>` line per image; the sources are those
    `losa-cache info STORE --sources` prints; labels are integers or class names.
    Rows not listed get no label (-1) and are left out of training for this task.
    Changes are atomic (--overwrite keeps the old labelling until the new one is
    complete) and serialised: concurrent `tasks add` runs wait for each other.

    Example: losa-cache tasks add stores/cifar.zarr --name animal --labels animal.txt
    """))  # fmt: skip


def _tasks_list(json_out: bool, **values: Any) -> None:
    with user_errors():
        (cfg,) = build(values, TaskListConfig)
        rows = task_summaries(cfg.store)
    if json_out:
        return emit_json(rows)
    typer.echo(table([[r["name"], len(r["classes"]), r["labelled"]] for r in rows],
                     ["task", "classes", "labelled rows"]))  # fmt: skip


tasks_app.command("list")(command(_tasks_list, [*config_params(TaskListConfig), *output_params(
    "Print the tasks as JSON.", storage=False, quiet=False)], """List the tasks of a store with
    class counts.

    Example: losa-cache tasks list stores/cifar.zarr
    """))  # fmt: skip


def _verify(json_out: bool, quiet: bool, storage_options: str | None, **values: Any) -> None:
    with user_errors():
        (cfg,) = build(values, VerifyConfig)
        options = parse_storage_options(storage_options)
        report = verify_store(cfg.store, cfg.repair, options, progress=not quiet)
    if json_out:
        emit_json(report)
    else:
        typer.echo(_verify_text(report))
    if report["bad_shards"] and not report["repaired"]:
        raise typer.Exit(1)


def _verify_text(report: dict) -> str:
    n, total = report["shards_checked"], report["shards_total"]
    if not report["bad_shards"]:
        out = [f"{report['store']}: {n} of {total} shards checked, all match their checksums"]
    else:
        out = [f"{report['store']}: {len(report['bad_shards'])} damaged shard(s) of {n} checked"]
    out += [f"  shard {bad['shard']} rows {bad['rows'][0]}-{bad['rows'][1] - 1} "
            f"{bad['array']}: {bad['reason']}" for bad in report["bad"]]  # fmt: skip
    if report["repaired"]:
        out.append("marked for repair: rerun the same `losa-cache extract` command")
    elif report["bad_shards"]:
        out.append("repair: losa-cache verify --repair STORE, then rerun the extract command")
    pending, partial = report["pending_shards"], report["partial_shards"]
    if pending:
        left = f", {len(partial)} with leftovers of an interrupted run" if partial else ""
        out.append(f"{len(pending)} shard(s) not extracted yet ({_ranges(pending)}){left}: "
                   "rerunning the extract command rewrites them whole")  # fmt: skip
    for taps, shards in report.get("pending_extension_shards", {}).items():
        if shards:
            out.append(f"taps {taps}: {len(shards)} shard(s) not written ({_ranges(shards)}): "
                       f"rerun `losa-cache extract ... --extend --taps {taps}`")  # fmt: skip
    return "\n".join(out)


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


verify = command(_verify, _params(VerifyConfig, "Print the report as JSON.", quiet=True),
                 """Re-read every finished shard and compare it with the checksums recorded
    at write time.

    Names damaged or truncated shards; exit code 1 if any are found and not repaired.
    Shards not extracted yet (or left by an interrupted run or repair) are listed too.
    With --repair, rerunning the same `losa-cache extract` command rewrites exactly those;
    a repair that is interrupted can simply be run again.

    Example: losa-cache verify stores/cifar.zarr --repair
    """)  # fmt: skip


def _export(json_out: bool, quiet: bool, storage_options: str | None, **values: Any) -> None:
    with user_errors():
        (cfg,) = build(values, ExportConfig)
        options = parse_storage_options(storage_options)
        summary = export_hdf5(cfg.store, cfg.out, options, not quiet, cfg.overwrite,
                              cfg.compression)  # fmt: skip
    if json_out:
        return emit_json(summary)
    typer.echo(f"wrote {cfg.out}: {summary['arrays']} arrays, {human_bytes(summary['bytes'])}")


export = command(_export, _params(ExportConfig, "Print the summary as JSON.", quiet=True),
                 """Copy a whole store (every array and attribute) into one HDF5 file.

    Example: losa-cache export stores/cifar.zarr --format hdf5 cifar.h5
    """)  # fmt: skip


def _import(json_out: bool, quiet: bool, storage_options: str | None, **values: Any) -> None:
    with user_errors():
        (cfg,) = build(values, ImportConfig)
        options = parse_storage_options(storage_options)
        summary = import_hdf5(cfg.h5, cfg.store, options, not quiet, cfg.overwrite)
    if json_out:
        return emit_json(summary)
    typer.echo(f"created {cfg.store}: {summary['arrays']} arrays, "
               f"{human_bytes(summary['bytes'])}")  # fmt: skip


import_store = command(_import, _params(ImportConfig, "Print the summary as JSON.", quiet=True),
                       """Recreate a store from an HDF5 export, bit-exact (same chunks, codecs,
    attributes).

    Example: losa-cache import cifar.h5 stores/cifar.zarr
    """)  # fmt: skip
