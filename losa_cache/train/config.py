"""``TrainConfig``: one training run, JSON round-trippable, saved into checkpoints and adapters.

Defaults are the LoSA paper's large-scale recipe (Table 12: SGD momentum 0.9, batch
512, cosine with 500 linear warmup steps, base lr 0.05, r 64), scaled for small data:

* batch size is capped at the training split's size;
* SGD's lr is ``lr * batch / 512`` (linear scaling from the paper's batch);
* warmup is ``min(500, 10% of the steps)``;
* without ``steps``/``epochs`` a run is ``min(20000 steps, 100 epochs)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import losa_cache.baselines  # noqa: F401  (registers the live baselines)
from losa_cache.augment import check_train_views
from losa_cache.checks import BATCH_LIMIT, max_workers
from losa_cache.fields import check_fields, compose, option
from losa_cache.methods import COMMON, get_method, list_methods, option_fields
from losa_cache.side.config import POOLS, VERSION_KEY, library_version
from losa_cache.train.cache import CACHE_MODES

__all__ = ["OPTIMIZERS", "RUNTIME_FIELDS", "TrainConfig"]

OPTIMIZERS = ("sgd", "adamw")
AMP = ("auto", "bf16", "fp32")
COMPILE = ("off", "auto", "on")
PAPER_BATCH, PAPER_STEPS, PAPER_WARMUP = 512, 20_000, 500
DEFAULT_LR = {"sgd": 0.05, "adamw": 1e-3}
DEFAULT_WD = {"sgd": 0.0, "adamw": 0.05}
#: live video clips: data/video.py's CLIP_PROTOCOLS and backbone/vivit.py's INFLATIONS, spelt
#: out so that training from a store never imports the image stack (test_lean_imports.py)
CLIP_PROTOCOLS, INFLATIONS = ("centre", "start"), ("central", "average")
DEFAULT_EPOCHS = 100  # the usual VTAB-1k budget; caps the 20k paper steps on small data

#: Fields that do not change the maths of a run: they may differ on --resume.
RUNTIME_FIELDS = frozenset(
    {
        "resume",
        "stop_at",
        "cache",
        "workers",
        "out",
        "eval_every",
        "log_every",
        "checkpoint_every",
        "device",
        "max_memory",
        "compile",
        "log",
    }
)


_f = option


#: the live-video clip fields (a store run must leave them at their defaults)
LIVE_CLIP_FIELDS = ("frames", "stride", "clip", "inflation")


@dataclass
class TrainConfig:
    """A side-network training run on a feature store (or, with ``live``, on images)."""

    store: str | None = _f(None, "Feature store path or URL (not needed with --live).")
    out: str = _f(
        "", "Output folder: checkpoint, metrics, adapter (default: a new runs/train-<date>-<time>)."
    )
    task: str | None = _f(None, "Labelling of the store to train on (default: the store's).")
    method: str = _f(
        "losa",
        "Side network (the linear probe: linear), or with --live a live "
        "baseline that trains the backbone (`losa-cache plan --method M` "
        "prices any of them).",
        choices=list_methods,
    )
    # every method's own options are added below from its module (losa_cache.methods)
    rank: int = _f(
        64,
        "Low-rank bottleneck r of the LoSA adaptors (Eq. 4; losa, "
        "lowrank_mlp), lora's rank, adaptformer's bottleneck, last's Q/K/V "
        "width.",
        min=1,
        panel="Method",
    )
    layers: str = _f(
        "store",
        "Blocks the side network reads: store (all the store holds) | "
        "all | last:N | evenly:N | 3,6,-1 (0-based).",
        panel="Method",
    )
    pool: str = _f(
        "auto",
        "Head pooling: auto (cls for images with a prefix token) | cls | mean.",
        choices=POOLS,
        panel="Method",
    )
    steps: int | None = _f(None, "Optimizer steps (default: min(20000, 100 epochs)).", min=1)
    epochs: float | None = _f(
        None, "Train for this many passes over the train split instead.", above=0
    )
    batch_size: int = _f(
        PAPER_BATCH, "Batch size (capped at the train split's size).", min=1, max=BATCH_LIMIT
    )
    lr: float | None = _f(
        None,
        "Base lr (default 0.05 for SGD, scaled by batch/512; 1e-3 for AdamW, not scaled).",
        above=0,
    )
    optimizer: str = _f("sgd", "sgd (momentum) | adamw.", choices=OPTIMIZERS, panel="Optimisation")
    momentum: float = _f(0.9, "SGD momentum, in [0, 1).", min=0, below=1, panel="Optimisation")
    weight_decay: float | None = _f(
        None,
        "Weight decay on weight matrices (default: 0 for SGD, 0.05 for AdamW).",
        min=0,
        panel="Optimisation",
    )
    label_smoothing: float = _f(
        0.0,
        "Label smoothing of the cross-entropy, in [0, 1).",
        min=0,
        below=1,
        panel="Optimisation",
    )
    warmup_steps: int | None = _f(
        None, "Linear warmup steps (default: min(500, 10% of steps)).", min=0, panel="Schedule"
    )
    seed: int = _f(0, "Seed of initialisation and batch order.", min=0)
    views: str = _f(
        "all",
        "Augmented views of a store extracted with --views V: all (each "
        "epoch a training row shows one of its clean + V views, drawn from "
        "--seed, the epoch and the row) | clean. Live: N with --augment "
        "(the N views extract --views N --augment stores).",
        panel="Data",
    )
    augment: str | None = _f(
        None,
        "Live: the views' augmentation (extract's --augment, e.g. "
        "rrc:0.08-1,flip), with --views N.",
        panel="Live",
    )
    view_seed: int = _f(0, "Live: seed of the views (extract's --view-seed).", min=0, panel="Live")
    cache: str = _f(
        "auto",
        "Hold needed features in memory: auto (the fastest that fits) | "
        "gpu | ram | none (stream from the store).",
        choices=CACHE_MODES,
        panel="Performance",
    )
    shuffle_buffer: int | None = _f(
        None,
        "Shuffle buffer in rows: the batch order shuffles "
        "windows of this many consecutive rows (default: 4 "
        "batches within 1 GiB of fp16 features).",
        min=1,
        panel="Data",
    )
    workers: int = _f(
        -1,
        "I/O threads of the store reader, or with --live image decoding "
        "processes; -1: auto (4 threads; live: a process per CPU core but "
        "one, at most 8, as extract).",
        min=-1,
        max=max_workers,
        panel="Performance",
    )
    max_memory: int | None = _f(
        None,
        "Host memory the store reader may hold, e.g. 300MB, "
        "1GiB, or a number of MiB (shuffle windows served and "
        "read ahead, and a batch): it bounds "
        "the read-ahead, never the batch order (default: 1024, "
        "or 2 windows where more). On CPU it also has glibc "
        "return large freed buffers to the kernel (lower peak, "
        "more CPU; LOSA_CACHE_MALLOC=on|off).",
        min=1,
        panel="Performance",
        unit="MiB",
    )
    amp: str = _f(
        "auto",
        "Compute precision: auto (bf16 autocast on CUDA and on CPUs "
        "with AVX512-BF16/AMX, else fp32) | bf16 | fp32.",
        choices=AMP,
        panel="Performance",
    )
    compile: str = _f(
        "off",
        "torch.compile the side network for training steps: off | auto "
        "(on CUDA only) | on; eager, with a warning, if compiling "
        "fails. Not measured faster on CPU here, hence off.",
        choices=COMPILE,
        panel="Performance",
    )
    device: str = _f("auto", "auto | cpu | cuda | cuda:N.", panel="Performance")
    train_split: str = _f("auto", "Training split (auto: train or train800).", panel="Data")
    val_split: str = _f(
        "auto", "Validation split (auto: val, val200 or validation; none).", panel="Data"
    )
    test_split: str = _f("auto", "Split scored at the end (auto: test; none).", panel="Data")
    eval_every: int | None = _f(
        None, "Validate every N steps (default: 10 times per run).", min=1, panel="Schedule"
    )
    log_every: int | None = _f(
        None, "Log train metrics every N steps (default: ~20 per run).", min=1, panel="Output"
    )
    # no choices: a saved config must load where its Python-registered logger is not
    log: str = _f(
        "none",
        "Also send every metrics.jsonl row to: none | tensorboard (event "
        "files in the run's folder; needs the tb extra) | a logger registered in "
        "Python (losa_cache.train.loggers.register_logger).",
        panel="Output",
    )
    checkpoint_every: int | None = _f(
        None, "Checkpoint every N steps (default: eval_every).", min=1, panel="Schedule"
    )
    resume: bool = _f(False, "Continue the run whose checkpoint is in --out.")
    stop_at: int | None = _f(
        None, "Stop after this step with a checkpoint (resume later).", min=1, panel="Schedule"
    )
    live: bool = _f(False, "Run the frozen backbone on every batch instead of reading a store.")
    model: str | None = _f(None, "Live: backbone alias or timm name.")
    checkpoint: str | None = _f(None, "Live: backbone weights file.", panel="Live")
    pretrained: bool = _f(False, "Live: timm weights from the local cache.", panel="Live")
    random_init: bool = _f(False, "Live: random backbone weights, on purpose.", panel="Live")
    init_seed: int = _f(0, "Live: seed of --random-init (extract's --seed).", min=0, panel="Live")
    dataset: str | None = _f(None, "Live: data set spec (as for extract).")
    data_root: str | None = _f(None, "Live: root folder of inat data sets.", panel="Live")
    limit: int | None = _f(
        None, "Live: at most N images per split (extract's --limit).", min=1, panel="Live"
    )
    frames: int | None = _f(
        None,
        "Live video: frames per clip (default: the model's; extract's --frames).",
        min=1,
        panel="Live video",
    )
    stride: int = _f(
        2, "Live video: take every N-th frame (extract's --stride).", min=1, panel="Live video"
    )
    clip: str = _f(
        "centre",
        "Live video: clip placement (extract's --clip).",
        choices=CLIP_PROTOCOLS,
        panel="Live video",
    )
    inflation: str = _f(
        "central",
        "Live video: tubelet init from the 2D patch kernel (extract's --inflation).",
        choices=INFLATIONS,
        panel="Live video",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give --steps or --epochs, not both")
        if self.live and not (self.model and self.dataset):
            raise ValueError("--live needs --model and --dataset (the backbone runs on images)")
        method = get_method(self.method)
        if method.live and not self.live:
            raise ValueError(
                f"--method {self.method} trains the backbone on images: add "
                "--live (with --model and --dataset)"
            )
        if method.options is not None:  # its own checks (lora's targets ...)
            method.options(
                **{
                    f.name: getattr(self, f.name)
                    for f in fields(method.options)
                    if f.name not in COMMON
                }
            )
        if not self.live and not self.store:
            raise ValueError("give --store (a feature store), or --live with --model/--dataset")
        if not self.live:
            self._check_no_clip_options()
        check_train_views(self.views, self.augment, self.live)

    def _check_no_clip_options(self) -> None:
        """A store's clips were fixed at extraction: live-only clip flags would be ignored."""
        given = [
            f.name
            for f in fields(self)
            if f.name in LIVE_CLIP_FIELDS and getattr(self, f.name) != f.default
        ]
        if given:
            flags = ", ".join(f"--{n}" for n in given)
            raise ValueError(
                f"{flags}: clip sampling for --live video training only; a "
                "store's clips were fixed when it was extracted (drop the flag, "
                "or add --live with --model/--dataset)"
            )

    # ------------------------------------------------------------------ derived

    def base_lr(self, batch_size: int) -> float:
        """The peak lr: SGD scales linearly from the paper's batch of 512."""
        lr = self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]
        return lr * batch_size / PAPER_BATCH if self.optimizer == "sgd" else lr

    def resolved_weight_decay(self) -> float:
        return self.weight_decay if self.weight_decay is not None else DEFAULT_WD[self.optimizer]

    def plan(self, train_rows: int) -> dict[str, int | float]:
        """Batch, steps, warmup and intervals for a train split of ``train_rows`` rows."""
        batch = min(self.batch_size, train_rows)
        per_epoch = train_rows / batch
        if self.steps is not None:
            steps = self.steps
        elif self.epochs is not None:
            steps = max(1, math.ceil(self.epochs * per_epoch))
        else:
            steps = min(PAPER_STEPS, math.ceil(DEFAULT_EPOCHS * per_epoch))
        warmup = (
            self.warmup_steps if self.warmup_steps is not None else min(PAPER_WARMUP, steps // 10)
        )
        eval_every = self.eval_every or max(1, steps // 10)
        return {
            "batch_size": batch,
            "steps": steps,
            "warmup_steps": min(warmup, steps),
            "epochs": round(steps / per_epoch, 3),
            "lr": self.base_lr(batch),
            "weight_decay": self.resolved_weight_decay(),
            "eval_every": eval_every,
            "log_every": self.log_every or max(1, min(50, steps // 20)),
            "checkpoint_every": self.checkpoint_every or eval_every,
        }

    def maths(self) -> dict[str, Any]:
        """Fields that define the run's results (a resumed run must match them)."""
        return {k: v for k, v in asdict(self).items() if k not in RUNTIME_FIELDS}

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        return dict(sorted({**asdict(self), VERSION_KEY: library_version()}.items()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = {k: v for k, v in data.items() if k != VERSION_KEY}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))


#: the run's common fields above + every registered method's own options (built-in and
#: from ``losa_cache.methods`` entry points), each declared once, in its method's module
TrainConfig = compose(TrainConfig, option_fields(), panel="Method")  # type: ignore[misc]
