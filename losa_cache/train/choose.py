"""Settings chosen on the validation split: MIST's k of G_k.

MIST sends one summed map G_k per image and picks k on val among a few candidates (the
paper: the best of three, N included; ``--k-candidates``, default ``thirds`` = N/3, 2N/3,
N). With ``--gather-k`` unset, :func:`candidate_configs` turns one TrainConfig into one
per candidate k the store can feed (its ``sum:k`` tap, or ``embed`` and blocks 0..k-1),
each in ``OUT/k/k<k>/``. The trainer trains them together as a sweep trains its runs (one
engine, one read of the store per tick for all of them) and :func:`keep_best` saves the
best on val as the run's adapter in ``OUT``, with every candidate's val accuracy in
``metrics.json`` and the adapter (``k_choice``). ``--gather-k`` fixes k: one run.

A store holding a single ``sum:k`` (the device's ``subset --taps sum:8``) trains that k
when the candidates are the default; any other store that cannot feed every candidate
is refused, naming the taps to extract or ``subset``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from losa_cache.methods import get_method
from losa_cache.store import StoreError
from losa_cache.train.config import TrainConfig
from losa_cache.train.keys import plan_reads, taps_fix
from losa_cache.train.sources import SourceInfo, resolve_splits

__all__ = ["K_DIR", "candidate_configs", "k_to_choose", "keep_best"]

K_DIR = "k"  # OUT/k/k<k>/: one candidate's run


def k_to_choose(cfg: TrainConfig, info: SourceInfo) -> tuple[int, ...]:
    """The k MIST trains on this source (one: nothing to choose); () for other methods."""
    runs = get_method(cfg.method).runs(dataclasses.asdict(cfg), info.depth)
    if runs == [dataclasses.asdict(cfg)]:  # nothing to choose
        return ()
    ks = tuple(r["gather_k"] for r in runs)
    missing = [k for k in ks if plan_reads([f"sum:{k}"], info.keys)[2]]
    held = [k for k in range(1, info.depth + 1) if f"sum:{k}" in info.keys]
    if missing and cfg.k_candidates == "thirds" and len(held) == 1:
        return tuple(held)  # the one map the server sent
    if len(ks) > 1 and resolve_splits(cfg, info.splits)["val"] is None:
        raise StoreError(no_val_message(info, ks))
    if not missing:
        return ks
    raise StoreError(missing_ks_message(cfg, info, ks, missing))


def _fed(info: SourceInfo) -> list[int]:
    """Every k the source can feed G_k for (a sum:k tap, or embed and blocks 0..k-1)."""
    return [k for k in range(1, info.depth + 1) if not plan_reads([f"sum:{k}"], info.keys)[2]]


def _one_k(info: SourceInfo) -> list[str]:
    """Ways to train MIST on this source without choosing k."""
    fed = _fed(info)
    fixes = [f"fix k with --gather-k {fed[-1]}"] if fed else []
    if info.depth - 1 in info.layers:
        fixes.append(f"train on block {info.depth - 1}'s output with --gather last")
    return fixes


def no_val_message(info: SourceInfo, ks: tuple[int, ...]) -> str:
    """MIST would choose k on val, but there is none: one line with the ways out."""
    fixes = [*_one_k(info), "extract a store with `--split val=0.1` (held out from train)"]
    return (
        f"mist chooses k on val among {list(ks)}, but there is no validation split (the "
        f"data has {list(info.splits)}): " + "; or ".join(fixes)
    )


def missing_ks_message(cfg: TrainConfig, info: SourceInfo, ks: tuple[int, ...],
                       missing: list[int]) -> str:  # fmt: skip
    """One line: the k MIST cannot feed, and only fixes that work on this store."""
    names = ",".join(map(str, missing))
    fed = _fed(info)
    every = ",".join(map(str, ks))  # a new subset holds them all; an extension adds those missing
    fixes = [taps_fix("sum:" + (every if info.subset_of else names), info.subset_of)]
    if not info.subset_of and set(range(max(ks))) <= set(info.layers):  # z0: every G_k
        fixes.insert(0, f"{taps_fix('embed')} (z0: the feed then sums every G_k)")
    if len(fed) > 1:
        fixes.append(f"choose among the k it feeds with --k-candidates {','.join(map(str, fed))}")
    fixes += _one_k(info)
    return (
        f"mist chooses k on val among {list(ks)} (--k-candidates {cfg.k_candidates}), but "
        f"the store cannot feed sum:{names} (it holds taps {list(info.tap_names)}, blocks "
        f"{list(info.layers)}): " + "; or ".join(fixes)
    )


def candidate_configs(cfg: TrainConfig, info: SourceInfo) -> list[TrainConfig]:
    """``[cfg]``, or one config per k to choose among (each in ``OUT/k/k<k>``)."""
    ks = k_to_choose(cfg, info)
    if len(ks) == 1:
        return [dataclasses.replace(cfg, gather_k=ks[0])]
    if not ks:
        return [cfg]
    return [
        dataclasses.replace(cfg, gather_k=k, out=str(Path(cfg.out, K_DIR, f"k{k}"))) for k in ks
    ]


def keep_best(cfg: TrainConfig, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The candidate with the best final val accuracy (ties: the smaller k, a shorter
    backbone at prediction) as ``cfg.out``'s adapter and metrics.json."""
    from losa_cache.adapter import load_adapter, save_adapter
    from losa_cache.outdir import atomic_write_text
    from losa_cache.train import checkpoint as ckpt

    by_k = {m["options"]["gather_k"]: m for m in results}
    scored = {k: m["final_val_acc"] for k, m in by_k.items() if m["complete"]}
    if not any(v is not None for v in scored.values()):
        raise StoreError(
            f"mist chooses k on the validation split, but no candidate has a val accuracy "
            f"({sorted(by_k)}): give --val-split (a store without val: extract one with "
            "`--split val=0.1`), or fix k with --gather-k"
        )
    best = max((k for k, v in scored.items() if v is not None), key=lambda k: (scored[k], -k))
    choice = {"candidates": {str(k): scored.get(k) for k in sorted(by_k)}, "chosen": best,
              "by": "final val accuracy",
              "runs": {str(k): m["out"] for k, m in by_k.items()}}  # fmt: skip
    metrics = {**by_k[best], "k_choice": choice, "out": cfg.out}
    adapter = load_adapter(by_k[best]["adapter"])
    meta = {"fingerprint": adapter.fingerprint, "classes": adapter.classes,
            "task": adapter.task, "train_config": adapter.meta.get("train_config"),
            "metrics": {**adapter.meta.get("metrics", {}), "k_choice": choice}}  # fmt: skip
    metrics["adapter"] = str(save_adapter(cfg.out, adapter.model, adapter.config, meta))
    text = json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_text(Path(cfg.out) / ckpt.METRICS, text)
    return metrics
