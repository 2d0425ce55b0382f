"""Live baselines that backpropagate through the backbone: full fine-tuning, LoRA, BitFit.

The LoSA paper compares against these on VTAB-1k, each with its own small lr search. Here
each runs on a ``vtab1k:`` task folder (e.g. from ``pipelines/vtab_tasks.py``):

* ``full``: every backbone parameter is trained;
* ``lora``: peft LoRA (rank r, alpha = r unless given) on the blocks' qkv, proj, fc1, fc2;
* ``bitfit``: only the backbone's biases (Zaken et al., 2022).

All share the side networks' head (:class:`ClassifierHead`: CLS pool -> LayerNorm -> Linear)
on the last block's output (the final norm is pruned, as for the cached methods), the
backbone's eval transform and no augmentation, AdamW with the trainer's schedule (linear
warmup for min(500, 10%) of the steps, then cosine) and weight decay on matrices only.

Protocol (the PEFT VTAB-1k one): each lr of the grid trains on train800 and is scored on
val200; the best lr (ties: the first in the grid) is retrained from the same initialisation
on train800val200 for the same number of epochs and scored once on test. ``--final train800``
instead reports the val-selected train800 model on test (one run fewer).

Reported per method: val-selected test accuracy (%), learned parameters (head excluded, as in
the paper), training images/s of the final run, training memory at batch 1 (CUDA: peak
allocated above the pre-model baseline; CPU: peak RSS growth, sampled after forward,
backward and step; both include the frozen weights, gradients and optimizer state) and the
wall time of the whole search.

    python benchmarks/baselines.py --tasks /tmp/vtab_small --model demo
    python benchmarks/baselines.py --tasks /tmp/vtab_small/rotation --model vit_micro \\
        --random-init --steps 5 --lrs 1e-3        # smoke run: seconds
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import math
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save

from losa_cache.backbone import Backbone, create_backbone
from losa_cache.data import TorchImages, get_dataset
from losa_cache.side.head import ClassifierHead
from losa_cache.train.optim import build_optimizer, build_scheduler
from losa_cache.train.run import forward_loss

try:  # a dev extra (only the lora baseline needs it); imported here, outside memory windows
    from peft import LoraConfig, inject_adapter_in_model
except ImportError:
    LoraConfig = inject_adapter_in_model = None

METHODS = ("full", "lora", "bitfit")
#: Per-method lr grids (AdamW): full fine-tuning wants smaller steps than the PEFT methods.
DEFAULT_LRS = {"full": (1e-4, 3e-4, 1e-3), "lora": (3e-4, 1e-3, 3e-3),
               "bitfit": (1e-3, 3e-3, 1e-2)}  # fmt: skip
LORA_TARGETS = r".*blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
FINAL_SPLITS = ("train800val200", "train800")
DEFAULT_EPOCHS = 100.0  # the usual VTAB-1k budget
WEIGHT_DECAY = 1e-4
MEMORY_STEPS = 3


# --------------------------------------------------------------------------- model


class LiveClassifier(nn.Module):
    """Backbone (trainable parts decided by the method) -> ClassifierHead."""

    def __init__(self, backbone: nn.Module, head: ClassifierHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.backbone.forward_features(x)  # (B, T, D), final norm pruned
        return self.head(tokens)  # (B, C)


def load_backbone(spec: dict[str, Any], device: str | torch.device = "cpu") -> Backbone:
    """``create_backbone(**spec)`` without the final norm and head (what the side nets see)."""
    backbone = create_backbone(**spec, device=device)
    backbone.prune([backbone.depth - 1])
    return backbone


def build_model(
    method: str,
    backbone: Backbone,
    num_classes: int,
    rank: int = 8,
    alpha: float | None = None,
    seed: int = 0,
) -> LiveClassifier:
    """A fresh copy of the backbone made trainable the method's way, plus a new head."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    net = copy.deepcopy(backbone.model).requires_grad_(False)
    torch.manual_seed(seed)  # same head (and LoRA A) init for every lr of the grid
    pool = "cls" if backbone.prefix_tokens else "mean"
    head = ClassifierHead(backbone.dim, num_classes, pool, backbone.prefix_tokens)
    if method == "full":
        net.requires_grad_(True)
    elif method == "bitfit":
        for name, p in net.named_parameters():
            p.requires_grad_(name.endswith("bias"))
    else:
        net = add_lora(net, rank, alpha)
    device = next(backbone.model.parameters()).device
    return LiveClassifier(net, head).to(device)


def add_lora(net: nn.Module, rank: int, alpha: float | None = None) -> nn.Module:
    """peft LoRA on every block's qkv, proj, fc1, fc2 (B = 0, so the output is unchanged)."""
    if LoraConfig is None:
        raise ImportError("the lora baseline needs peft: pip install 'losa-cache[dev]'")
    cfg = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS,
        bias="none",
    )
    return inject_adapter_in_model(cfg, net)


def learned_params(model: LiveClassifier) -> int:
    """Trainable backbone parameters; the head is not counted (as in the paper)."""
    return sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)


def lora_params(net: nn.Module, rank: int) -> int:
    """Analytic LoRA count: r * (in + out) per adapted linear layer."""
    return sum(
        rank * (m.in_features + m.out_features)
        for name, m in net.named_modules()
        if isinstance(m, nn.Linear) and _is_lora_target(name)
    )


def _is_lora_target(name: str) -> bool:
    return re.fullmatch(LORA_TARGETS, name) is not None


# --------------------------------------------------------------------------- data


def iter_split(
    dataset: Any, split: str, transform: Any, batch_size: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """(images, labels) batches of one split, in list-file order."""
    rows = dataset.split_indices()[split]
    loader = DataLoader(TorchImages(dataset, transform, rows), batch_size=batch_size)
    for x, row, ok, error in loader:
        if not bool(ok.all()):
            raise RuntimeError(f"cannot read an image of {split}: {error[int((~ok).nonzero()[0])]}")
        yield x, torch.tensor([dataset.samples[int(r)].label for r in row])


def load_split(dataset: Any, split: str, transform: Any) -> tuple[Tensor, Tensor]:
    """A whole (small) split in memory: decoding stays out of the training-speed numbers."""
    xs, ys = zip(*iter_split(dataset, split, transform, 256), strict=True)
    return torch.cat(xs), torch.cat(ys)


# --------------------------------------------------------------------------- training


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> Iterator[Tensor]:
    """Indices of each step's batch: seeded epoch permutations, read back to back."""
    gen = torch.Generator().manual_seed(seed)
    buf = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while len(buf) < batch_size:
            buf = torch.cat([buf, torch.randperm(n, generator=gen)])
        yield buf[:batch_size]
        buf = buf[batch_size:]


def train(
    model: LiveClassifier,
    x: Tensor,
    y: Tensor,
    lr: float,
    steps: int,
    batch_size: int,
    seed: int = 0,
    weight_decay: float = WEIGHT_DECAY,
    probe: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """AdamW + warmup/cosine; ``probe`` runs after each forward, backward and step."""
    device = next(model.parameters()).device
    opt = build_optimizer(model, "adamw", lr, weight_decay)
    sched = build_scheduler(opt, min(500, steps // 10), steps)
    batch = min(batch_size, len(x))
    model.train()
    losses, t_start = [], 0.0
    for step, idx in enumerate(batch_order(len(x), batch, steps, seed)):
        if step == 1:  # the first step pays for allocation and kernel warm-up
            _sync(device)
            t_start = time.perf_counter()
        loss, _ = forward_loss(model, x[idx].to(device), y[idx].to(device), amp=False)
        _call(probe)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _call(probe)
        opt.step()
        sched.step()
        _call(probe)
        losses.append(loss.detach().item())
    _sync(device)
    timed = (steps - 1) * batch
    seconds = time.perf_counter() - t_start if steps > 1 else float("nan")
    return {"losses": losses, "images_per_s": timed / seconds if timed else float("nan")}


@torch.no_grad()
def accuracy(model: nn.Module, batches: Iterator[tuple[Tensor, Tensor]]) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    device = next(model.parameters()).device
    right = total = 0
    for x, y in batches:
        right += int((model(x.to(device)).argmax(1).cpu() == y).sum())
        total += len(y)
    return 100.0 * right / max(total, 1)


def _chunks(x: Tensor, y: Tensor, size: int = 256) -> Iterator[tuple[Tensor, Tensor]]:
    for i in range(0, len(x), size):
        yield x[i : i + size], y[i : i + size]


def _call(fn: Callable[[], None] | None) -> None:
    if fn is not None:
        fn()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- memory


def memory_at_batch1(
    make: Callable[[], LiveClassifier], x: Tensor, y: Tensor, device: torch.device
) -> tuple[float, str]:
    """Peak training memory (MiB) of a few batch-1 steps, model built inside the window.

    A throw-away step first, so one-time lazy initialisations are not counted.
    """
    train(make(), x[:1], y[:1], 1e-4, 1, 1)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        train(make(), x[:1], y[:1], 1e-4, MEMORY_STEPS, 1)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, "cuda_max_allocated"
    _trim()
    proc = psutil.Process()
    base = peak = proc.memory_info().rss

    def probe() -> None:
        nonlocal peak
        peak = max(peak, proc.memory_info().rss)

    train(make(), x[:1], y[:1], 1e-4, MEMORY_STEPS, 1, probe=probe)
    return (peak - base) / 2**20, "cpu_rss_delta"


def _trim() -> None:
    """Hand freed heap back to the OS (glibc), so RSS growth reflects new allocations."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# --------------------------------------------------------------------------- protocol


def steps_for(n: int, batch_size: int, steps: int | None, epochs: float) -> int:
    return steps if steps is not None else max(1, math.ceil(epochs * n / min(batch_size, n)))


def lr_search(
    make: Callable[[], LiveClassifier],
    data: dict[str, tuple[Tensor, Tensor]],
    lrs: Sequence[float],
    steps: int,
    batch_size: int,
    seed: int,
    keep_best: bool,
) -> tuple[dict[float, float], LiveClassifier | None]:
    """Val200 accuracy of a train800 run per lr (and the val-best model when asked)."""
    val_acc: dict[float, float] = {}
    kept = None
    for lr in lrs:
        model = make()
        train(model, *data["train800"], lr, steps, batch_size, seed)
        acc = accuracy(model, _chunks(*data["val200"]))
        if keep_best and (not val_acc or acc > max(val_acc.values())):
            kept = model
        val_acc[lr] = acc
    return val_acc, kept


def run_baseline(
    method: str,
    task_dir: str | Path,
    backbone_spec: dict[str, Any],
    lrs: Sequence[float] | None = None,
    steps: int | None = None,
    epochs: float = DEFAULT_EPOCHS,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "cpu",
    rank: int = 8,
    alpha: float | None = None,
    final: str = "train800val200",
    measure_memory: bool = True,
) -> dict[str, Any]:
    """lr search on train800 -> val200, final run (see ``final``), test accuracy, costs."""
    if final not in FINAL_SPLITS:
        raise ValueError(f"final must be one of {FINAL_SPLITS}, got {final!r}")
    t0 = time.perf_counter()
    dev = torch.device(device)
    backbone = load_backbone(backbone_spec, dev)
    dataset = get_dataset(f"vtab1k:{task_dir}")
    tf = backbone.transform()
    data = {s: load_split(dataset, s, tf) for s in ("train800", "val200", "train800val200")}
    k = len(dataset.classes)
    make = lambda: build_model(method, backbone, k, rank, alpha, seed)
    memory, memory_kind = (
        memory_at_batch1(make, *data["train800"], dev)
        if measure_memory
        else (float("nan"), "not measured")
    )
    lrs = tuple(lrs or DEFAULT_LRS[method])
    n_steps = steps_for(len(data["train800"][0]), batch_size, steps, epochs)
    val_acc, kept = lr_search(make, data, lrs, n_steps, batch_size, seed, final == "train800")
    best = max(lrs, key=lambda lr: val_acc[lr])  # first of equals: max keeps the earliest
    if final == "train800":
        model, run = kept, None
    else:
        model = make()
        n_final = steps_for(len(data[final][0]), batch_size, steps, epochs)
        run = train(model, *data[final], best, n_final, batch_size, seed)
    test_acc = accuracy(model, iter_split(dataset, "test", tf, 256))
    if run is None:  # throughput of one more (short) run when the final one was skipped
        run = train(make(), *data["train800"], best, min(n_steps, 20), batch_size, seed)
    return {
        "method": method,
        "task": dataset.task,
        "task_dir": str(task_dir),
        "backbone": backbone.fingerprint(),
        "rank": rank if method == "lora" else None,
        "lrs": list(lrs),
        "val_acc": {str(lr): v for lr, v in val_acc.items()},
        "best_lr": best,
        "val_acc_best": val_acc[best],
        "test_acc": test_acc,
        "final": final,
        "learned_params": learned_params(model),
        "head_params": sum(p.numel() for p in model.head.parameters()),
        "images_per_s": run["images_per_s"],
        "memory_mb_bs1": memory,
        "memory_kind": memory_kind,
        "steps": n_steps,
        "batch_size": batch_size,
        "seed": seed,
        "loss_first": run["losses"][0],
        "loss_last": run["losses"][-1],
        "wall_s": time.perf_counter() - t0,
        "device": str(dev),
    }


# --------------------------------------------------------------------------- CLI


def task_dirs(spec: str) -> list[Path]:
    """A task folder, a comma list of them, or a folder of task folders."""
    dirs = []
    for part in (p for p in spec.split(",") if p):
        path = Path(part)
        if (path / "train800.txt").is_file():
            dirs.append(path)
        else:
            dirs += sorted(d for d in path.iterdir() if (d / "train800.txt").is_file())
    if not dirs:
        raise FileNotFoundError(f"no VTAB-1k task folder (with train800.txt) in {spec!r}")
    return dirs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", required=True, help="task folder(s), comma list, or their parent")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of full,lora,bitfit")
    p.add_argument("--model", default="demo", help="backbone name or alias")
    p.add_argument("--checkpoint", default=None, help="backbone weights file")
    p.add_argument("--random-init", action="store_true", help="random backbone (smoke runs)")
    p.add_argument("--lrs", default=None, help="comma list overriding every method's lr grid")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default: epochs)")
    p.add_argument("--epochs", type=float, default=DEFAULT_EPOCHS, help="epochs per run")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: rank)")
    p.add_argument(
        "--final",
        choices=FINAL_SPLITS,
        default="train800val200",
        help="split of the final run scored on test",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-save", action="store_true", help="print only, write no results JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = {
        "model": args.model,
        "checkpoint": args.checkpoint,
        "random_init": args.random_init,
        "seed": args.seed,
    }
    lrs = [float(v) for v in args.lrs.split(",")] if args.lrs else None
    rows = []
    for task in task_dirs(args.tasks):
        for method in [m for m in args.methods.split(",") if m]:
            rows.append(
                run_baseline(
                    method,
                    task,
                    spec,
                    lrs,
                    args.steps,
                    args.epochs,
                    args.batch_size,
                    args.seed,
                    args.device,
                    args.rank,
                    args.alpha,
                    args.final,
                )
            )
            print(f"{rows[-1]['task']}/{method}: test {rows[-1]['test_acc']:.1f}%", flush=True)
    print_table(
        rows,
        [
            "task",
            "method",
            "best_lr",
            "val_acc_best",
            "test_acc",
            "learned_params",
            "images_per_s",
            "memory_mb_bs1",
            "wall_s",
        ],
    )
    if not args.no_save:
        print(f"wrote {save('baselines', {'config': vars(args), 'rows': rows})}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
