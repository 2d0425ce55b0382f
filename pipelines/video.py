"""Does Eq. 6's temporal mixer matter? Linear vs LoSA without g_temporal vs LoSA with Eq. 6.

On the motion task of :mod:`losa_cache.pipelines.video_tasks` (direction = label; a clip
moving left is a clip moving right played backwards) from one feature store:

* ``linear``: the linear probe on b_L pooled over all tokens (the frame mean of the
  spatial means: frame order is lost);
* ``losa_spatial``: LoSA with g_spatial only (``--no-temporal``): frames never mix in the
  side network;
* ``losa``: LoSA with Eq. 6 (g_spatial + g_temporal).

The backbone is ``vivit_demo`` (the embedded CIFAR-10 ViT inflated to 8-frame clips) with
``average`` inflation and zero temporal position embeddings, so it is blind to frame order
by construction: each 2-frame tubelet sums its frames, and attention with position
embeddings shared over time is equivariant to permuting tubelets. The first two rows can
then separate only the axis (horizontal vs vertical: 50 %), and only g_temporal can read
the direction. Whatever the numbers, they are reported as they come out.

    python -m losa_cache.pipelines.video --out runs/video           # minutes on a CPU
    python -m losa_cache.pipelines.video --out /tmp/v --tiny        # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from losa_cache.extract import ExtractConfig, extract
from losa_cache.pipelines.video_tasks import (
    SMALL,
    MotionSizes,
    build_motion_task,
    demo_objects,
)
from losa_cache.train import TrainConfig, train
from losa_cache.versions import versions

#: The compared side networks (one store, one recipe).
RUNS: dict[str, dict[str, Any]] = {
    "linear": {"method": "linear"},
    "losa_spatial": {"method": "losa", "temporal": False},
    "losa": {"method": "losa", "temporal": True},
}


@dataclass(frozen=True)
class Recipe:
    """Backbone and training budget; every run shares it."""

    model: str = "vivit_demo"
    inflation: str = "average"  # tubelets blind to frame order (see the module docstring)
    steps: int = 300
    batch_size: int = 32
    rank: int = 16
    lr: float = 3e-2  # AdamW; on the demo clips 3e-3 and 1e-2 gave Eq. 6 no lead
    seed: int = 0


TINY = Recipe(steps=6, batch_size=8, rank=4)
#: ``losa-cache demo --video``: the embedded demo images moving, about a minute on a CPU
DEMO_SIZES, DEMO = MotionSizes(train=64, val=16, test=32), Recipe(steps=100, batch_size=16, rank=8)


def extract_config(task: Path, store: Path, sizes: MotionSizes, recipe: Recipe) -> ExtractConfig:
    """Whole clips (``frames`` frames, stride 1), every block, fp16."""
    return ExtractConfig(
        model=recipe.model,
        dataset=f"videofolder:{task}",
        store=str(store),
        layers="all",
        dtype="float16",
        frames=sizes.frames,
        stride=1,
        inflation=recipe.inflation,
        workers=0,
        batch_size=32,
    )


def train_configs(store: Path, runs: Path, recipe: Recipe) -> dict[str, TrainConfig]:
    return {
        name: TrainConfig(
            store=str(store),
            out=str(runs / name),
            steps=recipe.steps,
            batch_size=recipe.batch_size,
            optimizer="adamw",
            lr=recipe.lr,
            weight_decay=0.01,
            rank=recipe.rank,
            seed=recipe.seed,
            workers=0,
            **kw,
        )
        for name, kw in RUNS.items()
    }


def run_video(
    out: Path,
    sizes: MotionSizes = MotionSizes(),
    recipe: Recipe = Recipe(),
    demo: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the task (CIFAR-10 objects, or the embedded demo images when ``demo``), extract
    it once, train the three side networks, and return their numbers."""
    out.mkdir(parents=True, exist_ok=True)
    task = out / "clips"
    if not task.exists():  # a rerun reuses the clips (and extract reuses the store)
        build_motion_task(task, sizes, recipe.seed, objects=demo_objects if demo else None)
    ext = extract_config(task, out / "clips.zarr", sizes, recipe)
    t0 = time.perf_counter()
    extraction = extract(ext, progress=progress)
    extract_s = time.perf_counter() - t0
    runs = {}
    for name, cfg in train_configs(out / "clips.zarr", out / "runs", recipe).items():
        m = train(cfg, progress=progress)
        runs[name] = {
            k: m[k]
            for k in (
                "method",
                "learned_params",
                "best_val_acc",
                "test_acc",
                "train_seconds",
                "adapter",
            )
        }
    return {
        "task": str(task),
        "store": ext.store,
        "objects": "demo" if demo else "cifar10",
        "sizes": asdict(sizes),
        "recipe": asdict(recipe),
        "runs": runs,
        "extract": {"written": extraction.to_dict()["written"], "seconds": round(extract_s, 2)},
    }


def run_video_demo(out: Path, tiny: bool = False, progress: bool = True) -> dict[str, Any]:
    """``losa-cache demo --video``: :func:`run_video` on the demo images (no files needed),
    then the Eq. 6 adapter predicts a few test clips through the live ViViT."""
    from losa_cache.adapter import load_adapter
    from losa_cache.predict_video import predict_videos, video_backbone

    result = run_video(
        out, SMALL if tiny else DEMO_SIZES, TINY if tiny else DEMO, demo=True, progress=progress
    )
    adapter = load_adapter(result["runs"]["losa"]["adapter"])
    clips = sorted((out / "clips" / "test").glob("*/*.mp4"))[::8][:4]
    preds = predict_videos(adapter, video_backbone(adapter), clips, clips=1, crops=1, top_k=1)
    result["predictions"] = [
        {
            "clip": str(c),
            "truth": c.parent.name,
            "predicted": p["classes"][0],
            "prob": round(p["probs"][0], 3),
        }
        if p["error"] is None
        else {"clip": str(c), "error": p["error"]}
        for c, p in zip(clips, preds, strict=True)
    ]
    return result


def write_results(result: dict[str, Any], out: Path) -> Path:
    """``video.json`` in ``out`` with date and versions (numbers as they came out)."""
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    path = out / "video.json"
    path.write_text(
        json.dumps(
            {"date": stamp, "versions": versions(), **result}, indent=2, sort_keys=True, default=str
        )
        + "\n"
    )
    return path


def table(result: dict[str, Any]) -> str:
    """The comparison as a markdown table."""
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"
    lines = ["| run | learned params | val acc | test acc |", "|---|---:|---:|---:|"]
    for name, m in result["runs"].items():
        lines.append(
            f"| {name} | {m['learned_params']:,} | {pct(m['best_val_acc'])} | "
            f"{pct(m['test_acc'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/video"))
    p.add_argument("--tiny", action="store_true", help="smoke run: 16/8/8 clips, 6 steps")
    p.add_argument("--steps", type=int, default=None, help="training steps per run")
    args = p.parse_args(argv)
    recipe = TINY if args.tiny else Recipe()
    if args.steps is not None:
        recipe = Recipe(**{**asdict(recipe), "steps": args.steps})
    result = run_video(args.out, SMALL if args.tiny else MotionSizes(), recipe)
    path = write_results(result, args.out)
    print(table(result))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
