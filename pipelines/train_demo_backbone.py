"""Train the embedded demo backbone (``losa_demo_vit``) on CIFAR-10, on CPU, reproducibly.

Writes ``demo_vit.safetensors`` (fp32 state dict of the timm model, 10-class head included)
and ``demo_vit.json`` (provenance: hyper-parameters, accuracy, versions, sha256, rebuild command)
into ``--out-dir`` (default: the ``losa_cache/assets`` package folder).

Rebuild the shipped weights from the repository root with the command stored in
``demo_vit.json`` under ``"command"``, e.g.::

    python -m pipelines.train_demo_backbone --epochs 6

Data: ``--data`` is a folder holding ``train.tar``/``test.tar`` (JPEGs laid out as
``<split>/<class>/NNNN.jpg``) or the already-extracted ``train/``/``test/`` folders. Images are
decoded once into uint8 arrays; augmentation (random crop with 4 px zero padding, horizontal
flip) runs on batched tensors. Training is single-process and seeded, with deterministic
algorithms, so the same command with the same ``--threads`` and torch build gives the same
weights.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import shlex
import struct
import sys
import tarfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save as st_save
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # running as a file / from another working directory
    sys.path.insert(0, str(REPO))

from losa_cache.backbone.demo import DEMO_CFG, DEMO_MODEL, DEMO_WEIGHTS  # noqa: E402
from losa_cache.files import sha256_file  # noqa: E402

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10"
DEFAULT_OUT = REPO / "losa_cache" / "assets"
META_NAME = Path(DEMO_WEIGHTS).with_suffix(".json").name


# --------------------------------------------------------------------------- data


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if arr.shape != (32, 32, 3):
        raise ValueError(f"expected a 32x32 RGB image, got {arr.shape}")
    return arr


def _interleave(files: dict[int, list[str]], limit: int | None) -> list[tuple[str, int]]:
    """Round-robin over the (sorted) classes, so every prefix is class-balanced."""
    per_class = [sorted(files.get(c, [])) for c in range(len(CLASSES))]
    order: list[tuple[str, int]] = []
    for i in range(max((len(f) for f in per_class), default=0)):
        for c, names in enumerate(per_class):
            if i < len(names):
                order.append((names[i], c))
    return order[:limit] if limit is not None else order


def load_split(data: Path, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load a CIFAR-10 split as ``(uint8 [N, 32, 32, 3], int64 [N])``.

    The order is deterministic and class-interleaved (airplane 0, automobile 0, ..., truck 0,
    airplane 1, ...), so ``limit=N`` gives a balanced, reproducible subset.
    """
    data = Path(data)
    folder, archive = data / split, data / f"{split}.tar"
    files: dict[int, list[str]] = {}
    if folder.is_dir():
        for c, name in enumerate(CLASSES):
            files[c] = [str(p) for p in (folder / name).glob("*.jpg")]
        order = _interleave(files, limit)
        images = [_decode(Path(p).read_bytes()) for p, _ in order]
    elif archive.is_file():
        index = {name: c for c, name in enumerate(CLASSES)}
        with tarfile.open(archive) as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            for name in members:
                parts = Path(name).parts
                if len(parts) >= 3 and parts[-3] == split and parts[-2] in index:
                    files.setdefault(index[parts[-2]], []).append(name)
            order = _interleave(files, limit)
            images = []
            for name, _ in order:
                fh = tar.extractfile(members[name])
                assert fh is not None
                images.append(_decode(fh.read()))
    else:
        raise FileNotFoundError(f"neither {folder} nor {archive} exists (see --data)")
    if not order:
        raise FileNotFoundError(f"no CIFAR-10 {split} images found under {data}")
    x = np.stack(images)
    y = np.asarray([c for _, c in order], dtype=np.int64)
    return x, y


def _normalize(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> normalized float32 NCHW (DEMO_CFG mean/std)."""
    mean = torch.tensor(DEMO_CFG["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(DEMO_CFG["std"]).view(1, 3, 1, 1)
    return (x_uint8.float().div_(255.0) - mean) / std


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) + horizontal flip on a uint8 NCHW batch."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                 rows, cols]  # fmt: skip
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, gen: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    perm = torch.randperm(len(x), generator=gen)
    for i in range(0, len(x), batch_size):
        idx = perm[i : i + batch_size]
        yield _normalize(augment(x[idx], gen)), y[idx]


# --------------------------------------------------------------------------- model / optim


def build_model() -> torch.nn.Module:
    return timm.create_model(DEMO_MODEL, pretrained=False, num_classes=len(CLASSES))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, position embedding and CLS token."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = p.ndim <= 1 or name in ("pos_embed", "cls_token") or name.endswith(".bias")
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_at(step: int, total: int, warmup: int, base_lr: float, min_lr: float) -> float:
    """Linear warmup to ``base_lr`` then cosine decay to ``min_lr`` (per optimizer step)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t))


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on uint8 NHWC images ``x`` with labels ``y``."""
    model.eval()
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    correct = 0
    for i in range(0, len(xt), batch_size):
        logits = model(_normalize(xt[i : i + batch_size]))
        correct += int((logits.argmax(1) == torch.from_numpy(y[i : i + batch_size])).sum())
    return correct / len(xt)


def save_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` with a canonical header (metadata keys sorted).

    safetensors serializes ``__metadata__`` from a hash map, so its key order (and hence the
    file's sha256) changes from run to run; rewriting the header makes rebuilds byte-identical.
    """
    raw = st_save(state, metadata=metadata)
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # keep the tensor data 8-byte aligned
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="folder with train.tar/test.tar or extracted train/ test/ (default: %(default)s)")  # noqa: E501  # fmt: skip
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW)")
    p.add_argument("--min-lr", type=float, default=1e-5, help="final cosine learning rate")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--clip-grad", type=float, default=1.0, help="grad-norm clip (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    p.add_argument("--limit", type=int, default=None,
                   help="smoke run: use only the first N train and N test images")  # fmt: skip
    return p.parse_args(argv)


def rebuild_command(args: argparse.Namespace) -> str:
    """The command (run from the repository root) that reproduces these weights."""
    cmd = ["python", "-m", "pipelines.train_demo_backbone"]
    if Path(args.data).resolve() != DEFAULT_DATA.resolve():
        cmd += ["--data", str(args.data)]
    cmd += [
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--lr", repr(args.lr), "--min-lr", repr(args.min_lr),
        "--weight-decay", repr(args.weight_decay), "--warmup-epochs", repr(args.warmup_epochs),
        "--label-smoothing", repr(args.label_smoothing), "--clip-grad", repr(args.clip_grad),
        "--seed", str(args.seed), "--threads", str(args.threads),
    ]  # fmt: skip
    if Path(args.out_dir).resolve() != DEFAULT_OUT.resolve():
        cmd += ["--out-dir", str(args.out_dir)]
    if args.limit is not None:
        cmd += ["--limit", str(args.limit)]
    return shlex.join(cmd)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    t0 = time.perf_counter()
    x_train, y_train = load_split(args.data, "train", args.limit)
    x_test, y_test = load_split(args.data, "test", args.limit)
    print(f"loaded {len(x_train)} train / {len(x_test)} test images "
          f"in {time.perf_counter() - t0:.1f}s", flush=True)  # fmt: skip

    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr,
                            betas=(0.9, 0.999))  # fmt: skip
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = max(1, round(args.warmup_epochs * steps_per_epoch))
    gen = torch.Generator().manual_seed(args.seed)
    xt = torch.from_numpy(x_train).permute(0, 3, 1, 2).contiguous()
    yt = torch.from_numpy(y_train)
    print(f"{DEMO_MODEL}: {n_params / 1e6:.2f}M params, {args.epochs} epochs x "
          f"{steps_per_epoch} steps, batch {args.batch_size}, threads {args.threads}",
          flush=True)  # fmt: skip

    step, history = 0, []
    t_train = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        seen, loss_sum, correct, t_ep = 0, 0.0, 0, time.perf_counter()
        bar = tqdm(batches(xt, yt, args.batch_size, gen), total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch", mininterval=5.0,
                   file=sys.stdout)  # fmt: skip
        for xb, yb in bar:
            lr = lr_at(step, total, warmup, args.lr, args.min_lr)
            for g in opt.param_groups:
                g["lr"] = lr
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            opt.step()
            step += 1
            seen += len(yb)
            loss_sum += float(loss.detach()) * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            ips = seen / (time.perf_counter() - t_ep)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                            lr=f"{lr:.2e}", img_s=f"{ips:.0f}", refresh=False)  # fmt: skip
        bar.close()
        ep = {"epoch": epoch + 1, "loss": round(loss_sum / seen, 4),
              "train_acc": round(correct / seen, 4),
              "seconds": round(time.perf_counter() - t_ep, 1)}  # fmt: skip
        history.append(ep)
        print(json.dumps(ep), flush=True)
    train_seconds = time.perf_counter() - t_train

    t_eval = time.perf_counter()
    test_acc = evaluate(model, x_test, y_test)
    print(f"test top-1 {test_acc:.4f} on {len(x_test)} images "
          f"({time.perf_counter() - t_eval:.1f}s)", flush=True)  # fmt: skip

    hparams = {
        "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "AdamW",
        "betas": [0.9, 0.999], "lr": args.lr, "min_lr": args.min_lr,
        "weight_decay": args.weight_decay, "schedule": "linear warmup + cosine (per step)",
        "warmup_epochs": args.warmup_epochs, "warmup_steps": warmup, "total_steps": total,
        "label_smoothing": args.label_smoothing, "clip_grad": args.clip_grad,
        "augmentation": "random crop 32 (zero pad 4) + horizontal flip",
        "threads": args.threads, "limit": args.limit,
    }  # fmt: skip
    # Only deterministic values go into the safetensors header, so a rebuild is byte-identical.
    st_meta = {
        "format": "pt", "architecture": DEMO_MODEL, "num_classes": str(len(CLASSES)),
        "classes": ",".join(CLASSES), "dataset": "CIFAR-10", "seed": str(args.seed),
        "hyperparameters": json.dumps(hparams, sort_keys=True),
        "test_top1": f"{test_acc:.4f}", "test_images": str(len(x_test)),
        "mean": json.dumps(DEMO_CFG["mean"]), "std": json.dumps(DEMO_CFG["std"]),
        "torch": torch.__version__, "timm": timm.__version__,
    }  # fmt: skip
    args.out_dir.mkdir(parents=True, exist_ok=True)
    weights = args.out_dir / DEMO_WEIGHTS
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_safetensors(state, weights, st_meta)

    meta = {
        "architecture": DEMO_MODEL,
        "weights": DEMO_WEIGHTS,
        "num_params": n_params,
        "num_classes": len(CLASSES),
        "classes": list(CLASSES),
        "dataset": "CIFAR-10",
        "pretrained_cfg": {k: list(v) if isinstance(v, tuple) else v for k, v in DEMO_CFG.items()},
        "seed": args.seed,
        "epochs": args.epochs,
        "hyperparameters": hparams,
        "train_images": len(x_train),
        "test_images": len(x_test),
        "test_top1": round(test_acc, 4),
        "train_seconds": round(train_seconds, 1),
        "history": history,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sha256": sha256_file(weights),
        "size_bytes": weights.stat().st_size,
        "command": rebuild_command(args),
    }
    (args.out_dir / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {weights} ({meta['size_bytes'] / 1e6:.2f} MB, sha256 {meta['sha256'][:12]}…) "
          f"and {args.out_dir / META_NAME}", flush=True)  # fmt: skip
    return meta


if __name__ == "__main__":
    main()
