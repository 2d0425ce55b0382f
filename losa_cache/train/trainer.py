"""Train a side network (LoSA or the linear probe) from a feature store, or live.

    result = train(TrainConfig(store="stores/demo.zarr", method="losa", rank=16,
                               steps=500, out="runs/losa"))

Reads top to bottom: set-up (source, splits, side network, optimizer, readers, resume),
the loop (step, flush metrics, validate, checkpoint), then the end (test, metrics.json,
adapter). Everything a step depends on is in the checkpoint, so ``resume`` continues
bit for bit on CPU.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from losa_cache.outdir import locked_outdir
from losa_cache.side import create_side, head_params, learned_params
from losa_cache.store import StoreError
from losa_cache.train import checkpoint as ckpt
from losa_cache.train.config import TrainConfig
from losa_cache.train.optim import build_optimizer, build_scheduler, lr_factor
from losa_cache.train.sources import build_side_config, open_source, pick_device, resolve_splits

__all__ = ["NonFiniteLossError", "evaluate", "train"]

#: Settings that may change on --resume (the continuation is then no longer exact).
TUNABLE_ON_RESUME = frozenset({"lr", "steps", "epochs", "warmup_steps", "weight_decay",
                               "label_smoothing", "momentum"})


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@torch.no_grad()
def evaluate(model: torch.nn.Module, reader: Any, amp: bool) -> dict[str, float]:
    """Accuracy and mean cross-entropy over one sequential pass of ``reader``."""
    was_training = model.training
    model.eval()
    loss = correct = n = 0.0
    for feats, labels, _rows in reader.eval_batches():
        with torch.autocast(labels.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(feats).float()
        loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
        n += len(labels)
    model.train(was_training)
    return {"acc": correct / max(1, n), "loss": loss / max(1, n), "n": int(n)}


def train(cfg: TrainConfig, progress: bool = True,
          storage_options: dict | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns the final metrics (also in ``out/metrics.json``).

    ``storage_options`` (fsspec, for store URLs) stay out of every saved file: they may
    hold credentials.
    """
    with locked_outdir(cfg.out, "train"):  # one run per --out at a time
        run = _Run(cfg, progress, storage_options)
        try:
            return run.execute()
        finally:
            run.close()


class _Run:
    """One training process: set-up, loop, end."""

    # ------------------------------------------------------------------ set-up

    def __init__(self, cfg: TrainConfig, progress: bool, storage_options: dict | None) -> None:
        self.cfg, self.progress, self.notes = cfg, progress, []
        self.storage_options = storage_options
        try:
            self._setup()
        except BaseException:
            self.close()  # stop reader threads started before the error
            raise

    def _setup(self) -> None:
        cfg = self.cfg
        self.device = pick_device(cfg.device)
        self.memory_baseline = ckpt.reset_peak_memory(self.device)
        self.out = Path(cfg.out)
        state = self._load_resume_state()
        rows, labels = self._open_data()
        self._build_model()
        self.out.mkdir(parents=True, exist_ok=True)
        self.train_reader = self.source.reader(rows, labels, self.model.required_layers,
                                               self.batch, cfg.seed, self.device, cfg.cache,
                                               cfg.shuffle_buffer)
        self.val_reader = self._eval_reader("val", cfg.cache)
        self.step, self.evals, self.best, self.lr = 0, [], None, float(self.plan["lr"])
        self.train_images, self.train_seconds = 0, 0.0
        self.steady: list | None = None  # [images, seconds] after this process's first interval
        if state is not None:
            self._restore(state)
        self.log = ckpt.MetricsLog(self.out, self.step if state is not None else None)
        for reader, what in ((self.train_reader, "train"), (self.val_reader, "val")):
            if reader is not None:
                self._say(f"{what} cache: {reader.cache_choice.reason}")

    def _open_data(self) -> tuple[Any, Any]:
        """Source, splits, side config, the training rows and the run's plan."""
        self.source = open_source(self.cfg, self.storage_options)
        info = self.source.info
        self.splits = resolve_splits(self.cfg, info.splits)
        self.side_config = build_side_config(self.cfg, info)
        rows, labels = self.source.rows(self.splits["train"])
        if len(rows) == 0:
            raise StoreError(f"split {self.splits['train']!r} has no labelled, valid rows "
                             f"for task {info.task!r}")
        self.plan = self.cfg.plan(len(rows))
        self.batch = int(self.plan["batch_size"])
        if self.batch < self.cfg.batch_size:
            self._say(f"batch size {self.cfg.batch_size} capped at the {len(rows)} training rows")
        return rows, labels

    def _build_model(self) -> None:
        cfg, plan = self.cfg, self.plan
        self.amp = cfg.amp == "bf16" or (cfg.amp == "auto" and self.device.type == "cuda")
        torch.manual_seed(cfg.seed)
        self.model = create_side(self.side_config).to(self.device)
        self.opt = build_optimizer(self.model, cfg.optimizer, float(plan["lr"]),
                                   float(plan["weight_decay"]), cfg.momentum)
        self.sched = build_scheduler(self.opt, int(plan["warmup_steps"]), int(plan["steps"]))

    def _eval_reader(self, role: str, cache: str) -> Any:
        split = self.splits[role]
        if split is None:
            self._say(f"no {role} split: {role} metrics are skipped")
            return None
        rows, labels = self.source.rows(split)
        if len(rows) == 0:
            self._say(f"{role} split {split!r} has no labelled rows: skipped")
            return None
        return self.source.reader(rows, labels, self.model.required_layers, self.batch,
                                  self.cfg.seed, self.device, cache, None)

    def _load_resume_state(self) -> dict[str, Any] | None:
        if not self.cfg.resume:
            if (self.out / ckpt.CHECKPOINT).exists():
                raise ValueError(f"{self.out} already holds a run ({ckpt.CHECKPOINT}); pass "
                                 "--resume to continue it, or choose another --out")
            return None
        state = ckpt.load_checkpoint(self.out)
        saved = TrainConfig.from_dict(state["train_config"]).maths()
        mine = self.cfg.maths()
        fixed = sorted(k for k in mine if mine[k] != saved[k] and k not in TUNABLE_ON_RESUME)
        if fixed:
            raise ValueError(f"--resume: the run in {self.out} was started with different "
                             f"{fixed} ({[saved[k] for k in fixed]}); use the same values")
        tuned = sorted(k for k in mine if mine[k] != saved[k])
        if tuned:
            self._say(f"resuming with changed {tuned}: not an exact continuation")
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        """Continue exactly where the checkpoint left off."""
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.train_reader.check_state(state["reader"])
        self.step, self.evals, self.best = state["step"], state["evals"], state["best"]
        self.train_images, self.train_seconds = state["train_images"], state["train_seconds"]
        # settings tunable on resume win over the checkpoint's (no-ops when unchanged)
        lr, wd = float(self.plan["lr"]), float(self.plan["weight_decay"])
        self.sched.base_lrs = [lr] * len(self.opt.param_groups)
        factor = lr_factor(self.step, int(self.plan["warmup_steps"]), int(self.plan["steps"]))
        for i, group in enumerate(self.opt.param_groups):
            group.update(initial_lr=lr, lr=lr * factor)
            group["weight_decay"] = wd if i == 0 else 0.0
            if "momentum" in group:
                group["momentum"] = self.cfg.momentum
        ckpt.set_rng_state(state["rng"])
        self._say(f"resumed from step {self.step}")

    # ------------------------------------------------------------------ loop

    def execute(self) -> dict[str, Any]:
        steps, stop_at = int(self.plan["steps"]), self.cfg.stop_at or 0
        bar = tqdm(total=steps, initial=self.step, unit="step", desc="train",
                   disable=not self.progress, dynamic_ncols=True)
        self._reset_interval()
        batches = self.train_reader.batches(offset=self.step * self.batch)
        try:
            while self.step < steps:
                feats, labels, _rows = next(batches)
                self._train_step(feats, labels)
                self.step += 1
                bar.update(1)
                if self._due("log_every") or self._due("eval_every") or self._due(
                        "checkpoint_every") or self.step in (steps, stop_at):
                    bar.set_postfix(self._flush(), refresh=False)
                if self._due("eval_every") or self.step == steps:
                    self._validate()
                if self._due("checkpoint_every") or self.step in (steps, stop_at):
                    self._checkpoint()
                if self.step == stop_at:
                    self._say(f"stopped at step {self.step} (--stop-at); --resume continues")
                    break
        finally:
            batches.close()
            bar.close()
        return self._finish()

    def _due(self, key: str) -> bool:
        return self.step % int(self.plan[key]) == 0

    def _train_step(self, feats: dict[int, torch.Tensor], labels: torch.Tensor) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.model(feats)  # (B, C)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.cfg.label_smoothing)
        if self.device.type == "cpu" and not math.isfinite(value := float(loss.detach())):
            self._nonfinite(value)  # on GPU this is checked at each flush (no sync per step)
        self.lr = self.opt.param_groups[0]["lr"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        n = len(labels)
        self.acc_loss += loss.detach() * n
        self.acc_correct += (logits.detach().argmax(1) == labels).sum()
        self.acc_n += n

    def _reset_interval(self) -> None:
        self.acc_loss = torch.zeros((), device=self.device)
        self.acc_correct = torch.zeros((), device=self.device, dtype=torch.long)
        self.acc_n, self.t0 = 0, time.perf_counter()

    def _flush(self) -> dict[str, str]:
        """Check the loss, log the interval's train metrics, return the bar's postfix."""
        loss_sum = float(self.acc_loss)  # syncs the GPU
        if not math.isfinite(loss_sum):
            self._nonfinite(loss_sum)
        seconds = time.perf_counter() - self.t0
        n = max(1, self.acc_n)
        rec = {"kind": "train", "step": self.step, "loss": loss_sum / n,
               "acc": int(self.acc_correct) / n, "lr": self.lr, "img_s": self.acc_n / seconds,
               "epoch": self.step * self.batch / len(self.train_reader)}
        self.log.write(rec)
        if self.steady is None:  # the first interval holds start-up (workers, caches): skip it
            self.steady = [0, 0.0]
        else:
            self.steady = [self.steady[0] + self.acc_n, self.steady[1] + seconds]
        self.train_images += self.acc_n
        self.train_seconds += seconds
        self._reset_interval()
        return {"loss": f"{rec['loss']:.4f}", "acc": f"{rec['acc']:.3f}",
                "img/s": f"{rec['img_s']:,.0f}"}

    def _nonfinite(self, value: float) -> None:
        last = self._last_checkpoint_step()
        kept = (f"the last good checkpoint (step {last}) is kept in {self.out / ckpt.CHECKPOINT}"
                f"; lower --lr and rerun with --resume to continue from it" if last is not None
                else "no checkpoint had been written yet; lower --lr and start again")
        self.log.write({"kind": "error", "step": self.step, "error": f"loss {value}"})
        raise NonFiniteLossError(f"loss became {value} by step {self.step} (lr {self.lr:.3g}): "
                                 f"training stopped; {kept}")

    def _last_checkpoint_step(self) -> int | None:
        path = self.out / ckpt.CHECKPOINT
        return int(ckpt.load_checkpoint(self.out)["step"]) if path.exists() else None

    def _validate(self) -> None:
        if self.val_reader is None:
            return
        res = evaluate(self.model, self.val_reader, self.amp)
        rec = {"kind": "eval", "split": self.splits["val"], "step": self.step,
               "acc": res["acc"], "loss": res["loss"]}
        self.log.write(rec)
        self.evals.append(rec)
        if self.best is None or res["acc"] > self.best["acc"]:
            self.best = {"acc": res["acc"], "step": self.step}
        self._say(f"step {self.step}: {self.splits['val']} acc {res['acc']:.4f} "
                  f"loss {res['loss']:.4f}", note=False)
        self.t0 = time.perf_counter()

    def _checkpoint(self) -> None:
        ckpt.save_checkpoint(self.out, {
            "step": self.step, "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "rng": ckpt.rng_state(), "reader": self.train_reader.state_dict(),
            "train_config": self.cfg.to_dict(), "side_config": self.side_config.to_dict(),
            "evals": self.evals, "best": self.best, "train_images": self.train_images,
            "train_seconds": self.train_seconds,
        })
        self.t0 = time.perf_counter()

    # ------------------------------------------------------------------ end

    def _finish(self) -> dict[str, Any]:
        complete = self.step >= int(self.plan["steps"])
        test = self._test() if complete else None
        metrics = self._metrics(complete, test)
        if complete:
            metrics["adapter"] = str(self._save_adapter(metrics))
        (self.out / ckpt.METRICS).write_text(_dumps(metrics))
        return metrics

    def _test(self) -> dict[str, Any] | None:
        reader = self._eval_reader("test", "none")
        if reader is None:
            return None
        try:
            res = evaluate(self.model, reader, self.amp)
            res["bytes_read"] = getattr(reader, "bytes_read", 0)
        finally:
            reader.close()
        self.log.write({"kind": "test", "split": self.splits["test"], "step": self.step,
                        "acc": res["acc"], "loss": res["loss"]})
        self._say(f"{self.splits['test']} acc {res['acc']:.4f}", note=False)
        return res

    def _metrics(self, complete: bool, test: dict[str, Any] | None) -> dict[str, Any]:
        info, readers = self.source.info, [self.train_reader, self.val_reader]
        bytes_read = sum(getattr(r, "bytes_read", 0) for r in readers if r is not None)
        return {
            "complete": complete, "step": self.step, "plan": self.plan,
            "method": self.cfg.method, "rank": self.cfg.rank,
            "layers": list(self.model.required_layers), "task": info.task, "splits": self.splits,
            "evals": self.evals, "best_val_acc": self.best and self.best["acc"],
            "best_val_step": self.best and self.best["step"],
            "final_val_acc": self.evals[-1]["acc"] if self.evals else None,
            "test_acc": test and test["acc"], "test_loss": test and test["loss"],
            "learned_params": learned_params(self.side_config),
            "head_params": head_params(self.side_config),
            "train_rows": len(self.train_reader), "train_images": self.train_images,
            "train_seconds": round(self.train_seconds, 3),
            "images_per_s": self.train_images / self.train_seconds if self.train_seconds else 0,
            "images_per_s_steady": self.steady[0] / self.steady[1]
            if self.steady and self.steady[1] else None,
            **ckpt.peak_memory(self.device, self.memory_baseline),
            "bytes_read": bytes_read + (test or {}).get("bytes_read", 0),
            "train_reader": self.train_reader.stats(), "device": str(self.device),
            "amp": "bf16" if self.amp else "fp32", "live": self.cfg.live, "notes": self.notes,
            "out": str(self.out),
        }

    def _save_adapter(self, metrics: dict[str, Any]) -> Path:
        from losa_cache.adapter import save_adapter

        info = self.source.info
        meta = {"fingerprint": info.fingerprint, "classes": info.classes, "task": info.task,
                "train_config": self.cfg.to_dict(), "metrics": _jsonable(metrics)}
        return save_adapter(self.out, self.model.cpu(), self.side_config, meta)

    def _say(self, msg: str, note: bool = True) -> None:
        """Tell the user (above the progress bar); notes also go into metrics.json."""
        if note:
            self.notes.append(msg)
        if self.progress:
            tqdm.write(msg)

    def close(self) -> None:
        for name in ("train_reader", "val_reader"):
            reader = getattr(self, name, None)
            if reader is not None:
                reader.close()
        if hasattr(self, "source"):
            self.source.close()


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
