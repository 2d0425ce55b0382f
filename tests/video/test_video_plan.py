"""The planner on ViViT: clip-layer bytes, GMACs counted per clip, and the live advice."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from losa_cache.backbone.registry import create_architecture
from losa_cache.cli.main import app
from losa_cache.compute import vit_macs
from losa_cache.data import KNOWN_SIZES
from losa_cache.plan import plan, plan_budget

K400 = sum(KNOWN_SIZES["kinetics400"].values())


def test_vivit_e_on_kinetics400_says_live_with_numbers() -> None:
    p = plan("vivit_e", "kinetics400", frames=32, measure=False)
    clip_layer = 4097 * 1792 * 2  # (1 + 16 x 256 tokens) x D, fp16
    assert p["tokens"] == 4097 and p["time_steps"] == 16 and p["frames"] == 32
    assert p["bytes_per_image_layer"] == clip_layer and round(clip_layer / 1e6, 1) == 14.7
    v = p["video"]
    assert v["bytes_per_clip_layer"] == clip_layer
    assert v["store_bytes"]["all_blocks"] == 56 * clip_layer * K400
    assert not v["cache_all_reachable"] and v["recommend"] == "live"
    assert "out of reach" in v["advice"] and "--live" in v["advice"]
    assert "14.7 MB" in v["advice"] and "250.9 TB" in v["advice"]
    assert v["store_bytes"]["evenly:4"] == 4 * clip_layer * K400


def test_frames_change_the_tokens_and_images_have_no_video_part() -> None:
    p16 = plan("vivit_b", "kinetics600", frames=16, measure=False)
    assert p16["tokens"] == 1 + 8 * 196 and p16["splits"] == KNOWN_SIZES["kinetics600"]
    assert "video" not in plan("vit_b", "kinetics400", measure=False)
    small = plan("vivit_test", "demo", measure=False)["video"]  # tiny: caching fits
    assert small["cache_all_reachable"] and small["recommend"] == "cached"
    with pytest.raises(ValueError, match="image model"):
        plan("vit_b", "kinetics400", frames=32, measure=False)
    with pytest.raises(ValueError, match="multiple of the tubelet"):
        plan("vivit_b", "kinetics400", frames=15, measure=False)


def test_vivit_macs_match_torch_flop_count() -> None:
    net = create_architecture("vivit_test").eval()
    for block in net.blocks:
        block.attn.fused_attn = False  # explicit matmuls, which the counter sees
    x = torch.randn(1, 3, 4, 32, 32)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.forward_intermediates(x, indices=[3], intermediates_only=True)
    assert counter.get_total_flops() == 2 * vit_macs(net).total
    # ViViT-B at 32 frames: ~455 GFLOPs in the ViViT paper's (multiply-accumulate) count
    assert 440e9 < vit_macs(create_architecture("vivit_b", device="meta")).total < 460e9


def test_plan_cli_and_budget_know_frames() -> None:
    out = CliRunner().invoke(
        app, ["plan", "--model", "vivit_e", "--dataset", "kinetics400", "--frames", "32",
              "--no-measure"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "32-frame clips" in out.output and "train live" in out.output
    b = plan_budget("vivit_e", "kinetics400", "1TB", frames=32)
    assert b["live_only"] and "live" in b["advice"]
    j = CliRunner().invoke(app, ["models", "--json"])
    rows = {r["model"]: r for r in json.loads(j.stdout)}
    assert rows["vivit_e"]["tokens"] == 4097 and rows["vivit_test"]["frames"] == 4
