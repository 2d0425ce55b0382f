"""Backbone inputs a user gets wrong: damaged checkpoints, non-ViT models, absent devices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from losa_cache.backbone import WeightsError, create_backbone, describe
from losa_cache.backbone.device import pick_device
from losa_cache.backbone.registry import create_architecture
from tests._checkpoints import save_all_formats


def test_garbage_safetensors_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(WeightsError, match=r"weights\.safetensors.*not a readable \.safetensors"):
        create_backbone("vit_micro", checkpoint=str(path))


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "npz"])
def test_truncated_checkpoint_says_it_is_incomplete(fmt: str, tmp_path: Path) -> None:
    path = save_all_formats(create_architecture("vit_micro"), tmp_path)[fmt]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"damaged, incomplete or another format") as info:
        create_backbone("vit_micro", checkpoint=str(path))
    assert path.name in str(info.value) and "architecture" not in str(info.value)


@pytest.mark.parametrize("model", ["resnet50", "convnext_atto", "xcit_nano_12_p16_224"])
def test_non_vit_models_name_what_is_supported(model: str) -> None:
    with pytest.raises(ValueError, match=rf"{model} is a \w+, not a ViT.*supported: timm ViTs"):
        describe(model)
    with pytest.raises(ValueError, match=r"supported: .*VisionTransformer \(vit_\*"):
        create_architecture(model, device="meta")


def test_eva_models_are_supported() -> None:
    info = describe("eva02_tiny_patch14_224")
    assert (info["prefix_tokens"], info["grid"]) == (1, [16, 16])


def test_cuda_without_a_gpu_names_device_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=rf"--device {name}: no CUDA GPU.*--device cpu"):
            pick_device(name)
    assert pick_device("auto") == torch.device("cpu")


def test_missing_gpu_index_and_unknown_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"only 2 GPU\(s\) are visible \(cuda:0 to cuda:1\)"):
        pick_device("cuda:2")
    assert pick_device("cuda:1") == torch.device("cuda:1")
    for name in ("gpu", "cuda:x", "meta", ""):
        with pytest.raises(ValueError, match="is not a device: choose auto, cpu, cuda"):
            pick_device(name)


def test_negative_seed_is_refused() -> None:
    with pytest.raises(ValueError, match=r"seed \(--seed\) must be an integer >= 0, got -1"):
        create_backbone("vit_micro", random_init=True, seed=-1)


def test_input_size_override_resizes_the_patch_grid() -> None:
    """--input-size used to pass preprocessing only, and the ViT then refused the images."""
    bb = create_backbone("vit_micro", random_init=True, preprocess={"input_size": (3, 64, 64)})
    assert (bb.grid, bb.tokens, bb.preprocess["input_size"]) == ((8, 8), 65, (3, 64, 64))
    (out,) = bb.intermediates(torch.zeros(2, 3, 64, 64), [3])
    assert out.shape == (2, 65, 32)
    with pytest.raises(ValueError, match=r"60x60 is not a multiple of .*8x8 patches"):
        create_backbone("vit_micro", random_init=True, preprocess={"input_size": (3, 60, 60)})


def test_unknown_tag_lists_the_tags() -> None:
    with pytest.raises(
        ValueError,
        match=r"unknown tag 'bogus' for vit_tiny_patch16_224; its "
        r"tags: .*augreg_in21k",
    ):
        create_backbone("vit_tiny_patch16_224.bogus", random_init=True)


def test_checkpoint_folder_is_named_as_a_folder(tmp_path: Path) -> None:
    (tmp_path / "weights.pth").mkdir()
    with pytest.raises(WeightsError, match="is a folder: pass the weights file inside it"):
        create_backbone("vit_micro", checkpoint=str(tmp_path / "weights.pth"))
