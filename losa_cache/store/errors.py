"""What can go wrong when reading a store: one class per kind, each message naming the fix.

The CLI prints any of these as one line (they are ValueErrors); Python callers can catch
the kind they care about (an incomplete store can be finished, a damaged one repaired).
"""

from __future__ import annotations

__all__ = [
    "StoreError",
    "StoreIncompleteError",
    "StoreIntegrityError",
    "array_damage",
    "damage_message",
    "damaged",
    "repair_hint",
]


class StoreError(ValueError):
    """A store is missing, incomplete, damaged or not what the caller asked for."""


class StoreIncompleteError(StoreError):
    """Rows were asked for that extraction has not finished writing."""


class StoreIntegrityError(StoreError):
    """Bytes read from a store do not match what was written (damaged or missing file)."""


def repair_hint(store: str) -> str:
    """The fix for damage: mark the shards for rewriting, then let extraction rewrite them."""
    return (
        f"run `losa-cache verify {store} --repair`, then rerun the `losa-cache extract` "
        "command that wrote the store to rewrite the damaged shards"
    )


def damage_message(store: str, array: str, shard: int, file: str, reason: str) -> str:
    """What to say about a shard whose bytes fail their check: shard, file and fix."""
    return (
        f"store {store} is damaged: shard {shard} of {array} ({file}): {reason}; "
        f"{repair_hint(store)}"
    )


def damaged(store: str, array: str, shard: int, file: str, reason: str) -> StoreIntegrityError:
    return StoreIntegrityError(damage_message(store, array, shard, file, reason))


def array_damage(
    store: str, array: str, problem: str, fix: str | None = None
) -> StoreIntegrityError:
    """An array whose metadata disagrees with the manifest, or that belongs to another
    store: which array, what is wrong, and the fix (default: repair, then re-extract)."""
    return StoreIntegrityError(
        f"store {store} is damaged: array {array} ({store.rstrip('/')}/{array}/zarr.json): "
        f"{problem}; {fix or repair_hint(store)}"
    )
