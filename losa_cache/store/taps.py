"""Taps: what an extraction can write per image, and what each costs in bytes.

One parser (:func:`parse_taps`) and one price list (:func:`price_arrays`) shared by the
planner, extraction (``extract --taps``, ``--extend``) and ``subset``. Array names, dtypes
and attributes of each tap are the schema's (:mod:`losa_cache.store.schema`), the forward
pass that computes them :mod:`losa_cache.forward`.

Tap specs (comma-separated, e.g. ``"blocks,embed,sum:4,8"``):

==================  ========================================================================
``blocks``          block outputs b_i of the blocks chosen by ``--layers`` (0-based, timm)
``embed``           z0: the tokens entering block 0 (patch embed, prefix tokens, position
                    embedding, norm_pre); one (T, D) map per image
``attn``, ``mlp``   per chosen block, the attention / MLP branch output (after layer scale,
                    before the residual add): block output = input + attn + mlp
``sum:K1,K2,...``   MIST's gather G_k = z0 + b_1 + ... + b_k, one map per k. **k is 1-based
                    over blocks, as in the MIST paper**: G_k includes the outputs of the first
                    k blocks, i.e. 0-based timm blocks 0..k-1, so ``sum:1`` = z0 + output of
                    block 0 and ``sum:L`` sums every block. k = 0 would be z0 alone: use
                    ``embed``. ``sum:all`` = every k in 1..L; ``sum:evenly:N`` = the k of
                    ``evenly:N`` in paper numbering (depth 12, N 3 -> 4, 8, 12)
==================  ========================================================================

Bare integers after a ``sum:`` entry continue its list, so ``sum:4,8,blocks`` is G_4, G_8
and the blocks. ``--layers`` keeps timm's 0-based indices; only ``sum:`` counts from 1.

Bytes: every array is (N, T, D), prefix tokens first. fp16 and bf16 take 2 bytes a value,
fp32 4; int8 takes 1 byte a value plus one fp16 scale per (image, token) row of each array
(symmetric, absmax / 127), i.e. T * (D + 2) bytes per image and array.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from losa_cache.side.layers import evenly_spaced
from losa_cache.store.schema import DTYPE_ALIASES, DTYPES

__all__ = [
    "PER_BLOCK",
    "PRICE_DTYPES",
    "TAP_KINDS",
    "Tap",
    "array_bytes",
    "deepest_block",
    "parse_price_dtype",
    "parse_taps",
    "price_arrays",
    "tap_names",
]

TAP_KINDS = ("blocks", "embed", "attn", "mlp", "sum")
#: Taps with one array per block chosen by ``--layers``.
PER_BLOCK = ("blocks", "attn", "mlp")
#: dtype -> bytes per stored value; int8 adds an fp16 scale per (image, token) row.
PRICE_DTYPES: dict[str, int] = {name: size for name, (_, size) in DTYPES.items()} | {"int8": 1}
INT8_SCALE_BYTES = 2
_FORMS = "blocks, embed, attn, mlp, sum:K1,K2 (1-based k), sum:all, sum:evenly:N"


@dataclass(frozen=True)
class Tap:
    """One tap of a spec; ``ks`` holds the 1-based k of a ``sum`` tap, else ()."""

    kind: str
    ks: tuple[int, ...] = ()

    def names(self) -> list[str]:
        """Names as ``store.taps`` lists them: ``blocks``, ``embed``, ``sum:4``, ..."""
        return [f"sum:{k}" for k in self.ks] if self.kind == "sum" else [self.kind]


def parse_taps(spec: str | Sequence[str], depth: int) -> tuple[Tap, ...]:
    """Parse a tap spec (see the module docstring) for a ``depth``-block backbone."""
    items = [spec] if isinstance(spec, str) else list(spec)
    parts = [p.strip().lower() for item in items for p in item.split(",")]
    if not any(parts):
        raise ValueError(f"empty tap spec; expected some of {_FORMS}")
    taps: dict[str, Tap] = {}
    sums: list[int] = []
    in_sum = False
    for part in parts:
        if part.lstrip("-").isdigit():
            if not in_sum:
                raise ValueError(f"tap spec: {part!r} follows no 'sum:'; write sum:{part}")
            sums.append(_k(part, depth))
        elif part.startswith("sum:"):
            sums.extend(_sum_ks(part.removeprefix("sum:"), depth))
            in_sum = True
        elif part in TAP_KINDS and part != "sum":
            if part in taps:
                raise ValueError(f"tap spec names {part!r} twice; name each tap once")
            taps[part] = Tap(part)
            in_sum = False
        else:
            raise ValueError(f"unknown tap {part!r}; expected some of {_FORMS}")
    out = [taps[k] for k in TAP_KINDS if k in taps]
    if sums:
        out.append(Tap("sum", tuple(sorted(set(sums)))))
    return tuple(out)


def _sum_ks(text: str, depth: int) -> tuple[int, ...]:
    """The k of ``all``, ``evenly:N`` or one integer, 1-based."""
    if text == "all":
        return tuple(range(1, depth + 1))
    if text.startswith("evenly:"):
        raw = text.removeprefix("evenly:")
        if not raw.isdigit() or not 1 <= int(raw) <= depth:
            raise ValueError(f"sum:evenly:{raw} needs an integer N in 1..{depth} (the depth)")
        return tuple(i + 1 for i in evenly_spaced(int(raw), depth))
    return (_k(text, depth),)


def _k(text: str, depth: int) -> int:
    try:
        k = int(text)
    except ValueError:
        raise ValueError(f"sum:{text!r} is no k; expected {_FORMS}") from None
    if k == 0:
        raise ValueError("sum:0 would be z0 alone; ask for the 'embed' tap instead")
    if not 1 <= k <= depth:
        raise ValueError(
            f"sum:{k} is out of range: k counts blocks from 1 (MIST's numbering), 1..{depth} here"
        )
    return k


def tap_names(taps: Sequence[Tap]) -> list[str]:
    return [name for tap in taps for name in tap.names()]


def parse_price_dtype(dtype: str) -> str:
    """A store dtype name for pricing: the schema's dtypes (and aliases) plus ``int8``."""
    d = DTYPE_ALIASES.get(dtype.strip().lower(), dtype.strip().lower())
    if d not in PRICE_DTYPES:
        raise ValueError(f"unknown store dtype {dtype!r}; choose one of fp16, bf16, fp32, int8")
    return d


def array_bytes(tokens: int, dim: int, dtype: str) -> int:
    """Bytes of one (T, D) map of one image in ``dtype`` (int8: codes + fp16 row scales)."""
    d = parse_price_dtype(dtype)
    scales = tokens * INT8_SCALE_BYTES if d == "int8" else 0
    return tokens * dim * PRICE_DTYPES[d] + scales


def price_arrays(
    taps: Sequence[Tap], layers: Sequence[int], tokens: int, dim: int, dtype: str
) -> list[dict[str, object]]:
    """Every array the taps write, with its bytes per image: one row per (tap, block or k)."""
    each = array_bytes(tokens, dim, dtype)
    rows: list[dict[str, object]] = []
    for tap in taps:
        if tap.kind in PER_BLOCK:
            rows += [{"tap": tap.kind, "block": b, "bytes_per_image": each} for b in layers]
        elif tap.kind == "embed":
            rows.append({"tap": "embed", "bytes_per_image": each})
        else:
            rows += [{"tap": f"sum:{k}", "k": k, "bytes_per_image": each} for k in tap.ks]
    return rows


def deepest_block(taps: Sequence[Tap], layers: Sequence[int]) -> int:
    """0-based index of the last block the backbone must run for these taps (-1: none)."""
    deepest = -1
    for tap in taps:
        if tap.kind in PER_BLOCK:
            deepest = max(deepest, *layers)
        elif tap.kind == "sum":
            deepest = max(deepest, max(tap.ks) - 1)  # G_k needs 1-based blocks 1..k
    return deepest
