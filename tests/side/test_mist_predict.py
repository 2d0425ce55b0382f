"""MIST prediction from live images: the backbone stops after block k, logits == the store's.

One fp32 store of the demo images from vit_micro (4 blocks) with every ``sum:k`` tap and
the blocks; PNG files of the same images, so the live pass sees the store's pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from losa_cache.adapter import Adapter, load_adapter, save_adapter
from losa_cache.backbone import Backbone, create_backbone
from losa_cache.data import get_dataset
from losa_cache.predict import image_logits, load_image, predict_images
from losa_cache.side import SideConfig, create_side
from losa_cache.store import FeatureStore, open_store

N_IMAGES = 5


class Forbidden(nn.Module):
    """A block that must never run."""

    def forward(self, x: Tensor) -> Tensor:
        raise AssertionError("a block past k was run")


def micro_backbone() -> Backbone:
    return create_backbone("vit_micro", random_init=True, seed=0)


@pytest.fixture(scope="module")
def store(make_store) -> FeatureStore:
    return open_store(make_store("sums", dtype="float32", taps="blocks,sum:all", limit=8,
                                 splits=["test"], chunk_rows=8, shard_rows=8))  # fmt: skip


@pytest.fixture(scope="module")
def images(store: FeatureStore, tmp_path_factory: pytest.TempPathFactory):
    """PNG files of the first test images, and their store rows."""
    dataset = get_dataset("demo")
    index = {s.source: i for i, s in enumerate(dataset.samples)}
    rows = store.split_rows("test")[:N_IMAGES]
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for j, row in enumerate(rows):
        path = folder / f"img_{j}.png"
        dataset.load(index[str(store.sources[row])]).save(path)
        paths.append(path)
    return paths, rows


def mist_adapter(store: FeatureStore, out: Path, **overrides: object) -> Adapter:
    """A mist adapter with random weights everywhere (no block is the identity)."""
    config = SideConfig(method="mist", num_layers=4, dim=32, tokens=17, width=8, heads=2,
                        edge_blocks=2, num_classes=len(store.classes()), **overrides)  # fmt: skip
    model = create_side(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    meta = {"fingerprint": store.fingerprint, "classes": store.classes()}
    return load_adapter(save_adapter(out, model, config, meta))


def store_path_logits(adapter: Adapter, store: FeatureStore, rows: np.ndarray, key) -> Tensor:
    """The adapter on the store's own map (``sum:k`` tap or block) of ``rows``."""
    array = store.features(key) if isinstance(key, int) else store.tap_features(key)
    with torch.inference_mode():
        return adapter.model({key: torch.from_numpy(array[rows])}).float()


def pixels(paths: list[Path]) -> Tensor:
    transform = micro_backbone().transform()
    return torch.stack([load_image(p, transform) for p in paths])


@pytest.mark.parametrize("k", [1, 2, 4])
def test_live_g_k_logits_equal_the_store_path(store, images, tmp_path, k: int) -> None:
    paths, rows = images
    adapter = mist_adapter(store, tmp_path / "a", gather_k=k)
    live = image_logits(adapter, micro_backbone(), pixels(paths))
    cached = store_path_logits(adapter, store, rows, f"sum:{k}")
    torch.testing.assert_close(live, cached, atol=1e-5, rtol=1e-5)
    assert (cached - cached[0]).abs().max() > 0.1  # the images' logits differ


def test_blocks_past_k_are_never_run(store, images, tmp_path) -> None:
    paths, rows = images
    adapter = mist_adapter(store, tmp_path / "a", gather_k=2)
    backbone = micro_backbone()
    backbone.model.blocks[2] = Forbidden()
    backbone.model.blocks[3] = Forbidden()
    live = image_logits(adapter, backbone, pixels(paths))  # unpruned: stops by itself
    torch.testing.assert_close(live, store_path_logits(adapter, store, rows, "sum:2"))
    backbone = micro_backbone()
    predict_images(adapter, backbone, paths[:1])
    assert backbone.depth == 2  # predict prunes the backbone after block k


def test_lae_only_reads_the_last_block_live(store, images, tmp_path) -> None:
    paths, rows = images
    adapter = mist_adapter(store, tmp_path / "a", gather="last")
    live = image_logits(adapter, micro_backbone(), pixels(paths))
    torch.testing.assert_close(live, store_path_logits(adapter, store, rows, 3))


def test_predicted_classes_follow_the_store_logits(store, images, tmp_path) -> None:
    paths, rows = images
    adapter = mist_adapter(store, tmp_path / "a", gather_k=3)
    preds = predict_images(adapter, micro_backbone(), paths, batch_size=2, top_k=2)
    cached = store_path_logits(adapter, store, rows, "sum:3")
    assert [r["labels"] for r in preds] == cached.topk(2).indices.tolist()
