"""Commands about backbones and stores: models, plan, extract, info, tasks, verify."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from losa_cache.cli.common import (
    JsonOpt,
    emit_json,
    human_bytes,
    human_seconds,
    table,
    user_errors,
)
from losa_cache.cli.options import build, command, config_params, output_params
from losa_cache.extract_config import DaskConfig, ExtractConfig

StorageOpt = Annotated[
    str | None,
    typer.Option(
        help='fsspec options for store URLs as JSON, e.g. \'{"endpoint_url": "http://..."}\' '
        "(default: $LOSA_CACHE_STORAGE_OPTIONS)."
    ),
]


def models(json_out: JsonOpt = False) -> None:
    """List backbone aliases with parameter counts and bytes per image-layer.

    Example: losa-cache models --json
    """
    from losa_cache.backbone import ALIASES, describe

    with user_errors():
        rows = [describe(a) | {"note": ALIASES[a].note} for a in ALIASES]
    if json_out:
        emit_json(rows)
        return
    typer.echo(
        table(
            [
                [
                    r["model"],
                    r["timm_name"],
                    f"{r['params'] / 1e6:,.1f}M",
                    r["depth"],
                    r["dim"],
                    r["tokens"],
                    human_bytes(r["bytes_per_image_layer_fp16"]),
                    r["note"],
                ]
                for r in rows
            ],
            ["alias", "timm name", "params", "depth", "dim", "tokens", "fp16/img/layer", "note"],
        )
    )
    typer.echo("\nAny timm ViT name works too, e.g. --model vit_small_patch16_224.augreg_in21k")


EXTRACT_DOC = """Run the frozen backbone once over a data set and write its block outputs.

    Rerunning the same command resumes: finished shards are kept, the rest is written.
    With --cluster/--scheduler each Dask task computes and writes whole shards. Every
    option is an ExtractConfig (or DaskConfig) field.

    Example: losa-cache extract --model vit_b --pretrained --dataset vtab1k:data/vtab/cifar \
--store stores/cifar.zarr --layers all

    Example (your own photos/<class>/*.jpg, 10% val and 10% test carved from them): \
losa-cache extract --model vit_b --pretrained --dataset imagefolder:photos \
--store stores/photos.zarr --split val=0.1,test=0.1

    Example (Dask, 4 processes): losa-cache extract --model vit_b --pretrained --dataset \
inat2018 --store s3://bucket/inat.zarr --cluster local:4
    """


def _extract(json_out: bool, quiet: bool, storage_options: str | None, **values: Any) -> None:
    from losa_cache.api import extract as run
    from losa_cache.store.store import parse_storage_options

    with user_errors():
        cfg, dask = build(values, ExtractConfig, DaskConfig)
        result = run(cfg, dask=dask, progress=not quiet,
                     storage_options=parse_storage_options(storage_options))
    if json_out:
        return emit_json(result.to_dict())
    verb = "resumed" if result.resumed else "created"
    typer.echo(
        f"{verb} {cfg.store}: wrote {result.written:,} images "
        f"({result.shards_written} shards, {result.shards_total} in store) in "
        f"{human_seconds(result.seconds)} ({result.images_per_s:,.1f} img/s), "
        f"{human_bytes(result.bytes_written)} of features"
    )
    for s in result.skipped:
        typer.echo(f"skipped row {s['row']}: {s['error']}")
    typer.echo(f"see: losa-cache info {cfg.store}")


extract = command(_extract, [*config_params(ExtractConfig), *config_params(DaskConfig),
                             *output_params("Print the run's summary as JSON.")], EXTRACT_DOC)


def subset(
    src: Annotated[str, typer.Argument(help="Source store path or URL.")],
    dst: Annotated[str, typer.Argument(help="New store path or URL (created, or resumed).")],
    layers: Annotated[
        str | None, typer.Option(help="Blocks to keep (0-based; default all the source has).")
    ] = None,
    taps: Annotated[
        str | None, typer.Option(help="Taps to keep, e.g. blocks,sum:4 (default all).")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="fp16 | int8 (default: the source's dtype).")
    ] = None,
    rows: Annotated[
        str | None, typer.Option(help="Splits whose rows to keep, e.g. train,val (default all).")
    ] = None,
    storage_options: StorageOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Copy part of a store (no backbone run): same fingerprint, checksummed, resumable.

    Example: losa-cache subset stores/inat.zarr s3://bucket/inat-sum4.zarr --taps sum:4 \
--dtype int8 --rows train,val
    """
    from losa_cache.store.store import parse_storage_options
    from losa_cache.store.subset import subset_store

    with user_errors():
        options = parse_storage_options(storage_options)
        d = subset_store(src, dst, layers, taps, dtype, rows.split(",") if rows else None,
                         options, options)  # fmt: skip
    if json_out:
        emit_json(d)
        return
    typer.echo(
        f"{dst}: {d['num_images']:,} images, taps {', '.join(d['taps'])}, {d['dtype']}; "
        f"wrote {d['shards_written']} of {d['shards_total']} shards "
        f"({human_bytes(d['bytes_written'])}); see: losa-cache info {dst}"
    )


def info(
    store: Annotated[str, typer.Argument(help="Store path or URL.")],
    sources: Annotated[
        bool,
        typer.Option(
            "--sources",
            help="Print every row's image source, one per line in row order (the sources "
            "`tasks add` label files name); with --json, add them as 'sources'.",
        ),
    ] = False,
    storage_options: StorageOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Images, splits, layers, tasks, fingerprint, progress, size and compression.

    Example: losa-cache info stores/cifar.zarr --json

    Example (a label file to fill in for `tasks add`): losa-cache info stores/cifar.zarr \
--sources > sources.txt
    """
    from losa_cache.store.info import store_info
    from losa_cache.store.store import parse_storage_options

    with user_errors():
        d = store_info(store, parse_storage_options(storage_options), sources=sources)
    if json_out:
        emit_json(d)
        return
    if sources:
        typer.echo("\n".join(d["sources"]))
        return
    typer.echo(
        f"store        {store}  ({'complete' if d['complete'] else 'INCOMPLETE'}: "
        f"{d['shards_done']}/{d['shards_total']} shards)"
    )
    fp = d["fingerprint"]
    typer.echo(
        f"backbone     {fp['model']}  weights sha256 {fp['weights_sha256'][:16]}...  "
        f"({fp['weights_source']})"
    )
    typer.echo(
        f"preprocess   {fp['input_size']} {fp['interpolation']} crop {fp['crop_pct']} "
        f"{fp.get('crop_mode') or ''} mean {fp['mean']} std {fp['std']}"
    )
    carved = (d["extract_config"] or {}).get("split")
    how = f"  (held out of train by --split {carved})" if carved else ""
    typer.echo(f"images       {d['num_images']:,}  splits {d['splits']}{how}")
    typer.echo(f"tokens       {d['token_layout']}")
    typer.echo(f"layers       {len(d['layers'])} of {d['depth']}: {d['layers']}")
    typer.echo(f"taps         {', '.join(d['taps'])} ({d['arrays']} arrays of (N, T, D))")
    if d["tap_layers"] != d["layers"]:
        typer.echo(f"tap blocks   {d['tap_layers']} (attn/mlp)")
    for e in d["extensions"]:
        state = "" if e["shards_done"] == e["shards_total"] else "  INCOMPLETE: rerun --extend"
        typer.echo(
            f"  added      {', '.join(e['taps'])}: {e['shards_done']}/{e['shards_total']} "
            f"shards{state}"
        )
    typer.echo(f"tasks        {d['tasks']}  (default {d['default_task']})")
    typer.echo(
        f"storage      {d['dtype']}, codec {d['codec']}, chunk {d['chunk_rows']} rows, "
        f"shard {d['shard_rows']} rows"
    )
    typer.echo(
        f"bytes        {human_bytes(d['bytes_stored'])} on disk, "
        f"{human_bytes(d['bytes_logical'])} of features: {d['size_note']}"
    )
    per_image, images = d["transfer_bytes_per_image"], d["num_images"]
    splits = ", ".join(f"{k} {human_bytes(per_image * n)}" for k, n in d["splits"].items())
    typer.echo(
        f"transfer     {per_image / 1e6:.3f} MB = {per_image / 2**20:.3f} MiB per image; "
        f"{human_bytes(per_image * images)} for the {images:,} images ({splits})"
    )
    typer.echo(f"integrity    {d['integrity']}")
    typer.echo(f"skipped      {len(d['skipped'])}")
    for s in d["skipped"][:20]:
        typer.echo(f"  row {s['row']}: {s['error']}")


tasks_app = typer.Typer(
    help="Labellings of one store: many tasks, one extraction.", no_args_is_help=True
)


@tasks_app.command("add")
def tasks_add(
    store: Annotated[str, typer.Argument(help="Store path or URL.")],
    name: Annotated[
        str,
        typer.Option(
            help="Task name: 1-64 characters from letters, digits, '_', '-' and '.', "
            "starting with a letter or digit."
        ),
    ],
    labels: Annotated[Path, typer.Option(help="File of `<source> <label>` lines.")],
    overwrite: Annotated[bool, typer.Option(help="Replace a task of the same name.")] = False,
    storage_options: StorageOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Attach a new labelling to existing features (no re-extraction).

    The file has one `<source> <label>` line per image; the sources are those
    `losa-cache info STORE --sources` prints; labels are integers or class names.
    Rows not listed get no label (-1) and are left out of training for this task.
    Changes are atomic (--overwrite keeps the old labelling until the new one is
    complete) and serialised: concurrent `tasks add` runs wait for each other.

    Example: losa-cache tasks add stores/cifar.zarr --name animal --labels animal.txt
    """
    from losa_cache.store.store import parse_storage_options
    from losa_cache.store.tasks import add_task_from_file

    with user_errors():
        options = parse_storage_options(storage_options)
        summary = add_task_from_file(store, name, labels, overwrite, options)
    if json_out:
        emit_json(summary)
    else:
        typer.echo(
            f"task {name!r}: {summary['labelled']:,} of {summary['rows']:,} rows labelled, "
            f"{len(summary['classes'])} classes"
        )


@tasks_app.command("list")
def tasks_list(
    store: Annotated[str, typer.Argument(help="Store path or URL.")], json_out: JsonOpt = False
) -> None:
    """List the tasks of a store with class counts.

    Example: losa-cache tasks list stores/cifar.zarr
    """
    from losa_cache.store.info import task_summaries

    with user_errors():
        rows = task_summaries(store)
    if json_out:
        emit_json(rows)
    else:
        typer.echo(
            table(
                [[r["name"], len(r["classes"]), r["labelled"]] for r in rows],
                ["task", "classes", "labelled rows"],
            )
        )
