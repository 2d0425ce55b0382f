"""One group of runs trained in one pass per epoch: sources -> consumers -> shape groups.

A *tick* takes one piece from every source that still has runs to feed and hands it to
their consumers; every batch a consumer completes steps all of its runs (loop or
vmap, per shape group). Checkpoints are written between ticks, so they hold every
run's model/optimizer/schedule and every consumer's stream position, nothing else.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from losa_cache.side import SideConfig
from losa_cache.store import FeatureStore
from losa_cache.sweep.config import RunSpec, SweepConfig
from losa_cache.sweep.data import (
    CacheSource,
    Consumer,
    FeatureCache,
    StreamSource,
    TaskData,
    eval_batches,
    row_order,
)
from losa_cache.sweep.members import Member, ShapeGroup
from losa_cache.train import checkpoint as ckpt
from losa_cache.train.order import default_buffer_rows
from losa_cache.train.reader import StoreReader

__all__ = ["GroupPass", "SweepContext"]

CHECKPOINT_SECONDS = 600.0  # also checkpoint at least this often


@dataclass
class SweepContext:
    """What every group of a sweep shares."""

    cfg: SweepConfig
    store: FeatureStore
    tasks: dict[str, TaskData]
    sides: dict[str, SideConfig]  # run key -> side config
    device: torch.device
    cache: FeatureCache | None
    out: Path
    progress: bool
    interrupted: Any = None  # callable -> bool: Ctrl-C was pressed
    ticks_run: int = 0  # ticks trained by this process (for --stop-after)
    notes: list[str] = field(default_factory=list)

    def should_stop(self) -> bool:
        """Stop at the next tick boundary: Ctrl-C, or --stop-after ticks done."""
        after = self.cfg.stop_after
        return bool(self.interrupted and self.interrupted()) or (
            after is not None and self.ticks_run >= after)


class GroupPass:
    """Train one group's runs, then score them on val and test."""

    def __init__(self, ctx: SweepContext, gid: int, runs: list[RunSpec],
                 state: dict[str, Any] | None) -> None:
        self.ctx, self.gid, self.runs = ctx, gid, runs
        self.members = [Member(r, ctx.sides[r.key], len(ctx.tasks[r.task].rows["train"]),
                               ctx.tasks[r.task].labels, ctx.device) for r in runs]
        self.layers = sorted({i for m in self.members for i in m.model.required_layers})
        self.sources: list[Any] = []
        self.consumers: list[tuple[int, Consumer, list[ShapeGroup]]] = []
        self.order_kind: dict[str, str] = {}
        self.tick, self.bytes_before, self.seconds = 0, 0, 0.0
        self._wire()
        if state is not None:
            self._restore(state)

    # ------------------------------------------------------------------ wiring

    def _wire(self) -> None:
        self._wants: dict[Any, np.ndarray | None] = {}
        self._orders: dict[tuple, int] = {}
        by_consumer: dict[tuple, list[Member]] = {}
        plan = self._cached_plan if self.ctx.cache is not None else self._streamed_plan()
        for m in self.members:
            sid, wants_key, wants, exact = plan(m)
            self.order_kind[m.spec.key] = "exact" if exact else "shared"
            by_consumer.setdefault((sid, wants_key, m.batch, wants is None), []).append(m)
            self._wants[wants_key] = wants
        for (sid, wants_key, batch, _), members in by_consumer.items():
            shapes: dict[str, list[Member]] = {}
            for m in members:
                shapes.setdefault(m.side.to_json(), []).append(m)
            groups = [ShapeGroup(ms, self.ctx.cfg.batching) for ms in shapes.values()]
            self.consumers.append((sid, Consumer(batch, self._wants[wants_key]), groups))

    def _cached_plan(self, m: Member) -> tuple[int, Any, None, bool]:
        """Memory-resident: each distinct batch order gets a source; every run is exact."""
        rows = self.ctx.tasks[m.spec.task].rows["train"]
        order = self._order(rows, m)
        key = (rows.tobytes(), order.buffer_chunks, order.seed)
        if key not in self._orders:
            self._orders[key] = len(self.sources)
            self.sources.append(CacheSource(order, self.ctx.cache, m.batch))
        return self._orders[key], None, None, True

    def _order(self, rows: np.ndarray, m: Member) -> Any:
        return row_order(self.ctx.store, rows, m.model.required_layers, m.batch,
                         m.spec.train.seed, m.spec.train.shuffle_buffer)

    def _streamed_plan(self) -> Any:
        """Streaming: one read order over the union of train rows; runs filter it."""
        store, tasks = self.ctx.store, self.ctx.tasks
        union = np.unique(np.concatenate([tasks[m.spec.task].rows["train"]
                                          for m in self.members]))
        full = [m for m in self.members
                if np.array_equal(tasks[m.spec.task].rows["train"], union)]
        row_bytes = store.layout.row_bytes
        pick = Counter((m.spec.train.seed, m.spec.train.shuffle_buffer or default_buffer_rows(
            m.batch, len(union), row_bytes * len(m.model.required_layers))) for m in full)
        seed, buffer = pick.most_common(1)[0][0] if pick else (self.ctx.cfg.seed, None)
        batch = Counter(m.batch for m in self.members).most_common(1)[0][0]
        reader = StoreReader(store, union, np.zeros(len(union), np.int64), self.layers, batch,
                             seed=seed, device=self.ctx.device, cache="none",
                             buffer_rows=buffer, workers=self.ctx.cfg.workers)
        self.sources.append(StreamSource(reader))
        driver = reader.order

        def plan(m: Member) -> tuple[int, Any, np.ndarray | None, bool]:
            task = tasks[m.spec.task]
            if m in full:
                own = self._order(union, m)
                return 0, None, None, (own.buffer_chunks, own.seed) == (driver.buffer_chunks,
                                                                        driver.seed)
            return 0, m.spec.task, task.wanted("train", store.num_images), False

        return plan

    # ------------------------------------------------------------------ resume

    @property
    def mode(self) -> str:
        return "memory" if self.ctx.cache is not None else "streaming"

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("mode") != self.mode or len(state["consumers"]) != len(self.consumers):
            cache = "--cache ram (or gpu)" if state.get("mode") == "memory" else "--cache none"
            raise ValueError(f"--resume: the checkpoint in {self.ctx.out} was written in "
                             f"{state.get('mode')} mode, this run is in {self.mode} mode; "
                             f"resume with {cache}")
        if state["runs"] != [r.key for r in self.runs]:
            raise ValueError(f"--resume: the checkpoint in {self.ctx.out} holds other runs "
                             f"than group {self.gid + 1}; the sweep folder is inconsistent")
        for m in self.members:
            m.load_state_dict(state["members"][m.spec.key])
        for (_, consumer, _), consumed in zip(self.consumers, state["consumers"], strict=True):
            consumer.consumed = consumer.taken = int(consumed)
        self.tick, self.bytes_before = state["tick"], state["bytes_read"]
        self.seconds = state["seconds"]

    def checkpoint(self) -> None:
        ckpt.save_checkpoint(self.ctx.out, {
            "group": self.gid, "runs": [r.key for r in self.runs], "tick": self.tick,
            "mode": self.mode,
            "members": {m.spec.key: m.state_dict() for m in self.members},
            "consumers": [c.consumed for _, c, _ in self.consumers],
            "bytes_read": self.bytes_read, "seconds": self.seconds})

    @property
    def bytes_read(self) -> int:
        return self.bytes_before + sum(s.bytes_read for s in self.sources)

    # ------------------------------------------------------------------ loop

    def train(self, label: str) -> bool:
        """Run ticks until every run is done (True) or a stop was requested (False)."""
        total = sum(m.steps * m.batch for m in self.members)
        done = sum(min(m.step, m.steps) * m.batch for m in self.members)
        every = self.ctx.cfg.checkpoint_every or max(1, self._ticks_estimate() // 10)
        bar = tqdm(total=total, initial=done, unit="img", unit_scale=True, desc=label,
                   disable=not self.ctx.progress, dynamic_ncols=True)
        streams = {sid: self._pieces(sid) for sid in range(len(self.sources))}
        t_ck = t0 = time.perf_counter()
        try:
            while any(m.active for m in self.members):
                before = sum(m.train_images for m in self.members)
                for sid, stream in streams.items():
                    if self._source_active(sid):
                        self._feed(sid, next(stream))
                for m in self.members:
                    m.check()
                self.tick += 1
                self.ctx.ticks_run += 1
                bar.update(sum(m.train_images for m in self.members) - before)
                now = time.perf_counter()
                self.seconds += now - t0
                t0 = now
                finished = not any(m.active for m in self.members)
                stop = not finished and self.ctx.should_stop()
                if finished or stop or self.tick % every == 0 or now - t_ck > CHECKPOINT_SECONDS:
                    self.checkpoint()
                    t_ck = now
                if stop:
                    return False
        finally:
            for stream in streams.values():
                stream.close()
            bar.close()
        return True

    def _pieces(self, sid: int) -> Iterator[Any]:
        consumers = [c for s, c, gs in self.consumers if s == sid]
        return self.sources[sid].pieces(min(c.consumed for c in consumers))

    def _source_active(self, sid: int) -> bool:
        return any(m.active for s, _, gs in self.consumers if s == sid
                   for g in gs for m in g.members)

    def _feed(self, sid: int, piece: Any) -> None:
        for s, consumer, groups in self.consumers:
            if s != sid or not any(m.active for g in groups for m in g.members):
                continue
            for feats, rows in consumer.feed(piece):
                for group in groups:
                    group.step(feats, rows)

    def _ticks_estimate(self) -> int:
        piece = {sid: getattr(s, "piece_rows", None) or s.reader.batch_size
                 for sid, s in enumerate(self.sources)}
        return max(-(-m.steps * m.batch // piece[sid])
                   for sid, c, gs in self.consumers for g in gs for m in g.members)

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def evaluate(self, role: str) -> dict[str, dict[str, float]]:
        """Accuracy and mean loss of every trained run on ``role`` rows (one read)."""
        ready = [m for m in self.members if m.status == "trained"]
        tasks = [self.ctx.tasks[t] for t in sorted({m.spec.task for m in ready})]
        tasks = [t for t in tasks if t.splits.get(role) and len(t.rows[role])]
        sums = {m.spec.key: [0.0, 0, 0] for m in ready}
        batch = max((m.batch for m in ready), default=1)
        counter = [0]
        for m in ready:
            m.model.eval()
        for task, feats, labels in eval_batches(self.ctx.store, tasks, role, self.layers, batch,
                                                self.ctx.device, self.ctx.cfg.workers,
                                                self.ctx.cache, counter):
            for m in ready:
                if m.spec.task != task:
                    continue
                with torch.autocast(labels.device.type, dtype=torch.bfloat16, enabled=m.amp):
                    logits = m.model(feats).float()
                s = sums[m.spec.key]
                s[0] += float(F.cross_entropy(logits, labels, reduction="sum"))
                s[1] += int((logits.argmax(1) == labels).sum())
                s[2] += len(labels)
        self.bytes_before += counter[0]
        return {k: {"acc": s[1] / s[2], "loss": s[0] / s[2], "n": s[2]}
                for k, s in sums.items() if s[2]}

    def close(self) -> None:
        for s in self.sources:
            s.close()
