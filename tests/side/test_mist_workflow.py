"""MIST's separated tuning end to end through the CLI, on vit_micro (4 blocks):

server: extract --taps sum:all -> hand-off: subset --taps sum:1,3,4 (the thirds), info and
plan say what it costs to send -> device: train --method mist (k chosen on val) ->
predict on image files == the adapter on the device store's map of the same images.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from losa_cache.adapter import load_adapter
from losa_cache.cli.main import app
from losa_cache.data import get_dataset
from losa_cache.store import open_store

TAPS = "sum:1,3,4"  # thirds of 4 blocks: the k the device chooses among
MAP_BYTES = 17 * 32 * 4  # one (T 17, D 32) fp32 map


def cli(*args: str) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def png_files(store_path: str, folder: Path, n: int) -> tuple[list[Path], list[int]]:
    """The first ``n`` test images of the store as PNG files (lossless), and their rows."""
    store, dataset = open_store(store_path), get_dataset("demo")
    index = {s.source: i for i, s in enumerate(dataset.samples)}
    rows = store.split_rows("test")[:n].tolist()
    folder.mkdir()
    paths = []
    for j, row in enumerate(rows):
        paths.append(folder / f"img_{j}.png")
        dataset.load(index[str(store.sources[row])]).save(paths[-1])
    return paths, rows


def test_server_to_device_to_prediction(tmp_path: Path) -> None:
    server, device, run = (str(tmp_path / n) for n in ("server.zarr", "device.zarr", "run"))
    cli("extract", "--model", "vit_micro", "--random-init", "--dataset", "demo", "--store",
        server, "--taps", "sum:all", "--dtype", "fp32", "--limit", "32",
        "--workers", "0")  # fmt: skip
    cli("subset", server, device, "--taps", TAPS)
    info = cli("info", device)
    per_image = 3 * MAP_BYTES
    assert f"transfer     {per_image / 1e6:.3f} MB = {per_image / 2**20:.3f} MiB per image" in info
    assert "for the 96 images" in info
    plan = json.loads(cli("plan", "--model", "vit_micro", "--dataset", "demo", "--taps", TAPS,
                          "--dtype", "fp32", "--json"))  # fmt: skip
    assert plan["bytes_per_image"] == per_image

    out = cli("train", "--store", device, "--out", run, "--method", "mist", "--width", "8",
              "--heads", "2", "--edge-blocks", "1", "--optimizer", "adamw", "--lr", "0.003",
              "--steps", "4", "--batch-size", "16", "--device", "cpu", "--workers", "1",
              "--amp", "fp32")  # fmt: skip
    adapter = load_adapter(run)
    k = adapter.config.gather_k
    assert k in (1, 3, 4) and adapter.meta["metrics"]["k_choice"]["chosen"] == k
    assert "mist width=8 heads=2 edge_blocks=1 block_fn" in out
    assert f"{k} " in out.split("k on val")[1]

    paths, rows = png_files(device, tmp_path / "images", 4)
    preds = json.loads(cli("predict", "--adapter", run, "--model", "vit_micro", "--random-init",
                           "--top-k", "3", "--json", *map(str, paths)))  # fmt: skip
    with torch.inference_mode():
        maps = torch.from_numpy(open_store(device).tap_features(f"sum:{k}")[rows])
        probs = adapter.model({f"sum:{k}": maps}).softmax(-1)
    top = probs.topk(3)
    assert [p["labels"] for p in preds] == top.indices.tolist()
    torch.testing.assert_close(torch.tensor([p["probs"] for p in preds]), top.values,
                               rtol=1e-5, atol=1e-6)  # fmt: skip
