"""The engine: runs fed by shared feeds, tick by tick, each with its own cadence.

    inputs = Inputs(source, device, cache_choice, rows, layers, workers)
    Engine(runs, inputs).train()      # every run to its end (or a stop)
    evaluate([EvalJob(...)], inputs)  # the one evaluation: train, sweep and `eval`

A *tick* takes one piece from every feed that still has runs to feed and hands it to
their consumers; every batch a consumer completes steps its runs (a loop, or vmap for
same-shape runs, :mod:`losa_cache.train.batching`). After a run's step its own cadence
applies: log every ``log_every``, validate every ``eval_every`` (runs due at the same
batch share one read of the val rows), checkpoint every ``checkpoint_every``, stop at
``stop_at``, test and save at the end. A run whose loss diverges stops alone. Ctrl-C
checkpoints every run at the end of the tick (twice: at once).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from losa_cache.progress import eval_line, note, pct, progress_bar
from losa_cache.train.batching import ShapeGroup
from losa_cache.train.cache import CacheChoice
from losa_cache.train.feed import CacheFeed, Consumer, FeatureCache, Feed, keep_mask, to_device
from losa_cache.train.keys import Key, sort_keys
from losa_cache.train.order import RowOrder
from losa_cache.train.reader import DEFAULT_MAX_MEMORY
from losa_cache.train.run import Run
from losa_cache.train.sources import DataSource

__all__ = ["Engine", "EvalJob", "Inputs", "Score", "evaluate", "evaluate_runs"]

EVAL_WINDOW = 4096  # rows per piece of a sequential evaluation read


class Inputs:
    """What a set of runs reads: one source and, with ``--cache ram|gpu``, the union of
    their train and val rows of the union of their inputs (blocks and taps), read once."""

    def __init__(
        self,
        source: DataSource,
        device: torch.device,
        choice: CacheChoice,
        rows: np.ndarray,
        layers: Sequence[Key],
        workers: int,
        progress: bool = False,
        max_memory: int | None = None,
    ) -> None:
        """``max_memory``: bytes the store reader may hold (see StoreReader)."""
        self.source, self.device, self.choice, self.workers = source, device, choice, workers
        self.max_memory = max_memory
        self.memory: dict[str, int] | None = None  # the training reader's, once one ran
        self.held = 0  # bytes the open training readers hold (evaluation reads beside them)
        self.cache: FeatureCache | None = None
        self.bytes_read = 0
        if choice.mode != "none":
            where = device if choice.mode == "gpu" else torch.device("cpu")
            window = self.eval_window(rows, layers)
            reader = source.feed(
                RowOrder(rows, window, 0),
                rows,
                layers,
                window,
                torch.device("cpu"),
                workers,
                max_memory,
            )
            try:
                self.cache = FeatureCache(reader, rows, layers, where, progress)
            finally:
                reader.close()
            self.bytes_read = self.cache.bytes_read

    def feed(
        self, order: RowOrder, rows: np.ndarray, layers: Sequence[Key], piece_rows: int
    ) -> Feed:
        # a cache holds the clean rows: a training order drawing views streams the store
        if self.cache is not None and order.views is None and self.cache.holds(rows, layers):
            keep = None if np.array_equal(rows, order.rows) else keep_mask(rows)
            return CacheFeed(self.cache, order, keep, layers)
        return self.source.feed(
            order, rows, layers, piece_rows, self.device, self.workers, self.max_memory
        )

    def eval_window(self, rows: np.ndarray, layers: Sequence[Key]) -> int:
        """Rows per window of a sequential read (evaluation, filling a cache): any size
        gives the same batches, so it is sized to fit the reader's memory (3 windows)
        beside what the training reader, alive during evaluation, already holds."""
        row_bytes = self.source.info.feed_bytes(layers)
        budget = self.max_memory or DEFAULT_MAX_MEMORY
        budget -= self.held
        return int(max(1, min(EVAL_WINDOW, len(rows), budget // max(1, 4 * row_bytes))))

    def close_feed(self, feed: Feed) -> None:
        self.bytes_read += int(getattr(feed, "bytes_read", 0))
        feed.close()


@dataclass(frozen=True)
class EvalJob:
    """One model scored on some labelled rows, in batches of ``batch``: a run's val/test
    evaluation or ``losa-cache eval`` of its adapter (the same numbers for the same model,
    rows, batch and amp). Jobs of one task and batch size share batches."""

    model: torch.nn.Module
    layers: tuple  # what the model reads from the feed (Run.layers)
    rows: np.ndarray  # (n,) sorted store rows, every one labelled
    labels: np.ndarray  # (N,) int64: the label of every store row
    task: str
    batch: int
    amp: bool
    num_classes: int


class Score:
    """A job's sums over the rows it scored: accuracy, loss, per-class accuracy."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.loss_sum = 0.0  # per-batch sums added in float64, batch by batch
        self.count = torch.zeros(num_classes, dtype=torch.long, device=device)  # per class
        self.correct = torch.zeros_like(self.count)

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        self.count += torch.bincount(labels, minlength=len(self.count))
        self.correct += torch.bincount(
            labels[logits.argmax(1) == labels], minlength=len(self.count)
        )

    @property
    def n(self) -> int:
        return int(self.count.sum())

    @property
    def accuracy(self) -> float:
        return int(self.correct.sum()) / max(1, self.n)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.n)

    def per_class(self, classes: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``{name: {count, accuracy}}``, accuracy None for a class with no rows."""
        return {
            name: {"count": n, "accuracy": c / n if n else None}
            for name, n, c in zip(classes, self.count.tolist(), self.correct.tolist(), strict=True)
        }

    def mean_class_accuracy(self) -> float | None:
        """The mean over the classes present (balanced accuracy)."""
        acc = [c / n for n, c in zip(self.count.tolist(), self.correct.tolist(), strict=True) if n]
        return sum(acc) / len(acc) if acc else None


def evaluate_runs(runs: Sequence[Run], role: str, inputs: Inputs) -> dict[int, dict[str, Any]]:
    """Accuracy and mean cross-entropy of every run with ``role`` rows, in batches of its
    training size (see :func:`evaluate`), keyed by ``id(run)``."""
    runs = [r for r in runs if len(r.eval_rows(role))]
    scores = evaluate(
        [
            EvalJob(
                r.model,
                tuple(r.layers),
                r.eval_rows(role),
                r.task.labels,
                r.task.task,
                r.batch,
                r.amp,
                len(r.task.classes),
            )
            for r in runs
        ],
        inputs,
    )
    return {
        id(r): {"acc": s.accuracy, "loss": s.loss, "n": s.n}
        for r, s in zip(runs, scores, strict=True)
    }


@torch.no_grad()
def evaluate(jobs: Sequence[EvalJob], inputs: Inputs) -> list[Score]:
    """The one evaluation routine (``train``, ``sweep`` and ``eval``): one sequential read
    of the union of the jobs' rows; each job sees its own rows in batches of its size, so
    a run scores the same alone, in a sweep and as a saved adapter."""
    if not jobs:
        return []
    union = np.unique(np.concatenate([j.rows for j in jobs]))
    layers = sort_keys(i for j in jobs for i in j.layers)
    groups: dict[tuple, tuple[Consumer, list[int]]] = {}
    for k, j in enumerate(jobs):
        keep = None if len(j.rows) == len(union) else keep_mask(j.rows)
        groups.setdefault((j.task, j.batch), (Consumer(j.batch, keep), []))[1].append(k)
    scores = [Score(j.num_classes, inputs.device) for j in jobs]
    feed = inputs.feed(
        RowOrder(union, inputs.eval_window(union, layers), 0), union, layers, jobs[0].batch
    )
    was = [j.model.training for j in jobs]
    for j in jobs:
        j.model.eval()
    try:
        for piece in [*_finite(feed), None]:
            for consumer, members in groups.values():
                done = consumer.flush() if piece is None else consumer.feed(piece)
                for feats, rows in done:
                    feats = to_device(feats, inputs.device)  # int8: dequantized there
                    for k in members:
                        _score(jobs[k], feats, rows, scores[k])
    finally:
        inputs.close_feed(feed)
        for j, training in zip(jobs, was, strict=True):
            j.model.train(training)
    return scores


def _score(job: EvalJob, feats: dict[Key, torch.Tensor], rows: np.ndarray, score: Score) -> None:
    labels = torch.from_numpy(job.labels[rows]).to(score.count.device, non_blocking=True)
    with torch.autocast(labels.device.type, dtype=torch.bfloat16, enabled=job.amp):
        logits = job.model(feats).float()  # (b, C)
    score.add(logits, labels)


def _finite(feed: Feed) -> Iterator[Any]:
    yield from feed.pieces(0, loop=False, shuffle=False)


class _Lane:
    """Runs fed by one consumer: same order, task rows, batch size and position."""

    def __init__(self, runs: list[Run], batching: str) -> None:
        r = runs[0]
        self.runs, self.consumer = runs, Consumer(r.batch, r.keep, r.position)
        shapes: dict[str, list[Run]] = {}
        for run in runs:
            shapes.setdefault(run.side.to_json(), []).append(run)
        self.groups = [ShapeGroup(ms, batching) for ms in shapes.values()]

    @property
    def active(self) -> bool:
        return any(r.active for r in self.runs)


class Engine:
    """Train ``runs`` from ``inputs`` until each is done, diverged, stopped or interrupted."""

    def __init__(
        self,
        runs: Sequence[Run],
        inputs: Inputs,
        progress: bool = False,
        batching: str = "loop",
        label: str = "train",
        on_tick: Callable[[list[Run]], None] | None = None,
    ) -> None:
        self.runs, self.inputs, self.progress = list(runs), inputs, progress
        self.batching, self.label = batching, label
        self.on_tick = on_tick  # after every tick (a cluster worker's progress events)
        self.ticks = 0
        self.bar: Any = None
        self._flushed = False  # a run logged since the bar's postfix was last set
        self.feeds: dict[tuple, tuple[RowOrder, list[_Lane]]] = {}
        lanes: dict[tuple, list[Run]] = {}
        for r in self.runs:
            if r.active:
                key = (r.order.key(), r.task.task, r.batch, r.position)
                lanes.setdefault(key, []).append(r)
        for key, members in lanes.items():
            order = members[0].order
            self.feeds.setdefault(key[0], (order, []))[1].append(_Lane(members, batching))

    # ------------------------------------------------------------------ loop

    def train(self) -> bool:
        """Tick until every run is done (True), or stop early with checkpoints (False)."""
        total = sum(r.steps for r in self.runs)
        bar = self.bar = progress_bar(
            total, self.label, "step", self.progress, sum(r.step for r in self.runs)
        )
        ended = [r for r in self.runs if r.active and r.step >= r.steps]
        if ended:  # resumed from a checkpoint of the last step: only the end is left
            self._after_step(ended)
        streams = {k: self._stream(order, lanes) for k, (order, lanes) in self.feeds.items()}
        try:
            with _sigint_flag() as interrupted:
                while any(r.active for r in self.runs):
                    before = sum(r.step for r in self.runs)
                    for key, (_, lanes) in self.feeds.items():
                        if any(lane.active for lane in lanes):
                            self._feed(lanes, next(streams[key]))
                    self.ticks += 1
                    bar.update(sum(r.step for r in self.runs) - before)
                    if self.on_tick is not None:
                        self.on_tick(self.runs)
                    if self._flushed:
                        bar.set_postfix(self._postfix(), refresh=False)
                        self._flushed = False
                    if interrupted():
                        self._stop_all("interrupted")
                        raise KeyboardInterrupt
        finally:
            for stream in streams.values():
                stream.close()
            bar.close()
        return all(r.status in ("trained", "diverged") for r in self.runs)

    def _stream(self, order: RowOrder, lanes: list[_Lane]) -> Iterator[Any]:
        runs = [r for lane in lanes for r in lane.runs]
        rows = np.unique(np.concatenate([r.train_rows for r in runs]))
        layers = sort_keys(i for r in runs for i in r.layers)
        piece = max(set(r.batch for r in runs), key=[r.batch for r in runs].count)
        feed = self.inputs.feed(order, rows, layers, piece)
        self.inputs.memory = getattr(feed, "memory", self.inputs.memory)  # a reader's budget
        held = int((getattr(feed, "memory", None) or {}).get("bytes_held", 0))
        self.inputs.held += held
        try:
            yield from feed.pieces(min(lane.consumer.position for lane in lanes), True, True)
        finally:
            self.inputs.held -= held
            self.inputs.close_feed(feed)

    def _feed(self, lanes: list[_Lane], piece: Any) -> None:
        for lane in lanes:
            if not lane.active:
                continue
            for feats, rows in lane.consumer.feed(piece):
                feats = to_device(feats, self.inputs.device)
                stepped = [r for r in lane.runs if r.active]
                for group in lane.groups:
                    group.step(feats, rows)
                for r in stepped:
                    r.position = lane.consumer.position
                self._after_step(stepped)
                for r in stepped:  # diverged on this batch: name non-finite inputs
                    r.blame_inputs(feats, rows)
                if not lane.active:
                    break

    # ------------------------------------------------------------------ cadence

    def _after_step(self, runs: list[Run]) -> None:
        """Each run's own cadence after the step it just took."""
        for r in runs:
            end = r.step >= r.steps or r.step == r.cfg.stop_at
            if (
                r.active
                and r.acc_n
                and (r.due("log_every") or r.due("eval_every") or r.due("checkpoint_every") or end)
            ):
                r.flush()
                self._flushed = True
        due = [
            r
            for r in runs
            if r.active
            and (r.due("eval_every") or r.step >= r.steps)
            and not (r.evals and r.evals[-1]["step"] == r.step)
        ]  # once per step
        for r, res in zip(due, self._evaluate(due, "val"), strict=True):
            if res is not None:
                r.record_eval("val", res)
                name = r.name if len(self.runs) > 1 else ""
                note(
                    eval_line(name, r.step, r.steps, res["acc"], res["loss"], r.best), self.progress
                )
        for r in runs:
            if r.active and (
                r.due("checkpoint_every") or r.step >= r.steps or r.step == r.cfg.stop_at
            ):
                r.checkpoint()
        done = [r for r in runs if r.active and r.step >= r.steps]
        for r, res in zip(done, self._evaluate(done, "test"), strict=True):
            if res is not None:
                r.record_eval("test", res)
            r.status = "trained"
        for r in runs:
            if r.active and r.step == r.cfg.stop_at:
                r.status = "stopped"
                r.notes.append(f"stopped at step {r.step} (--stop-at); --resume continues")

    def _postfix(self) -> dict[str, str]:
        """The bar's postfix: one run's loss, lr, last val accuracy and img/s; for several,
        how many still train and the best val accuracy so far."""
        if len(self.runs) == 1:
            r = self.runs[0]
            out = {
                "loss": f"{r.last_loss:.4f}" if r.last_loss is not None else "-",
                "lr": f"{r.lr:.3g}",
                "val": pct(r.evals[-1]["acc"]) if r.evals else "-",
            }
            if r.last_img_s is not None:
                out["img/s"] = f"{r.last_img_s:,.0f}"
            return out
        best = max((r.best["acc"] for r in self.runs if r.best), default=None)
        return {
            "training": f"{sum(r.active for r in self.runs)}/{len(self.runs)} runs",
            "best val": pct(best),
        }

    def _evaluate(self, runs: list[Run], role: str) -> list[dict[str, Any] | None]:
        if not runs:
            return []
        res = evaluate_runs(runs, role, self.inputs)
        return [res.get(id(r)) for r in runs]

    def _stop_all(self, why: str) -> None:
        for r in self.runs:
            if r.active:
                if r.acc_n:
                    r.flush()
                if r.active:
                    r.checkpoint()
                    r.status = "stopped"
                    r.notes.append(f"stopped at step {r.step} ({why}); --resume continues")


@contextlib.contextmanager
def _sigint_flag() -> Iterator[Any]:
    """First Ctrl-C: stop (with checkpoints) at the end of the tick; second: at once."""
    flag = [False]
    if threading.current_thread() is not threading.main_thread():
        yield lambda: flag[0]
        return

    def handler(signum: int, frame: Any) -> None:
        if flag[0]:
            raise KeyboardInterrupt
        flag[0] = True
        note("interrupt: checkpointing after this tick (Ctrl-C again to abort now)")

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: flag[0]
    finally:
        signal.signal(signal.SIGINT, old)
