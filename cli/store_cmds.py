"""Commands that are not loaded lazily (their options import nothing heavy): models, extract."""

from __future__ import annotations

from typing import Any

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


def models(json_out: JsonOpt = False) -> None:
    """List backbone aliases with parameter counts and bytes per image-layer.

    Example: losa-cache models --json
    """
    from losa_cache.backbone import ALIASES, describe

    with user_errors():
        rows = [describe(a) | {"note": ALIASES[a].note} for a in ALIASES]
    if json_out:
        return emit_json(rows)
    cells = [[r["model"], r["timm_name"], f"{r['params'] / 1e6:,.1f}M", r["depth"], r["dim"],
              r["tokens"], human_bytes(r["bytes_per_image_layer_fp16"]), r["note"]]
             for r in rows]  # fmt: skip
    typer.echo(table(cells, ["alias", "timm name", "params", "depth", "dim", "tokens",
                             "fp16/img/layer", "note"]))  # fmt: skip
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
        result = run(
            cfg,
            dask=dask,
            progress=not quiet,
            storage_options=parse_storage_options(storage_options),
        )
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


extract = command(
    _extract,
    [
        *config_params(ExtractConfig),
        *config_params(DaskConfig),
        *output_params("Print the run's summary as JSON."),
    ],
    EXTRACT_DOC,
)
