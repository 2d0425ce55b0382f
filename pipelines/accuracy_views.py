"""The accuracy harness's augmented-views rows: do stored views close the cache's gap?

A feature cache trains every epoch on the same clean features, where live training with
augmentation sees a new view each time; ``extract --views V --augment SPEC`` stores V
views per train image and training draws one per image and epoch (losa_cache/augment.py).
Per task of the harness (pipelines/accuracy.py, its protocol: lr on train800 -> val200,
final run scored once on test), with the configs of pipelines/accuracy.py:

* views (``--parts views``): LoSA r16 and MIST from stores with V = 0, 4, 8 views of
  ``rrc:0.08-1,flip`` (MIST's few-shot augmentation), rows ``losa r16 V=4`` ...; V = 0 is
  the harness's plain store. Next to them ``full aug V=8``: full fine-tuning live with the
  same augmentation, drawing from the same V views (``train --live --views 8 --augment``);
* mild (``--parts mild``): the views rows at V = 8 with the milder ``rrc:0.5-1`` (no
  flip; :data:`MILD_AUGMENT` says which labels it keeps), named ``losa r16 V=8
  rrc:0.5-1``, ``full aug V=8 rrc:0.5-1``;
* few-shot (``--parts fewshot``, MIST Fig. 4): k = 1, 2, 4, 8, 16 images per class of
  train800 (seeded), the lr chosen on val200, the final run on the k images, scored on
  test; LoSA r16 and MIST without views (``losa r16 4-shot``) and with 8 views
  (``losa r16 4-shot V=8``), and ``full 4-shot aug V=8`` live.

Every views row records what its store cost: extraction seconds and bytes on disk. The
k-shot rows of the cached methods are a split added to the V-view store (no new
extraction); the live rows read a derived task folder listing the same images.

``python -m losa_cache.pipelines.accuracy --parts views,mild,fewshot`` runs these rows alone
(results are reused per part); run ``accuracy-20261206-190217`` has the ``digits`` task.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from losa_cache.pipelines.accuracy import (
    AUGMENT,
    FEW_SHOT_VIEWS,
    LIVE_AUGMENTED,
    MILD_AUGMENT,
    MILD_VIEW_COUNTS,
    SHOTS,
    SPLITS,
    VIEW_COUNTS,
    VIEW_METHODS,
    Budget,
    extract_task,
    run_cached,
    run_live,
)

#: what the views stores hold: blocks (losa) and embed (MIST sums G_k from it)
VIEW_TAPS = "blocks,embed"
LIST_FILES = ("train800", "val200", "train800val200", "test")

Memo = Callable[[Path, Callable[[], dict[str, Any]]], dict[str, Any]]


def views_part(task_dir: Path, out: Path, spec: dict[str, Any], budget: Budget,
               parts: set[str], memo: Memo, counts: Sequence[int] = VIEW_COUNTS,
               shots: Sequence[int] = SHOTS, few_views: Sequence[int] = FEW_SHOT_VIEWS,
               mild: Sequence[int] = MILD_VIEW_COUNTS) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The views and/or few-shot rows of one task, by row name; each row carries what it
    is (``family``, ``views``, ``augment``, ``shots`` for the few-shot ones) for the plots."""
    rows: dict[str, dict[str, Any]] = {}
    task, e = task_dir.name, f"e{budget.epochs:g}"
    live = task in budget.live_tasks
    counts, mild = (counts if "views" in parts else ()), (mild if "mild" in parts else ())
    for aug, views in ((AUGMENT, counts), (MILD_AUGMENT, mild)):
        file_tag, row_tag = augment_tags(aug)
        for v in views:
            runs = out / "runs" / task / f"views{v}{file_tag}"
            tag = f" V={v}{row_tag}"
            compute = partial(view_rows, task_dir, out, spec, budget, v, aug, runs, tag)
            done = memo(out / "results" / task / f"views{v}{file_tag}-{e}.json", compute)
            rows |= stamp(done, tag, views=v, augment=aug if v else None)
        if live and max(views, default=0):
            v = max(views)
            compute = partial(live_augmented, task_dir, spec, budget, v, "", aug)
            done = memo(out / "results" / task / f"full-aug{v}{file_tag}-{e}.json", compute)
            rows |= stamp(done, None, views=v, augment=aug)
    if "fewshot" in parts:
        for k in shots:
            rows |= fewshot_rows(task_dir, out, spec, budget, k, few_views, live, memo)
    return rows


def augment_tags(augment: str) -> tuple[str, str]:
    """(file-name tag, row-name tag) of an augmentation's stores, runs and rows: none for
    :data:`AUGMENT` (the names of run ``accuracy-20261206-190217``, so its memoized results
    stay valid), ``-rrc0.5-1`` / `` rrc:0.5-1`` for another."""
    if augment == AUGMENT:
        return "", ""
    return "-" + augment.replace(":", "").replace(",", "-"), f" {augment}"


def stamp(
    rows: dict[str, dict[str, Any]], tag: str | None, **meta: Any
) -> dict[str, dict[str, Any]]:
    """``rows`` with what each is: its method ``family`` (the name less ``tag``; None: the
    live row, :data:`LIVE_AUGMENTED`) and ``meta`` (views, augment, shots). Stamped after
    the memo, so results saved by an earlier version read the same."""
    family = lambda name: name[: -len(tag)] if tag else LIVE_AUGMENTED
    return {name: r | {"family": family(name), **meta} for name, r in rows.items()}


def view_rows(task_dir: Path, out: Path, spec: dict[str, Any], budget: Budget, views: int,
              augment: str, runs: Path, tag: str, shot: tuple[int, np.ndarray] | None = None,
              ) -> dict[str, dict[str, Any]]:  # fmt: skip
    """:func:`cached_rows` on the task's store of ``views`` views of ``augment``, extracted
    here (so a memo that has the rows, or ``--tabulate``, extracts nothing); ``shot``
    (k, positions in train800): trained on those, a split ``train<k>shot`` of the store."""
    from losa_cache.store import open_store
    from losa_cache.store.splits import add_split

    store, cost = view_store(task_dir, out, spec, views, augment)
    splits = SPLITS
    if shot is not None:
        k, pick = shot
        split = f"train{k}shot"
        add_split(store, split, open_store(str(store)).split_rows("train800")[pick])
        splits, cost = {**SPLITS, "train": split, "final": split}, cost | {"shots": k}
    return cached_rows(store, runs, budget, cost, splits, tag)


def cached_rows(
    store: Path, runs: Path, budget: Budget, cost: dict[str, Any], splits: dict[str, str], tag: str
) -> dict[str, dict[str, Any]]:
    """:data:`VIEW_METHODS` on one store (the harness protocol over ``splits``), each row
    named ``<method><tag>`` and carrying the store's cost."""
    done = run_cached(store, runs, budget, budget.epochs, cost["extract_s"], VIEW_METHODS,
                      splits=splits)  # fmt: skip
    return {f"{m}{tag}": r | cost for m, r in done.items()}


def view_store(
    task_dir: Path, out: Path, spec: dict[str, Any], views: int, augment: str = AUGMENT
) -> tuple[Path, dict[str, Any]]:
    """The task's store with ``views`` views of ``augment`` (0: the harness's own store),
    extracted once; (path, its cost: extraction seconds, bytes on disk)."""
    from losa_cache.extract import ExtractConfig, extract
    from losa_cache.store import open_store

    task = task_dir.name
    if not views:
        store = out / "stores" / f"{task}.zarr"
        store.parent.mkdir(parents=True, exist_ok=True)
        seconds = extract_task(task_dir, store, spec)
        return store, {"views": 0, "extract_s": seconds, "store_bytes": disk_bytes(store)}
    store = out / "stores" / f"{task}-views{views}{augment_tags(augment)[0]}.zarr"
    record = store.parent / f"{store.stem}.extract.json"
    if not record.is_file():
        t0 = time.perf_counter()
        extract(ExtractConfig(model=spec["model"], checkpoint=spec.get("checkpoint"),
                              random_init=spec.get("random_init", False),
                              dataset=f"vtab1k:{task_dir}", store=str(store), layers="all",
                              taps=VIEW_TAPS, views=views, augment=augment, workers=0),
                progress=False)  # fmt: skip
        record.write_text(json.dumps({"seconds": time.perf_counter() - t0}))
    open_store(str(store)).require_complete()
    seconds = json.loads(record.read_text())["seconds"]
    return store, {"views": views, "extract_s": seconds, "store_bytes": disk_bytes(store)}


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def live_augmented(
    task_dir: Path, spec: dict[str, Any], budget: Budget, views: int, tag: str,
    augment: str = AUGMENT,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Full fine-tuning live, drawing from the same ``views`` views of ``augment`` per
    image."""
    rows = run_live(task_dir, spec, budget, [LIVE_AUGMENTED], views=str(views),
                    augment=augment)  # fmt: skip
    name = f"{LIVE_AUGMENTED}{tag} aug V={views}{augment_tags(augment)[1]}"
    (row,) = rows.values()
    return {name: row | {"views": views}}


# ------------------------------------------------------------------------------ few-shot


def pick_shots(labels: Sequence[int], k: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of ``k`` items per class (all of a class with fewer), seeded."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, k])
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def shot_pick(task_dir: Path, k: int) -> np.ndarray:
    """Positions in ``task_dir``'s train800 of its k-shot images (:func:`pick_shots`)."""
    train = [ln for ln in (task_dir / "train800.txt").read_text().splitlines() if ln.strip()]
    return pick_shots([int(ln.rsplit(maxsplit=1)[1]) for ln in train], k)


def fewshot_task(task_dir: Path, folder: Path, k: int) -> tuple[Path, np.ndarray]:
    """A VTAB-layout folder whose train800 (and final split) is ``k`` images per class of
    ``task_dir``'s train800 (absolute paths; val200 and test unchanged); and the picked
    positions in train800."""
    lines = {f: (task_dir / f"{f}.txt").read_text().splitlines() for f in LIST_FILES}
    train = [ln for ln in lines["train800"] if ln.strip()]
    pick = shot_pick(task_dir, k)
    absolute = lambda ln: f"{task_dir.resolve() / ln.rsplit(maxsplit=1)[0]} {ln.rsplit()[-1]}"
    shot = [absolute(train[i]) for i in pick]
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in (("train800", shot), ("train800val200", shot),
                       ("val200", [absolute(ln) for ln in lines["val200"] if ln.strip()]),
                       ("test", [absolute(ln) for ln in lines["test"] if ln.strip()])):  # fmt: skip
        (folder / f"{name}.txt").write_text("\n".join(body) + "\n")
    return folder, pick


def fewshot_rows(
    task_dir: Path,
    out: Path,
    spec: dict[str, Any],
    budget: Budget,
    k: int,
    few_views: Sequence[int],
    live: bool,
    memo: Memo,
) -> dict[str, dict[str, Any]]:
    """k-shot rows: the cached methods from each views store (a k-shot split added to
    it), and full fine-tuning live with the augmentation on a derived folder."""
    task, e = task_dir.name, f"e{budget.epochs:g}"
    pick = shot_pick(task_dir, k)
    rows: dict[str, dict[str, Any]] = {}
    for v in few_views:
        runs = out / "runs" / task / f"{k}shot-views{v}"
        tag = f" {k}-shot" + (f" V={v}" if v else "")
        compute = partial(view_rows, task_dir, out, spec, budget, v, AUGMENT, runs, tag, (k, pick))
        done = memo(out / "results" / task / f"{k}shot-views{v}-{e}.json", compute)
        rows |= stamp(done, tag, views=v, augment=AUGMENT if v else None, shots=k)
    if live and max(few_views):
        v = max(few_views)
        compute = partial(live_shots, task_dir, out / "fewshot" / f"{task}-{k}shot", k, spec,
                          budget, v)  # fmt: skip
        done = memo(out / "results" / task / f"{k}shot-full-aug-{e}.json", compute)
        rows |= stamp(done, None, views=v, augment=AUGMENT, shots=k)
    return rows


def live_shots(task_dir: Path, folder: Path, k: int, spec: dict[str, Any], budget: Budget,
               views: int) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The k-shot live row: full fine-tuning on the derived k-shot folder (written here)."""
    fewshot_task(task_dir, folder, k)
    return live_augmented(folder, spec, budget, views, f" {k}-shot")
