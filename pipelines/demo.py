"""The embedded demo: extract once, train the linear probe and LoSA, predict.

Everything it uses ships with the package: the procedurally generated ``demo`` data set
(shapes in quadrants, 32 px) and the ``demo`` ViT trained on CIFAR-10 by
``pipelines/train_demo_backbone.py``. No network, no GPU, a few minutes on a laptop CPU.
``tiny=True`` shrinks it to a smoke test (big_vision's ``runlocal`` idea).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from losa_cache.data import get_dataset
from losa_cache.extract import ExtractConfig, extract
from losa_cache.fields import option
from losa_cache.train import TrainConfig, train

#: The two side networks the demo compares (paper recipe: SGD momentum, cosine, warmup).
RUNS = {
    "linear": {"method": "linear"},
    "losa": {"method": "losa", "rank": 16},
}


def demo_configs(out: Path, tiny: bool) -> tuple[ExtractConfig, dict[str, TrainConfig]]:
    """The extraction and training configs of the demo (all defaults spelled out)."""
    store = str(out / "demo.zarr")
    ext = ExtractConfig(
        model="demo",
        dataset="demo",
        store=store,
        layers="all",
        limit=64 if tiny else None,
        workers=0 if tiny else 2,
        batch_size=128,
    )
    steps = 20 if tiny else 300
    runs = {
        name: TrainConfig(
            store=store,
            out=str(out / "runs" / name),
            steps=steps,
            batch_size=128,
            optimizer="adamw",
            lr=3e-3,
            weight_decay=0.01,
            seed=0,
            cache="auto",
            **kw,
        )
        for name, kw in RUNS.items()
    }
    return ext, runs


def sample_images(out: Path, n: int = 6) -> list[tuple[Path, str]]:
    """Write a few test images of the demo set as PNG files (what a user would predict on)."""
    ds = get_dataset("demo")
    folder = out / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    rows = ds.split_indices()["test"][:n]
    files = []
    for r in rows:
        path = folder / f"{Path(ds.samples[r].source).name}.png"
        ds.load(r).save(path)
        files.append((path, ds.classes[ds.samples[r].label]))
    return files


def run_demo(
    out: str | Path = "demo_out", tiny: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Extract (or reuse) the demo store, train both side networks, predict a few images."""
    from losa_cache.adapter import load_adapter
    from losa_cache.backbone import create_backbone
    from losa_cache.predict import predict_images

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ext_cfg, train_cfgs = demo_configs(out, tiny)
    t0 = time.perf_counter()
    extraction = extract(ext_cfg, progress=progress)
    extract_s = time.perf_counter() - t0
    shutil.rmtree(out / "runs", ignore_errors=True)  # a fresh training every demo run
    results = {name: train(cfg, progress=progress) for name, cfg in train_cfgs.items()}
    adapter = load_adapter(train_cfgs["losa"].out)
    backbone = create_backbone("demo")
    samples = sample_images(out)
    preds = predict_images(adapter, backbone, [p for p, _ in samples], top_k=1)
    return {
        "out": str(out),
        "store": ext_cfg.store,
        "extract": extraction.to_dict(),
        "extract_seconds_total": round(extract_s, 2),
        "runs": {name: summarise(m) for name, m in results.items()},
        "predictions": [
            {
                "image": str(p),
                "truth": truth,
                "predicted": pr["classes"][0],
                "prob": round(pr["probs"][0], 3),
            }
            if not pr.get("error")
            else {"image": str(p), "error": pr["error"]}
            for (p, truth), pr in zip(samples, preds, strict=True)
        ],
    }


def summarise(m: dict[str, Any]) -> dict[str, Any]:
    return {
        k: m.get(k)
        for k in (
            "method",
            "rank",
            "learned_params",
            "best_val_acc",
            "test_acc",
            "images_per_s",
            "train_seconds",
            "adapter",
        )
    }


@dataclass
class DemoConfig:
    """``losa-cache demo``: where its files go and which demo runs."""

    out: str = option("demo_out", "Folder for the store, runs and samples.")
    tiny: bool = option(False, "A seconds-long smoke run (64 images/split).")
    video: bool = option(
        False,
        "The video demo instead: generated clips of a demo image "
        "moving 4 ways, the embedded ViT inflated to vivit_demo; linear vs "
        "LoSA without and with Eq. 6's temporal mixer.",
    )
