"""ViViT inflated from an image ViT: equals it on one-frame clips, fingerprints its clip."""

from __future__ import annotations

import pytest
import torch

from losa_cache.backbone import WeightsError, create_backbone, describe
from losa_cache.backbone.vivit import ViViT, inflate_kernel
from losa_cache.backbone.weights import weights_sha256


def _image_and_video(inflation: str, frames: int, tubelet: int):
    image = create_backbone("vit_micro", random_init=True, seed=3)
    video = create_backbone("vivit_test", random_init=True, seed=3)
    # the same image weights, inflated with the chosen rule and tubelet depth
    src = create_backbone("vit_micro", random_init=True, seed=3).model
    video.model = ViViT(src, frames=frames, tubelet=tubelet, inflation=inflation).eval()
    return image, video


@pytest.mark.parametrize("inflation", ["central", "average"])
def test_one_frame_clip_equals_image_vit_exactly(inflation: str) -> None:
    image, video = _image_and_video(inflation, frames=1, tubelet=1)
    x = torch.randn(3, 3, 32, 32)
    layers = [0, 1, 2, 3]
    want = image.intermediates(x, layers)
    got = video.intermediates(x[:, :, None], layers)
    for a, b in zip(want, got, strict=True):
        assert a.shape == b.shape == (3, 17, 32)
        assert torch.equal(a, b)


def test_static_clip_with_average_inflation_embeds_as_the_image_per_frame() -> None:
    """Averaging: t copies of a frame embed as that frame does in 2D (up to rounding).

    (Block outputs differ: attention then sees every patch once per token frame.)
    """
    image, video = _image_and_video("average", frames=4, tubelet=2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = image.model._pos_embed(image.model.patch_embed(x))  # (2, 17, D)
        got = video.model.embed(x[:, :, None].repeat(1, 1, 4, 1, 1))  # (2, 1 + 2*16, D)
    grid = got[:, 1:].reshape(2, 2, 16, -1)
    for step in range(2):
        torch.testing.assert_close(grid[:, step], want[:, 1:], rtol=1e-5, atol=1e-6)
    assert torch.equal(got[:, :1], want[:, :1])


def test_central_inflation_reads_only_the_middle_frame_of_each_tubelet() -> None:
    w = torch.randn(8, 3, 4, 4)
    central = inflate_kernel(w, 3, "central")
    assert torch.equal(central[:, :, 1], w) and not central[:, :, [0, 2]].any()
    assert torch.allclose(inflate_kernel(w, 3, "average").sum(2), w)


def test_temporal_position_embedding_starts_at_zero_and_is_used() -> None:
    video = create_backbone("vivit_test", random_init=True)
    m = video.model
    assert m.temporal_pos_embed.shape == (1, 2, 1, 32) and not m.temporal_pos_embed.any()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        before = m.embed(x)
        m.temporal_pos_embed[:, 1] += 1.0
        after = m.embed(x)
    assert torch.equal(before[:, :17], after[:, :17])  # prefix and token frame 0 untouched
    torch.testing.assert_close(after[:, 17:], before[:, 17:] + 1.0)


def test_fingerprint_and_layout_record_the_clip() -> None:
    a = create_backbone("vivit_test", random_init=True)
    b = create_backbone("vivit_test", random_init=True, inflation="average")
    c = create_backbone("vivit_test", random_init=True, frames=8)
    fa = a.fingerprint()
    assert (fa["frames"], fa["tubelet"], fa["inflation"]) == (4, 2, "central")
    assert b.fingerprint()["inflation"] == "average" and b.sha256 != a.sha256
    assert c.fingerprint()["frames"] == 8 and c.tokens == 1 + 4 * 16
    layout = a.token_layout()
    assert layout == {
        "prefix_tokens": 1, "grid": [4, 4], "frames": 2, "tokens": 33,
        "order": "prefix_first", "tubelet": 2, "clip_frames": 4,
    }  # fmt: skip
    # image layouts are what they were before video (resumed stores keep matching)
    assert set(create_backbone("vit_micro", random_init=True).token_layout()) == {
        "prefix_tokens", "grid", "frames", "tokens", "order"
    }  # fmt: skip


def test_video_checkpoint_round_trip_keeps_temporal_embeddings(tmp_path) -> None:
    a = create_backbone("vivit_test", random_init=True, seed=1)
    with torch.no_grad():
        a.model.temporal_pos_embed.normal_()
    path = tmp_path / "vivit.pth"
    torch.save(a.model.state_dict(), path)
    b = create_backbone("vivit_test", checkpoint=str(path))
    assert torch.equal(b.model.temporal_pos_embed, a.model.temporal_pos_embed)
    assert b.sha256 == weights_sha256(a.model) != a.sha256
    # an image checkpoint is inflated (temporal embeddings zero)
    img = tmp_path / "image.pth"
    torch.save(create_backbone("vit_micro", random_init=True, seed=1).model.state_dict(), img)
    c = create_backbone("vivit_test", checkpoint=str(img))
    assert not c.model.temporal_pos_embed.any()
    assert torch.equal(c.model.patch_embed.proj.weight, a.model.patch_embed.proj.weight)
    with pytest.raises(WeightsError, match="--frames"):
        create_backbone("vivit_test", checkpoint=str(path), frames=8)


def test_bad_clip_options_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of the tubelet"):
        create_backbone("vivit_test", random_init=True, frames=3)
    with pytest.raises(ValueError, match="video backbones"):
        create_backbone("vit_micro", random_init=True, frames=4)
    with pytest.raises(ValueError, match="inflation"):
        create_backbone("vivit_test", random_init=True, inflation="middle")
    with pytest.raises(WeightsError, match="--random-init"):
        create_backbone("vivit_test")
    video = create_backbone("vivit_test", random_init=True)
    with pytest.raises(ValueError, match=r"clips \(B, C, 4, H, W\)"):
        video.intermediates(torch.zeros(1, 3, 32, 32), [0])
    with pytest.raises(ValueError, match="48x48 px"):
        video.intermediates(torch.zeros(1, 3, 4, 48, 48), [0])
    bigger = create_backbone("vivit_test", random_init=True, preprocess={"input_size": (3, 48, 48)})
    assert bigger.intermediates(torch.zeros(1, 3, 4, 48, 48), [0])[0].shape == (1, 1 + 2 * 36, 32)


def test_describe_prices_a_vivit_e_clip_layer() -> None:
    d = describe("vivit_e")
    assert (d["tokens"], d["dim"], d["time_steps"]) == (4097, 1792, 16)
    assert d["bytes_per_image_layer_fp16"] == 4097 * 1792 * 2  # ~14.7 MB
