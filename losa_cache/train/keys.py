"""Feed keys: the names of the arrays a feed carries, and where a store holds each.

A side network reads a mapping ``{key: (B, T, D)}`` (see :mod:`losa_cache.side.base`):

=============  ==========================================================================
``3`` (int)    the output of block 3 (0-based, as timm and ``--layers`` count)
``"embed"``    z0, the tokens entering block 0 (store tap ``embed``)
``"sum:8"``    MIST's gather G_8 = z0 + outputs of blocks 0..7 (1-based k, store tap
               ``sum:8``)
``"attn:3"``   the attention branch of block 3 (0-based; store tap ``attn``, block 3)
``"mlp:3"``    the MLP branch of block 3 (store tap ``mlp``, block 3)
=============  ==========================================================================

A store that lacks ``sum:k`` but holds ``embed`` and blocks 0..k-1 still feeds it: the
feed reads those and sums them in fp32 in the order extraction does (z0 first, then the
blocks in order), so from an fp32 store the sum is bit-identical to the stored tap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from losa_cache.store import StoreError

__all__ = [
    "Key",
    "available_keys",
    "check_held",
    "deepest_block",
    "derived_parts",
    "key_tap",
    "missing_message",
    "plan_reads",
    "side_inputs",
    "sort_keys",
    "taps_fix",
]

Key = int | str
BRANCHES = ("attn", "mlp")


def _sort_key(key: Key) -> tuple[int, int, str]:
    if isinstance(key, int):
        return (0, key, "")
    kind, _, arg = key.partition(":")
    order = {"embed": 1, "attn": 2, "mlp": 3, "sum": 4}.get(kind, 5)
    return (order, int(arg) if arg.isdigit() else -1, key)


def sort_keys(keys: Iterable[Key]) -> tuple[Key, ...]:
    """Unique keys, blocks first (by index), then embed, attn:i, mlp:i, sum:k (by k)."""
    return tuple(sorted(set(keys), key=_sort_key))


def key_tap(key: Key) -> tuple[str, int | None]:
    """(store tap name, block) of a key: ``3`` -> ("blocks", 3), ``"attn:3"`` -> ("attn", 3),
    ``"sum:8"`` -> ("sum:8", None)."""
    if isinstance(key, int):
        return "blocks", key
    kind, _, arg = key.partition(":")
    if kind in BRANCHES:
        if not arg.isdigit():
            raise ValueError(f"feed key {key!r}: write {kind}:<0-based block>, e.g. {kind}:3")
        return kind, int(arg)
    if kind == "sum" and not arg.isdigit():
        raise ValueError(f"feed key {key!r}: write sum:<1-based k>, e.g. sum:8")
    if kind not in ("embed", "sum") or (kind == "embed" and arg):
        raise ValueError(
            f"unknown feed key {key!r}; expected a block index, embed, sum:k, attn:i or mlp:i"
        )
    return key, None


def derived_parts(key: Key) -> tuple[Key, ...] | None:
    """The keys ``key`` is the fp32 sum of when no store array holds it: ``sum:k`` ->
    ("embed", 0, ..., k-1); None for every other key."""
    if isinstance(key, str) and key.startswith("sum:"):
        k = int(key_tap(key)[0].split(":")[1])
        return ("embed", *range(k))
    return None


def deepest_block(keys: Iterable[Key]) -> int:
    """0-based index of the last block the backbone must run for ``keys`` (-1: none)."""
    deepest = -1
    for key in keys:
        tap, block = key_tap(key)
        if block is not None:
            deepest = max(deepest, block)
        elif tap.startswith("sum:"):
            deepest = max(deepest, int(tap.split(":")[1]) - 1)
    return deepest


def available_keys(taps: Sequence[str], layers: Sequence[int]) -> tuple[Key, ...]:
    """Every key a store of ``taps`` (``store.taps``) with ``layers`` holds an array for."""
    out: list[Key] = []
    for tap in taps:
        if tap == "blocks":
            out += list(layers)
        elif tap in BRANCHES:
            out += [f"{tap}:{b}" for b in layers]
        else:
            out.append(tap)
    return sort_keys(out)


def plan_reads(
    wanted: Iterable[Key], held: Iterable[Key]
) -> tuple[tuple[Key, ...], dict[Key, tuple[Key, ...]], list[Key]]:
    """(keys read from arrays, derived key -> the keys summed for it, keys missing)."""
    held = set(held)
    direct, derived, missing = set(), {}, []
    for key in sort_keys(wanted):
        parts = derived_parts(key)
        if key in held:
            direct.add(key)
        elif parts is not None and held.issuperset(parts):
            derived[key] = parts
        else:
            missing.append(key)
    reads = sort_keys(direct | {p for parts in derived.values() for p in parts})
    return reads, derived, missing


def taps_fix(taps: str, subset_of: str | None = None) -> str:
    """How a store gets ``taps`` (a ``--taps`` value), as an imperative: a subset store
    from the store it was cut from (it has no images to extract from), any other by
    extending it (``--extend`` keeps the store's other settings)."""
    if subset_of:
        return (f"copy them from the store this one was cut from, `losa-cache subset "
                f"{subset_of} NEW_STORE --taps {taps}` (once that store holds them)")  # fmt: skip
    return f"rerun the store's `losa-cache extract` command with `--extend --taps {taps}`"


def missing_message(key: Key, what: str, taps: Sequence[str], layers: Sequence[int],
                    subset_of: str | None = None) -> str:  # fmt: skip
    """One line: ``what`` needs ``key``, which the store lacks; what it holds; fixes that
    work on this store."""
    tap, block = key_tap(key)
    if isinstance(key, int):
        return (
            f"{what} needs block {key}, but the store holds blocks {list(layers)}: choose "
            "--layers among those, or re-extract with the blocks you need"
        )
    holds = f"it holds taps {list(taps)}, blocks {list(layers)}"
    if block is not None:  # --extend keeps the store's --layers
        if block not in layers:
            return (f"{what} reads the store tap {tap} of block {block}, outside the store's "
                    f"blocks ({holds}): choose --layers among those, or extract a new store "
                    f"with --layers including {block} and --taps {tap}")  # fmt: skip
        return (f"{what} reads the store tap {tap} (block {block}), which the store does not "
                f"hold ({holds}): {taps_fix(tap, subset_of)}")  # fmt: skip
    fix = taps_fix(tap, subset_of)
    parts = derived_parts(key)
    if parts is not None and set(parts[1:]) <= set(layers) and not subset_of:
        fix = (f"{taps_fix('embed')} (z0: the feed then sums z0 and blocks 0..{len(parts) - 2}),"
               f" or {fix}")  # fmt: skip
    elif parts is not None:
        fix += f" (or a store holding embed and blocks 0..{len(parts) - 2}, which the feed sums)"
    return f"{what} reads the store tap {tap}, which the store does not hold ({holds}): " + fix


def side_inputs(model_or_config: Any) -> tuple[Key, ...]:
    """Every key a side network (or its SideConfig) reads, its blocks and its taps in feed
    order; a live baseline's model: its ``required_layers`` (the images)."""
    from losa_cache.side import SideConfig, get_side_class
    from losa_cache.side.base import SideNetwork

    if isinstance(model_or_config, SideNetwork):
        config = model_or_config.config
    elif isinstance(model_or_config, SideConfig):
        config = model_or_config
    else:
        return tuple(model_or_config.required_layers)
    cls = get_side_class(config.method)
    return sort_keys([*cls.blocks(config), *cls.taps(config)])


def check_held(
    wanted: Iterable[Key],
    held: Iterable[Key],
    what: str,
    taps: Sequence[str],
    layers: Sequence[int],
    subset_of: str | None = None,
) -> None:
    """StoreError naming the first key of ``wanted`` neither held nor derivable."""
    _, _, missing = plan_reads(wanted, held)
    if missing:
        raise StoreError(missing_message(missing[0], what, taps, layers, subset_of))
