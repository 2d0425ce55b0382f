"""Taps: embed, attn/mlp branches, MIST sums; each against references from timm's modules."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from losa_cache.extract import ExtractConfig
from losa_cache.forward import forward_taps
from losa_cache.store import open_store
from losa_cache.store import schema as S
from losa_cache.store.store import StoreError
from losa_cache.store.writer import verify_store

ALL_TAPS = "blocks,embed,attn,mlp,sum:1,2,4"


def tiny_vit(**kw) -> VisionTransformer:
    """Layer scale and register tokens on, so every part of the token path is exercised."""
    torch.manual_seed(0)
    args = dict(
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=4,
        num_heads=2,
        mlp_ratio=2.0,
        init_values=0.5,
        reg_tokens=2,
        drop_path_rate=0.1,
    )
    return VisionTransformer(**{**args, **kw}).eval()


def references(model: VisionTransformer, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Taps read off timm's own forward with hooks (independent of losa_cache.forward)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.blocks[0].register_forward_pre_hook(lambda _m, args: seen.__setitem__("z0", args[0]))
    ]
    for i, blk in enumerate(model.blocks):
        hooks.append(
            blk.drop_path1.register_forward_hook(
                lambda _m, _a, out, i=i: seen.__setitem__(f"attn{i}", out)
            )
        )
        hooks.append(
            blk.drop_path2.register_forward_hook(
                lambda _m, _a, out, i=i: seen.__setitem__(f"mlp{i}", out)
            )
        )
        hooks.append(
            blk.register_forward_hook(lambda _m, _a, out, i=i: seen.__setitem__(f"block{i}", out))
        )
    with torch.inference_mode():
        model.forward_features(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize(
    "kw", [{}, {"class_token": False, "reg_tokens": 0, "global_pool": "avg", "init_values": None}]
)
def test_each_tap_equals_timm_reference_fp32_exact(kw: dict) -> None:
    model = tiny_vit(**kw)
    x = torch.randn(3, 3, 32, 32)
    ref = references(model, x)
    layers = [0, 2, 3]
    got = forward_taps(model, x, layers, ["blocks", "embed", "attn", "mlp", "sum:1", "sum:3"])
    assert torch.equal(got[S.tap_array("embed")], ref["z0"])
    for b in layers:
        assert torch.equal(got[S.tap_array("attn", b)], ref[f"attn{b}"])
        assert torch.equal(got[S.tap_array("mlp", b)], ref[f"mlp{b}"])
        assert torch.equal(got[S.tap_array("blocks", b)], ref[f"block{b}"])
        x_in = ref["z0"] if b == 0 else ref[f"block{b - 1}"]
        recomposed = (x_in + got[S.tap_array("attn", b)]) + got[S.tap_array("mlp", b)]
        with torch.inference_mode():
            assert torch.equal(recomposed, model.blocks[b](x_in))
    with torch.inference_mode():
        inter = model.forward_intermediates(
            x, indices=layers, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True
        )
    for b, out in zip(layers, inter, strict=True):
        spatial, prefix = out if isinstance(out, tuple) else (out, None)
        full = spatial if prefix is None else torch.cat([prefix, spatial], 1)
        assert torch.equal(got[S.tap_array("blocks", b)], full)
    for k in (1, 3):  # 1-based: G_k = z0 + outputs of blocks 0..k-1
        want = ref["z0"].float() + sum(ref[f"block{i}"].float() for i in range(k))
        torch.testing.assert_close(got[S.tap_array(f"sum:{k}")], want, rtol=1e-6, atol=1e-6)


#: tiny_extract's settings with this module's limit and dtype (its two shared stores)
TAPS_STORE = {"limit": 4, "dtype": "fp32", "chunk_rows": 2, "shard_rows": 4, "batch_size": 4}


@pytest.fixture(scope="module")
def extract_store(tiny_extract: Callable[..., str]) -> Callable[..., str]:
    """This module's stores: :func:`tiny_extract` with limit=4, dtype="fp32"."""
    return functools.partial(tiny_extract, limit=4, dtype="fp32")


@pytest.fixture(scope="module")
def tap_store(make_store: Callable[..., str]) -> str:
    return make_store("all", **TAPS_STORE, taps=ALL_TAPS)


@pytest.fixture(scope="module")
def blocks_store(make_store: Callable[..., str]) -> str:
    return make_store("blocks", **TAPS_STORE)


def test_store_lists_taps_and_arrays_recompose(tap_store: str, blocks_store: str) -> None:
    s, plain = open_store(tap_store), open_store(blocks_store)
    assert s.taps == ["blocks", "embed", "attn", "mlp", "sum:1", "sum:2", "sum:4"]
    assert plain.taps == ["blocks"] and s.layers == plain.layers == [0, 1, 2, 3]
    z0 = s.tap_features("embed")[:]
    assert z0.shape == (12, 17, 32)
    prev = z0
    for b in s.layers:  # one pass: block outputs identical to forward_intermediates'
        out = s.features(b)[:]
        np.testing.assert_array_equal(out, plain.features(b)[:])
        attn, mlp = s.tap_features("attn", b)[:], s.tap_features("mlp", b)[:]
        np.testing.assert_array_equal((prev + attn) + mlp, out)
        prev = out
    for k in (1, 2, 4):
        want = z0.astype(np.float32) + sum(plain.features(i)[:] for i in range(k))
        np.testing.assert_allclose(s.tap_features(f"sum:{k}")[:], want, rtol=1e-6, atol=1e-5)
    arr = s.group[S.tap_array("sum:2")]
    assert arr.attrs["k"] == 2 and "G_k" in arr.attrs["provenance"]
    assert tuple(arr.metadata.dimension_names) == S.FEATURE_DIMS
    assert verify_store(tap_store)["bad"] == []


def test_tap_features_refuses_what_is_not_there(tap_store: str, blocks_store: str) -> None:
    with pytest.raises(StoreError, match=r"tap 'embed' is not in this store.*--extend"):
        open_store(blocks_store).tap_features("embed")
    s = open_store(tap_store)
    with pytest.raises(StoreError, match="pass block="):
        s.tap_features("attn")
    with pytest.raises(StoreError, match="drop block="):
        s.tap_features("sum:1", block=0)
    np.testing.assert_array_equal(s.tap_features("mlp", -1)[:], s.tap_features("mlp", 3)[:])


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_sums_of_half_stores_are_the_cast_of_fp32(
    extract_store: Callable[..., str], tmp_path: Path, tap_store: str, dtype: str
):
    half = open_store(extract_store(tmp_path / "h.zarr", taps="embed,sum:2,4", dtype=dtype))
    full = open_store(tap_store)
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    for k in (2, 4):
        want = torch.from_numpy(full.tap_features(f"sum:{k}")[:]).to(torch_dtype).float()
        np.testing.assert_array_equal(half.tap_features(f"sum:{k}")[:], want.numpy())
    assert half.layers == [] and half.taps == ["embed", "sum:2", "sum:4"]


def test_resume_with_other_taps_is_refused(
    extract_store: Callable[..., str], tmp_path: Path
) -> None:
    extract_store(tmp_path / "s.zarr", taps="blocks")
    with pytest.raises(StoreError, match=r"(?s)taps: store has \['blocks'\].*--extend"):
        extract_store(tmp_path / "s.zarr", taps="blocks,embed")


@pytest.mark.slow
def test_dask_extraction_of_taps_equals_in_process(tmp_path: Path, tap_store: str) -> None:
    from losa_cache.distributed import extract_distributed

    cfg = dict(model="vit_micro", random_init=True, dataset="demo", limit=4, workers=0,
               chunk_rows=2, shard_rows=4, batch_size=4, dtype="fp32", taps=ALL_TAPS)  # fmt: skip
    path = str(tmp_path / "dask.zarr")
    extract_distributed(ExtractConfig(store=path, **cfg), cluster="local:1", progress=False)
    a, b = open_store(path), open_store(tap_store)
    assert a.taps == b.taps
    for tap in a.taps:
        for block in a.layers if tap in ("blocks", "attn", "mlp") else [None]:
            np.testing.assert_array_equal(a.tap_features(tap, block)[:],
                                          b.tap_features(tap, block)[:])  # fmt: skip
    with pytest.raises(ValueError, match="--extend runs in one process"):
        extract_distributed(ExtractConfig(store=path, extend=True, **cfg), cluster="local:1")
