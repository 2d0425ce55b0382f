"""Backbone layer selection: which block outputs b_i a side network reads.

Indices are **0-based block indices**, the same convention as timm's
``forward_intermediates(indices=[...])``: block 0 is the first transformer block and
block ``depth - 1`` the last one (the paper's b_L). The paper counts blocks from 1, so
its "layers 10, 20, 30, 40 of ViT-g" are ``9,19,29,39`` here (= ``evenly:4``).

Spec strings accepted by :func:`parse_layers`:

=============  ==========================================================================
``all``        every block, ``0 .. depth-1``
``last:N``     the last N blocks
``evenly:N``   N evenly spaced blocks ending at the last one (Table 5 of the paper):
               1-based block ``floor(k * depth / N)`` for k = 1..N
``3,6,-1``     explicit 0-based indices; negative ones count from the end as in timm.
               A single number (``-1``) is a one-element list, *not* timm's "last n"
               meaning of a bare int: use ``last:N`` for that.
=============  ==========================================================================

The result is always a sorted tuple of distinct, non-negative indices.
"""

from __future__ import annotations

__all__ = ["evenly_spaced", "parse_layers"]

_FORMS = "'all', 'last:N', 'evenly:N' or a comma-separated list of 0-based indices like '3,6,-1'"


def parse_layers(spec: str, depth: int) -> tuple[int, ...]:
    """Turn a layer spec (see the module docstring) into sorted 0-based block indices."""
    if depth < 1:
        raise ValueError(f"backbone depth must be >= 1, got {depth}")
    text = spec.strip().lower()
    if not text:
        raise ValueError(f"empty layer spec; expected {_FORMS}")
    if text == "all":
        return tuple(range(depth))
    if text.startswith("last:"):
        n = _count(text, "last", depth)
        return tuple(range(depth - n, depth))
    if text.startswith("evenly:"):
        return evenly_spaced(_count(text, "evenly", depth), depth)
    return _explicit(text, depth)


def evenly_spaced(n: int, depth: int) -> tuple[int, ...]:
    """N evenly spaced 0-based block indices, the last one always ``depth - 1``.

    depth 40, n 4 -> (9, 19, 29, 39), i.e. the paper's blocks 10, 20, 30, 40.
    """
    if not 1 <= n <= depth:
        raise ValueError(f"evenly:{n} needs 1 <= N <= depth ({depth})")
    # depth / n >= 1, so floor(k * depth / n) is strictly increasing in k.
    return tuple(k * depth // n - 1 for k in range(1, n + 1))


def _count(text: str, form: str, depth: int) -> int:
    """The N of a ``form:N`` spec, checked to lie in 1..depth."""
    raw = text.split(":", 1)[1].strip()
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{form}:N needs an integer N, got {raw!r} in {text!r}") from None
    if not 1 <= n <= depth:
        raise ValueError(f"{form}:{n} needs 1 <= N <= depth; this backbone has {depth} blocks")
    return n


def _explicit(text: str, depth: int) -> tuple[int, ...]:
    """Parse '3,6,-1' into sorted, distinct, non-negative indices."""
    parts = [p.strip() for p in text.split(",")]
    try:
        raw = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"cannot parse layer spec {text!r}; expected {_FORMS}") from None
    bad = [i for i in raw if not -depth <= i < depth]
    if bad:
        raise ValueError(
            f"layer indices {bad} out of range for a {depth}-block backbone: "
            f"valid 0-based indices are 0..{depth - 1} (or -{depth}..-1 from the end)"
        )
    resolved = [i % depth for i in raw]
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"layer spec {text!r} names the same block twice (resolved {resolved})")
    return tuple(sorted(resolved))
