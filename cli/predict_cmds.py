"""Commands that use a trained adapter: predict (live images) and eval (cached features)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Annotated, Any

import typer

from losa_cache.cli.common import JsonOpt, emit_json, table, user_errors

AdapterOpt = Annotated[Path, typer.Option(
    help="Adapter directory (adapter.json + adapter.safetensors) written by `train --out`.")]
ClipsOpt = Annotated[int, typer.Option(
    help="Video: temporal clips per video, spread evenly over it (ViViT/SlowFast "
    "multi-view testing: 4).")]
CropsOpt = Annotated[int, typer.Option(
    help="Video: spatial crops per clip along the longer side (ViViT/SlowFast "
    "multi-view testing: 3).")]


def predict(
    adapter: AdapterOpt,
    images: Annotated[list[Path], typer.Argument(
        help="Image files, or folders (every image inside, sorted).")],
    model: Annotated[str | None, typer.Option(
        help="Backbone alias or timm name (default: the adapter's backbone).")] = None,
    checkpoint: Annotated[str | None, typer.Option(
        help="Backbone weights: .npz, .pth/.bin, .safetensors.")] = None,
    pretrained: Annotated[bool, typer.Option(help="timm weights from the local cache.")
                          ] = False,
    random_init: Annotated[bool, typer.Option(help="Random backbone weights (tests).")
                           ] = False,
    seed: Annotated[int, typer.Option(help="Seed of --random-init.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    top_k: Annotated[int, typer.Option(help="Classes to report per image.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    max_pixels: Annotated[int | None, typer.Option(
        help="Largest image decoded, width x height (default: 89478485, PIL's guard); "
        "larger ones are reported, not predicted.")] = None,
    max_file_bytes: Annotated[int | None, typer.Option(
        help="Largest file read, in bytes (default: 268435456 = 256 MiB an image, 4 GiB a "
        "video); larger ones and anything but a regular file are reported, not read.")] = None,
    json_out: JsonOpt = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV, one row per image.")
                       ] = False,
    clips: ClipsOpt = 4,
    crops: CropsOpt = 3,
) -> None:
    """Classify images with the live backbone + adapter; undecodable images are reported.

    Refuses a backbone other than the one the adapter was trained on. A video adapter
    (ViViT) classifies video files instead, from the mean logits of --clips x --crops views.

    Example: losa-cache predict --adapter runs/cifar --model vit_b --pretrained photos/ --top-k 3
    """
    from losa_cache.adapter import load_adapter
    from losa_cache.backbone import create_backbone
    from losa_cache.backbone.crop import recorded_preprocess
    from losa_cache.extract import pick_device
    from losa_cache.predict import find_images, predict_images
    from losa_cache.predict_video import is_video_adapter

    with user_errors():
        if json_out and csv_out:
            raise ValueError("choose one of --json and --csv")
        loaded = load_adapter(adapter)
        if is_video_adapter(loaded):
            weights = dict(checkpoint=checkpoint, pretrained=pretrained,
                           random_init=random_init, seed=seed)
            rows = _predict_videos(loaded, images, model, weights, pick_device(device),
                                   clips, crops, top_k, (max_pixels, max_file_bytes))
            return _show_predictions(rows, loaded, top_k, json_out, csv_out)
        files = find_images(images)
        backbone = create_backbone(model or loaded.fingerprint["model"], checkpoint=checkpoint,
                                   pretrained=pretrained, random_init=random_init, seed=seed,
                                   device=pick_device(device),
                                   preprocess=recorded_preprocess(loaded.fingerprint))
        rows = predict_images(loaded, backbone, files, batch_size=batch_size, top_k=top_k,
                              max_pixels=max_pixels, max_file_bytes=max_file_bytes)
    _show_predictions(rows, loaded, top_k, json_out, csv_out)


def _show_predictions(rows: list[dict[str, Any]], loaded: Any, top_k: int, json_out: bool,
                      csv_out: bool) -> None:
    if json_out:
        emit_json(rows)
    elif csv_out:
        typer.echo(predictions_csv(rows, min(top_k, loaded.config.num_classes)), nl=False)
    else:
        typer.echo(_predictions_table(rows))
    _report_failures(rows)


def _predict_videos(loaded: Any, paths: list[Path], model: str | None, weights: dict[str, Any],
                    device: Any, clips: int, crops: int, top_k: int,
                    limits: tuple[int | None, int | None]) -> list[dict[str, Any]]:
    """Video files through the adapter's ViViT, multi-view (predict_video.py)."""
    from losa_cache.predict_video import find_videos, predict_videos, video_backbone

    if model is not None and model != loaded.fingerprint["model"]:
        raise ValueError(f"the adapter was trained on {loaded.fingerprint['model']}; drop "
                         f"--model {model} (video adapters rebuild their own ViViT)")
    backbone = video_backbone(loaded, device, **weights)
    return predict_videos(loaded, backbone, find_videos(paths), clips, crops, top_k,
                          max_pixels=limits[0], max_file_bytes=limits[1])


def predictions_csv(rows: list[dict[str, Any]], k: int) -> str:
    """One line per image: path, error, then label_i, class_i, prob_i for i = 1..k."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "error", *(f"{c}_{i}" for i in range(1, k + 1)
                                        for c in ("label", "class", "prob"))])
    for r in rows:
        top = [v for trio in zip(r["labels"], r["classes"], r["probs"], strict=True)
               for v in (trio[0], trio[1], f"{trio[2]:.6f}")]
        writer.writerow([r["path"], r["error"] or "", *top, *[""] * (3 * k - len(top))])
    return buf.getvalue()


def _predictions_table(rows: list[dict[str, Any]]) -> str:
    cells = []
    for r in rows:
        if r["error"]:
            cells.append([r["path"], "-", "-", f"error: {r['error']}"])
            continue
        rest = ", ".join(f"{c} {p:.3f}" for c, p in zip(r["classes"][1:], r["probs"][1:],
                                                         strict=True))
        cells.append([r["path"], r["classes"][0], f"{r['probs'][0]:.3f}", rest])
    return table(cells, ["image", "top-1", "prob", "next"])


def _report_failures(rows: list[dict[str, Any]]) -> None:
    failed = sum(1 for r in rows if r["error"])
    if not failed:
        return
    typer.echo(f"{failed} of {len(rows)} images could not be read (see the error column)",
               err=True)
    if failed == len(rows):
        raise typer.Exit(1)


def evaluate(
    adapter: AdapterOpt,
    store: Annotated[str | None, typer.Option(
        help="Store path or URL with the adapter's layers.")] = None,
    split: Annotated[str, typer.Option(help="Split to score.")] = "test",
    task: Annotated[str | None, typer.Option(
        help="Labelling to score against (default: the adapter's task, else the store's).")
                    ] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Rows per forward pass (default: the adapter's training batch size).")] = None,
    amp: Annotated[str | None, typer.Option(
        help="auto | bf16 | fp32 (default: the precision the adapter was trained in).")
                   ] = None,
    workers: Annotated[int, typer.Option(help="I/O threads of the store reader.", min=0)] = 4,
    allow_incomplete: Annotated[bool, typer.Option(
        "--allow-incomplete",
        help="Score an incomplete store's finished shards (says what fraction that is).")
                                ] = False,
    json_out: JsonOpt = False,
    dataset: Annotated[str | None, typer.Option(
        help="Video: score a data set's clips live instead of a store (multi-view).")] = None,
    clips: ClipsOpt = 4,
    crops: CropsOpt = 3,
    limit: Annotated[int | None, typer.Option(help="Video: at most N videos of the split.")
                     ] = None,
    checkpoint: Annotated[str | None, typer.Option(
        help="Video: the backbone weights (as for train --live).")] = None,
    pretrained: Annotated[bool, typer.Option(help="Video: timm weights, local cache.")] = False,
    random_init: Annotated[bool, typer.Option(
        "--random-init", help="Video: random weights (tests).")] = False,
    seed: Annotated[int, typer.Option(help="Video: seed of --random-init.")] = 0,
    device: Annotated[str, typer.Option(help="Video: auto | cpu | cuda | cuda:N.")] = "auto",
) -> None:
    """Score an adapter on a store split's cached features: accuracy, loss, per class.

    Scored by the training engine's evaluation, in the adapter's training batch size and
    precision by default: the numbers equal the test/val numbers of its metrics.json.
    Refuses an incomplete store unless --allow-incomplete; stops at the first damaged
    chunk (every read is checked against the crc32c written with it). A video adapter can
    instead score --dataset live, from the mean logits of --clips x --crops views per
    video (4 x 3: ViViT's and SlowFast's multi-view testing; the LoSA paper defines none).

    Example: losa-cache eval --adapter runs/cifar --store stores/cifar.zarr --split test
    """
    from losa_cache.adapter import load_adapter
    from losa_cache.predict import evaluate_store
    from losa_cache.store import open_store

    if dataset is not None:
        weights = dict(checkpoint=checkpoint, pretrained=pretrained, random_init=random_init,
                       seed=seed)
        with user_errors():
            if store is not None:
                raise ValueError("give --store (cached features) or --dataset (video, "
                                 "multi-view), not both")
            result = _evaluate_videos(load_adapter(adapter), dataset, split, clips, crops,
                                      limit, weights, device, batch_size)
        return _show_eval(result, json_out, f"{dataset} ({clips}x{crops} views)")
    with user_errors():
        if store is None:
            raise ValueError("give --store (the features to score), or --dataset for a "
                             "video adapter")
        result = evaluate_store(load_adapter(adapter),
                                open_store(store, allow_incomplete=allow_incomplete),
                                split=split, task=task, batch_size=batch_size,
                                allow_incomplete=allow_incomplete, amp=amp, workers=workers)
    if not result["complete"]:
        typer.echo(f"warning: the store is incomplete; scored {result['count']} of "
                   f"{result['scorable_rows']} rows of split {result['split']} "
                   f"({result['scored_fraction']:.1%}): rerun `losa-cache extract` to finish",
                   err=True)
    _show_eval(result, json_out, result["store"])


def _evaluate_videos(loaded: Any, dataset: str, split: str, clips: int, crops: int,
                     limit: int | None, weights: dict[str, Any], device: str,
                     batch_size: int | None) -> dict[str, Any]:
    from losa_cache.extract import pick_device
    from losa_cache.predict_video import evaluate_videos, video_backbone

    backbone = video_backbone(loaded, pick_device(device), **weights)
    result = evaluate_videos(loaded, backbone, dataset, split, clips, crops,
                             batch_size=batch_size or 8, limit=limit)  # views per forward
    for bad in result["skipped"]:
        typer.echo(f"skipped {bad['error']}", err=True)
    return result


def _show_eval(result: dict[str, Any], json_out: bool, where: str) -> None:
    if json_out:
        emit_json(result)
        return
    typer.echo(f"{where} split {result['split']}, task {result['task']}: accuracy "
               f"{result['accuracy']:.4f} ({result['correct']}/{result['count']}), "
               f"mean class accuracy {result['mean_class_accuracy']:.4f}, "
               f"loss {result['loss']:.4f}")
    typer.echo(table([[name, v["count"], "-" if v["accuracy"] is None else f"{v['accuracy']:.4f}"]
                      for name, v in result["per_class"].items()],
                     ["class", "count", "accuracy"]))
