"""Tap specs and their prices (losa_cache.store.taps) and budget sizes (plan.parse_size)."""

from __future__ import annotations

import pytest

from losa_cache.plan import parse_size
from losa_cache.side.layers import evenly_spaced
from losa_cache.store.taps import (
    Tap,
    array_bytes,
    deepest_block,
    parse_taps,
    price_arrays,
    tap_names,
)


def test_default_and_mixed_specs_parse_in_canonical_order() -> None:
    assert parse_taps("blocks", 12) == (Tap("blocks"),)
    taps = parse_taps("sum:8,4,embed,blocks,mlp", 12)
    assert taps == (Tap("blocks"), Tap("embed"), Tap("mlp"), Tap("sum", (4, 8)))
    assert tap_names(taps) == ["blocks", "embed", "mlp", "sum:4", "sum:8"]
    assert parse_taps(["blocks", "sum:2", "sum:1"], 12)[-1] == Tap("sum", (1, 2))


def test_sum_k_is_one_based_over_blocks() -> None:
    # G_k = z0 + b_1 + ... + b_k: the first k blocks, 0-based timm blocks 0..k-1
    assert deepest_block(parse_taps("sum:1", 12), ()) == 0
    assert deepest_block(parse_taps("sum:12", 12), ()) == 11
    assert deepest_block(parse_taps("embed", 12), ()) == -1  # patch embedding only
    assert deepest_block(parse_taps("blocks,sum:3", 12), (1, 7)) == 7
    assert parse_taps("sum:all", 12)[0].ks == tuple(range(1, 13))
    assert parse_taps("sum:evenly:3", 12)[0].ks == (4, 8, 12)
    # evenly:N in paper numbering is the 0-based evenly:N blocks plus one
    assert parse_taps("sum:evenly:4", 40)[0].ks == tuple(i + 1 for i in evenly_spaced(4, 40))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sum:0", "embed"),
        ("sum:13", "1..12"),
        ("4,sum:3", "write sum:4"),
        ("blocks,blocks", "twice"),
        ("mlps", "unknown tap"),
        ("sum:evenly:0", "1..12"),
        ("sum:x", "no k"),
        ("", "empty"),
    ],
)
def test_bad_tap_specs_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_taps(spec, 12)


def test_array_bytes_per_dtype_with_int8_row_scales() -> None:
    t, d = 197, 768
    assert array_bytes(t, d, "fp16") == array_bytes(t, d, "bf16") == t * d * 2
    assert array_bytes(t, d, "float32") == t * d * 4
    assert array_bytes(t, d, "int8") == t * d + t * 2  # codes + one fp16 scale per token row
    with pytest.raises(ValueError, match="int8"):
        array_bytes(t, d, "int4")


def test_price_arrays_has_one_row_per_block_embed_and_k() -> None:
    rows = price_arrays(parse_taps("blocks,embed,attn,sum:2,5", 6), (1, 5), 10, 4, "fp16")
    names = [(r["tap"], r.get("block", r.get("k"))) for r in rows]
    assert names == [
        ("blocks", 1),
        ("blocks", 5),
        ("embed", None),
        ("attn", 1),
        ("attn", 5),
        ("sum:2", 2),
        ("sum:5", 5),
    ]
    assert {r["bytes_per_image"] for r in rows} == {10 * 4 * 2}


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("500GB", 500 * 10**9),
        ("1.5TB", 1_500_000_000_000),
        ("800 MiB", 800 * 2**20),
        ("2gib", 2 * 2**30),
        ("500G", 500 * 10**9),
        ("1024", 1024),
        (".5 kb", 500),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["5XB", "GB", "-1GB", "0GB", "iB", "1.2.3GB", "12 G B"])
def test_parse_size_rejects_with_examples(text: str) -> None:
    with pytest.raises(ValueError, match=r"500GB|not positive"):
        parse_size(text)
