"""Backbones: aliases, weight sources, fingerprints, block outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from losa_cache.backbone import ALIASES, WeightsError, create_backbone, describe
from losa_cache.backbone.registry import create_architecture
from tests._checkpoints import save_all_formats


def test_aliases_resolve_and_describe_without_weights() -> None:
    g = describe("vit_g")
    assert (g["depth"], g["dim"], g["tokens"]) == (40, 1408, 257)
    assert g["bytes_per_image_layer_fp16"] == 257 * 1408 * 2  # 0.72 MB, DESIGN.md
    e = create_architecture("vit_e", device="meta")
    assert (len(e.blocks), e.embed_dim, e.blocks[0].mlp.fc1.out_features) == (56, 1792, 15360)
    assert e.blocks[0].attn.num_heads == 16
    assert 3.7e9 < describe("vit_e")["params"] < 4.0e9
    assert ALIASES["vit_b_orig"].timm_name == "vit_base_patch16_224.orig_in21k"


def test_unknown_model_names_choices() -> None:
    with pytest.raises(ValueError, match=r"Aliases: .*vit_b"):
        create_architecture("vit_nonexistent_thing")


def test_no_weights_refused_unless_random_init() -> None:
    with pytest.raises(WeightsError, match="--random-init"):
        create_backbone("vit_micro")
    with pytest.raises(WeightsError, match="choose one"):
        create_backbone("vit_micro", checkpoint="x.pth", random_init=True)


def test_pretrained_not_in_cache_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="local timm/Hugging Face cache"):
        create_backbone("test_vit.r160_in1k", pretrained=True)


@pytest.mark.parametrize("fmt", ["npz", "pth", "safetensors"])
def test_checkpoint_formats_load_the_same_weights(fmt: str, tmp_path: Path) -> None:
    torch.manual_seed(3)
    src = create_architecture("vit_micro")
    files = save_all_formats(src, tmp_path)
    ref = create_backbone("vit_micro", random_init=True, seed=3)
    got = create_backbone("vit_micro", checkpoint=str(files[fmt]))
    assert got.sha256 == ref.sha256  # format-independent fingerprint
    x = torch.randn(2, 3, 32, 32)
    for a, b in zip(got.intermediates(x, [0, 3]), ref.intermediates(x, [0, 3]), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_wrong_architecture_checkpoint_is_refused(tmp_path: Path) -> None:
    files = save_all_formats(create_architecture("vit_micro"), tmp_path)
    with pytest.raises(WeightsError, match="does not"):
        create_backbone("vit_test", checkpoint=str(files["safetensors"]))
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"not a readable torch\.load file"):
        create_backbone("vit_micro", checkpoint=str(tmp_path / "bad.pth"))
    with pytest.raises(WeightsError, match="does not exist"):
        create_backbone("vit_micro", checkpoint=str(tmp_path / "missing.pth"))


def test_embedded_demo_weights_load_without_flags() -> None:
    b = create_backbone("demo")
    assert b.source == "embedded" and len(b.sha256) == 64
    assert b.fingerprint()["input_size"] == [3, 32, 32]


def test_intermediates_equal_forward_features_with_prefix_first() -> None:
    b = create_backbone("vit_micro", random_init=True)
    x = torch.randn(3, 3, 32, 32)
    (last,) = b.intermediates(x, [3])
    assert last.shape == (3, b.tokens, b.dim) == (3, 17, 32)
    # timm's forward_features = norm(last block output), CLS first
    torch.testing.assert_close(b.model.norm(last), b.model.forward_features(x))


def test_pretrained_loads_from_a_local_hf_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--pretrained resolves timm's hub weights from the local cache layout, offline."""
    import huggingface_hub.constants as hf
    from safetensors.torch import save_file

    torch.manual_seed(5)
    src = create_architecture("test_vit")
    snap = tmp_path / "models--timm--test_vit.r160_in1k" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in src.state_dict().items()}, str(snap / "model.safetensors")
    )
    (tmp_path / "models--timm--test_vit.r160_in1k" / "refs").mkdir()
    (tmp_path / "models--timm--test_vit.r160_in1k" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))
    got = create_backbone("test_vit.r160_in1k", pretrained=True)
    ref = create_backbone("test_vit", random_init=True, seed=5)
    assert got.sha256 == ref.sha256
    assert got.fingerprint()["input_size"] == [3, 160, 160]
