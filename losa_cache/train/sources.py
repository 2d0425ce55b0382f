"""Where features come from: a feature store here, or (live.py) a backbone on images.

Both give the same description (:class:`SourceInfo`), the same row numbering (store
rows), each split's rows (the domain of the batch order), each task's labels, and feeds
(:mod:`losa_cache.train.feed`) with the same pieces, keyed as side networks read them
(:mod:`losa_cache.train.keys`: blocks and the store taps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from losa_cache.device import pick_device  # the one picker; trainer and sweep import it here
from losa_cache.methods import get_method
from losa_cache.side import SideConfig
from losa_cache.store import FeatureStore, StoreError, open_store
from losa_cache.train.config import TrainConfig
from losa_cache.train.feed import Feed
from losa_cache.train.keys import Key, available_keys, check_held, plan_reads, side_inputs, taps_fix
from losa_cache.train.order import RowOrder
from losa_cache.train.reader import TORCH_DTYPES, StoreReader

__all__ = [
    "DataSource",
    "SourceInfo",
    "StoreSource",
    "TaskData",
    "build_side_config",
    "no_val_note",
    "pick_device",
    "resolve_splits",
]

#: Store reader threads under ``--workers -1`` (auto): reads wait on I/O, not on cores.
READER_THREADS = 4
SPLIT_DEFAULTS = {
    "train": ("train", "train800"),
    "val": ("val", "val200", "validation"),
    "test": ("test",),
}


@dataclass(frozen=True)
class SourceInfo:
    """The backbone behind the features."""

    depth: int
    dim: int
    tokens: int
    prefix_tokens: int
    layers: tuple[int, ...]  # blocks available
    fingerprint: dict[str, Any]
    splits: list[str]
    default_task: str
    dtype: torch.dtype  # of the features a side network gets (int8 stores: float32)
    row_bytes: int  # of one stored array of one row, as the feed holds it (int8: + scales)
    #: the tap keys the source holds besides the blocks ("embed", "sum:8", "attn:3", ...)
    taps: tuple[str, ...] = ()
    #: the store's tap names (store.taps), for messages
    tap_names: tuple[str, ...] = ("blocks",)
    #: the live backbone's features, not a store's (a missing key cannot be extracted)
    live: bool = False
    #: the store this one is a ``losa-cache subset`` of (its fixes come from there)
    subset_of: str | None = None

    @property
    def keys(self) -> tuple[Key, ...]:
        """Every key the source holds an array for."""
        return (*self.layers, *self.taps)

    def feed_bytes(self, keys: Sequence[Key]) -> int:
        """Bytes one row of ``keys`` takes in a feed or cache: a held array its stored size
        (int8: codes and scales), a ``sum:k`` derived from blocks its fp32 map."""
        held = set(self.keys)
        return sum(self.row_bytes if k in held else 4 * self.tokens * self.dim for k in keys)

    frames: int = 1  # token frames: video tokens are prefix + frames x grid (Eq. 6's layout)
    #: augmented views per training row besides the clean one (a store's index/views; live:
    #: --views N with --augment)
    views: int = 0


@dataclass(frozen=True)
class TaskData:
    """One labelling: the label of every row (-1: none) and the class names."""

    task: str
    labels: np.ndarray  # (N,) int64
    classes: list[str]

    def labelled(self, rows: np.ndarray) -> np.ndarray:
        return rows[self.labels[rows] >= 0]


class DataSource(Protocol):
    info: SourceInfo

    def task(self, name: str | None) -> TaskData: ...

    def split_rows(self, split: str) -> np.ndarray: ...

    def feed(
        self,
        order: RowOrder,
        rows: np.ndarray,
        layers: Sequence[Key],
        piece_rows: int,
        device: torch.device,
        workers: int,
        max_memory: int | None = None,
    ) -> Feed: ...

    def close(self) -> None: ...


def resolve_splits(cfg: Any, available: Sequence[str]) -> dict[str, str | None]:
    """train/val/test split names: explicit ones must exist; auto picks the usual names."""
    out: dict[str, str | None] = {}
    for role, given in (
        ("train", cfg.train_split),
        ("val", cfg.val_split),
        ("test", cfg.test_split),
    ):
        if given == "none" and role != "train":
            out[role] = None
        elif given == "auto":
            out[role] = next((s for s in SPLIT_DEFAULTS[role] if s in available), None)
        elif given in available:
            out[role] = given
        else:
            raise StoreError(f"unknown {role} split {given!r}; available splits: {list(available)}")
    if out["train"] is None:
        raise StoreError(
            f"no training split: none of {list(SPLIT_DEFAULTS['train'])} exists; "
            f"pass --train-split, one of {list(available)}"
        )
    return out


def no_val_note(available: Sequence[str], consequence: str) -> str:
    """One line for a run without a validation split: what follows, and how to get one."""
    return (
        f"no validation split (the data has {list(available)}): {consequence}; to "
        "validate, extract a store with `--split val=0.1` (held out from train, e.g. "
        "`losa-cache extract ... --split val=0.1,test=0.1`) or name a split with "
        "--val-split"
    )


class StoreSource:
    """Features read from a complete feature store: blocks and taps, any dtype (int8 as
    codes and scales, dequantized per batch on the training device)."""

    def __init__(self, path: str | FeatureStore, storage_options: dict | None = None) -> None:
        # an open store is taken as it is: `eval` scores the finished shards of one opened
        # with allow_incomplete
        opened = isinstance(path, FeatureStore)
        self.store: FeatureStore = path if opened else open_store(path, storage_options)
        if not (opened and self.store.allow_incomplete):
            self.store.require_complete()
        s = self.store
        held = available_keys(s.taps, s.layout.layers)
        self.info = SourceInfo(
            depth=s.depth,
            dim=s.layout.dim,
            tokens=s.layout.tokens,
            prefix_tokens=int(s.token_layout.get("prefix_tokens", 1)),
            layers=tuple(s.layers),
            fingerprint=s.fingerprint,
            splits=list(s.manifest.splits),
            default_task=s.default_task,
            dtype=TORCH_DTYPES.get(s.dtype, torch.float32),  # int8: dequantized to fp32
            row_bytes=s.layout.row_bytes,
            taps=tuple(k for k in held if isinstance(k, str)),
            tap_names=tuple(s.taps),
            frames=int(s.token_layout.get("frames", 1)),
            views=stored_views(s),
            subset_of=(s.manifest.subset or {}).get("source"),
        )

    def task(self, name: str | None) -> TaskData:
        task = name or self.store.default_task
        classes = self.store.classes(task)  # StoreError listing the tasks if unknown
        return TaskData(task, self.store.labels(task).astype(np.int64), classes)

    def split_rows(self, split: str) -> np.ndarray:
        return self.store.split_rows(split, valid_only=True)

    def feed(
        self,
        order: RowOrder,
        rows: np.ndarray,
        layers: Sequence[Key],
        piece_rows: int,
        device: torch.device,
        workers: int,
        max_memory: int | None = None,
    ) -> StoreReader:
        return StoreReader(
            self.store,
            rows,
            np.zeros(len(rows), np.int64),
            layers,
            piece_rows,
            seed=order.seed,
            device=device,
            buffer_rows=order.buffer_rows,
            workers=workers if workers >= 0 else READER_THREADS,
            order_rows=order.rows,
            max_memory=max_memory,
            views=order.views,
        )

    def close(self) -> None:
        pass


def stored_views(store: FeatureStore) -> int:
    """Augmented views per training row the store holds (extract --views)."""
    from losa_cache.store import schema as S

    return int(store.group[S.VIEWS].shape[1]) - 1 if S.VIEWS in store.group else 0


def _live_keys(info: SourceInfo) -> str:
    """What a live backbone computes, in a few words: 'blocks 0..11, embed, sum:1..12, ...'."""
    last = info.depth - 1
    words = [f"blocks 0..{last}"]
    if "embed" in info.taps:
        words += ["embed", f"sum:1..{info.depth}"]
    if "attn:0" in info.taps:
        words.append(f"attn:i and mlp:i for i in 0..{last}")
    return ", ".join(words) + ("" if info.taps else "; no taps: not a timm ViT")


def build_side_config(cfg: TrainConfig, info: SourceInfo, num_classes: int) -> SideConfig:
    """The side network for these features; its blocks must be available."""
    spec = cfg.layers
    if spec == "store":  # a store of taps alone (e.g. sum:k for MIST): the network's default
        spec = ",".join(map(str, info.layers)) or "all"
    # a live baseline's head is the linear probe's: on b_L of the backbone it trains
    method = "linear" if get_method(cfg.method).live else cfg.method
    # the run's rank and pool, the method's options; frames come from the features
    options = {
        n: getattr(cfg, n) for n in ("rank", "pool", *get_method(method).uses) if n != "layers"
    }
    side = SideConfig(
        num_layers=info.depth,
        dim=info.dim,
        tokens=info.tokens,
        num_classes=num_classes,
        method=method,
        layers=spec,
        prefix_tokens=info.prefix_tokens,
        frames=info.frames,
        **options,
    )
    need = side.required_layers
    missing = sorted(set(need) - set(info.layers))
    if missing and not info.layers:
        raise StoreError(no_blocks_message(cfg.method, info))
    if missing:
        raise StoreError(
            f"{cfg.method} with --layers {cfg.layers} needs blocks {list(need)}, but the store "
            f"has no blocks {missing}; it holds blocks {list(info.layers)} of {info.depth} "
            "(choose --layers among those, or re-extract with the blocks you need)"
        )
    if info.live:
        _, _, missing = plan_reads(side_inputs(side), info.keys)
        if missing:
            raise StoreError(
                f"{cfg.method} reads {missing[0]!r}, which the live backbone does not compute "
                f"(it gives {_live_keys(info)}): choose the method's options (--layers, --taps, "
                "--gather-k ...) among those"
            )
    check_held(
        side_inputs(side), info.keys, cfg.method, info.tap_names, info.layers, info.subset_of
    )
    return side


def no_blocks_message(method: str, info: SourceInfo) -> str:
    """``method`` reads block outputs from a store that holds none (a ``sum:k`` subset):
    the methods its taps feed, or where blocks come from."""
    sums = [t for t in info.tap_names if t.startswith("sum:")]
    fixes = [f"train MIST on its {t} (`--method mist --gather-k {t[4:]}`)" for t in sums[-1:]]
    fixes.append(taps_fix("blocks", info.subset_of))
    return (
        f"{method} reads block outputs, but the store holds no blocks (it holds taps "
        f"{list(info.tap_names)}): " + ", or ".join(fixes)
    )
