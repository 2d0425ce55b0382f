"""Commands that use a trained adapter, wiring only: predict (live files), eval (a store)."""

from __future__ import annotations

import csv
import io
from typing import Any

import typer

from losa_cache.cli.common import emit_json, table, user_errors
from losa_cache.cli.options import build, command, config_params, output_params, param
from losa_cache.inference import EvalConfig, PredictConfig, evaluate_adapter, predict_files

__all__ = ["evaluate", "predict", "predictions_csv"]

PREDICT_DOC = """Classify images with the live backbone + adapter; undecodable images are reported.

    Refuses a backbone other than the one the adapter was trained on. A video adapter
    (ViViT) classifies video files instead, from the mean logits of --clips x --crops views.

    Example: losa-cache predict --adapter runs/cifar --model vit_b --pretrained photos/ --top-k 3
    """

EVAL_DOC = """Score an adapter on a store split's cached features: accuracy, loss, per class.

    Scored by the training engine's evaluation, in the adapter's training batch size and
    precision by default: the numbers equal the test/val numbers of its metrics.json.
    Refuses an incomplete store unless --allow-incomplete; stops at the first damaged
    chunk (every read is checked against the crc32c written with it). A video adapter can
    instead score --dataset live, from the mean logits of --clips x --crops views per
    video (4 x 3: ViViT's and SlowFast's multi-view testing; the LoSA paper defines none).

    Example: losa-cache eval --adapter runs/cifar --store stores/cifar.zarr --split test
    """


def _predict(json_out: bool, csv_out: bool, **values: Any) -> None:
    with user_errors():
        if json_out and csv_out:
            raise ValueError("choose one of --json and --csv")
        (cfg,) = build(values, PredictConfig)
        rows, adapter = predict_files(cfg)
    if json_out:
        emit_json(rows)
    elif csv_out:
        typer.echo(predictions_csv(rows, min(cfg.top_k, adapter.config.num_classes)), nl=False)
    else:
        typer.echo(_predictions_table(rows))
    failed = sum(1 for r in rows if r["error"])
    if failed:
        typer.echo(f"{failed} of {len(rows)} images could not be read (see the error column)",
                   err=True)  # fmt: skip
    if failed and failed == len(rows):
        raise typer.Exit(1)


predict = command(_predict, [
    *config_params(PredictConfig), *output_params("Print the rows as JSON.", storage=False,
                                                  quiet=False),
    param("csv_out", bool, False, "Print CSV, one row per image.", "Output", ("--csv",)),
], PREDICT_DOC)  # fmt: skip


def predictions_csv(rows: list[dict[str, Any]], k: int) -> str:
    """One line per image: path, error, then label_i, class_i, prob_i for i = 1..k."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "error", *(f"{c}_{i}" for i in range(1, k + 1)
                                        for c in ("label", "class", "prob"))])  # fmt: skip
    for r in rows:
        top = [v for trio in zip(r["labels"], r["classes"], r["probs"], strict=True)
               for v in (trio[0], trio[1], f"{trio[2]:.6f}")]  # fmt: skip
        writer.writerow([r["path"], r["error"] or "", *top, *[""] * (3 * k - len(top))])
    return buf.getvalue()


def _predictions_table(rows: list[dict[str, Any]]) -> str:
    cells = []
    for r in rows:
        if r["error"]:
            cells.append([r["path"], "-", "-", f"error: {r['error']}"])
            continue
        rest = ", ".join(f"{c} {p:.3f}" for c, p in zip(r["classes"][1:], r["probs"][1:],
                                                         strict=True))  # fmt: skip
        cells.append([r["path"], r["classes"][0], f"{r['probs'][0]:.3f}", rest])
    return table(cells, ["image", "top-1", "prob", "next"])


def _evaluate(json_out: bool, **values: Any) -> None:
    with user_errors():
        (cfg,) = build(values, EvalConfig)
        result = evaluate_adapter(cfg)
    for bad in result.get("skipped", []):
        typer.echo(f"skipped {bad['error']}", err=True)
    if not result.get("complete", True):
        typer.echo(f"warning: the store is incomplete; scored {result['count']} of "
                   f"{result['scorable_rows']} rows of split {result['split']} "
                   f"({result['scored_fraction']:.1%}): rerun `losa-cache extract` to finish",
                   err=True)  # fmt: skip
    if json_out:
        return emit_json(result)
    typer.echo(f"{cfg.source()} split {result['split']}, task {result['task']}: accuracy "
               f"{result['accuracy']:.4f} ({result['correct']}/{result['count']}), "
               f"mean class accuracy {result['mean_class_accuracy']:.4f}, "
               f"loss {result['loss']:.4f}")  # fmt: skip
    typer.echo(table([[name, v["count"], "-" if v["accuracy"] is None else f"{v['accuracy']:.4f}"]
                      for name, v in result["per_class"].items()],
                     ["class", "count", "accuracy"]))  # fmt: skip


evaluate = command(_evaluate, [*config_params(EvalConfig), *output_params(
    "Print the scores as JSON.", storage=False, quiet=False)], EVAL_DOC)  # fmt: skip
