"""Video training cost, Table 2's point: live LoSA vs live full fine-tuning vs cached LoSA.

    python benchmarks/video.py                                      # CPU: ViViT-B, 8-32 frames
    python benchmarks/video.py --models vivit_b,vivit_h,vivit_g,vivit_e --frames 32 --max-gb 120
    python benchmarks/video.py --models vivit_test --frames 4 --steps 1   # smoke run

For every size (model x clip frames, random-init ViViT, smallest first) and method:

* ``live_losa``: the frozen ViViT runs forward on each clip (inference mode, no graph) and
  LoSA (r --rank, all blocks, Eq. 6) trains on its block outputs: the paper's setting;
* ``live_full``: full fine-tuning, the ViViT + a linear head on mean-pooled b_L, trained
  end to end (SGD with momentum, as the LoSA recipe);
* ``cached_losa``: the same LoSA on block outputs already in memory, as a feature store
  feeds them (fp32, every block): no backbone at all.

each measured in a fresh subprocess: peak training memory of one step at batch 1 above what
exists once the models are built (CUDA: max allocated; CPU: peak RSS, VmHWM reset first;
``model_bytes``, the trained parameters, are listed apart: momentum and gradients of
full fine-tuning's weights do count in its peak), and clips/s at --batch-size, the mean
over --steps steps after one warm-up step. A method stops at its
first size that fails (out of memory, over --max-gb, or over --timeout), and the report
names, per method, the largest size that ran: how far each gets before memory runs out.

--max-gb guards the machine: on CPU the worker's data segment is capped (RLIMIT_DATA:
allocations beyond it fail inside the worker) and the parent kills a worker whose RSS
passes it; on CUDA the worker's allocator is capped (set_per_process_memory_fraction).
Results go to ``benchmarks/results/video-<device>-<date>.json`` (device, versions, date).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save

METHODS = ("live_losa", "live_full", "cached_losa")
GB = 2**30


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="vivit_b", help="ViViT aliases, comma-separated")
    p.add_argument("--frames", default="8,16,32", help="clip frames, comma-separated")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=1, help="batch of the clips/s runs")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--max-gb", type=float, default=16.0, help="memory a worker may use")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    bad = sorted(set(args.methods.split(",")) - set(METHODS))
    if bad:
        p.error(f"unknown methods {bad}; choose among {list(METHODS)}")
    return args


# ----------------------------------------------------------------------------- worker side


def _cap_memory(max_gb: float, device: torch.device) -> None:
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, max_gb * GB / total), device)
        return
    status = Path("/proc/self/status").read_text().splitlines()
    data = next(int(ln.split()[1]) * 1024 for ln in status if ln.startswith("VmData:"))
    limit = int(data + max_gb * GB)  # on top of what the imports already mapped
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _peak_reset(device: torch.device) -> int:
    """Start a peak measurement; returns the baseline in bytes."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    return psutil.Process().memory_info().rss


def _peak(device: torch.device, base: int) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    status = Path("/proc/self/status").read_text().splitlines()
    hwm = next(int(ln.split()[1]) * 1024 for ln in status if ln.startswith("VmHWM:"))
    return hwm - base


def _losa(d: dict[str, Any], rank: int, device: torch.device) -> torch.nn.Module:
    from losa_cache.side import SideConfig, create_side

    config = SideConfig(
        num_layers=d["depth"],
        dim=d["dim"],
        tokens=d["tokens"],
        num_classes=400,
        rank=rank,
        layers="all",
        frames=d["time_steps"],
    )
    return create_side(config).to(device).train()


def _build(spec: dict[str, Any], device: torch.device) -> tuple[Any, torch.nn.Module]:
    """(one training step as a function of a clip batch, the trained module)."""
    from losa_cache.backbone import create_backbone
    from losa_cache.backbone.registry import describe
    from losa_cache.train.live import frozen_features

    d = describe(spec["model"], frames=spec["frames"])
    blocks = list(range(d["depth"]))
    if spec["method"] == "cached_losa":  # the store's rows, in memory: no backbone at all
        model = _losa(d, spec["rank"], device)
        shape = (spec["batch"], d["tokens"], d["dim"])
        cached = {i: torch.randn(shape, device=device) for i in blocks}
        loss_of = lambda x: model({i: f[: len(x)] for i, f in cached.items()})
    else:
        b = create_backbone(spec["model"], random_init=True, frames=spec["frames"], device=device)
        if spec["method"] == "live_full":
            head = torch.nn.Linear(d["dim"], 400).to(device)
            model = torch.nn.ModuleDict({"vivit": b.model, "head": head}).train()
            model.requires_grad_(True)

            def loss_of(x: torch.Tensor) -> torch.Tensor:
                (y,) = b.model.forward_intermediates(
                    x, indices=[d["depth"] - 1], output_fmt="NLC", intermediates_only=True
                )
                return head(y.mean(dim=1))  # (B, T, D) -> (B, classes)
        else:
            model = _losa(d, spec["rank"], device)
            loss_of = lambda x: model(frozen_features(b, x, blocks, amp=False))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(x: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss_of(x).logsumexp(-1).mean().backward()  # any scalar: the cost is the same
        opt.step()

    return step, model


def worker(spec_path: str, out_path: str) -> None:
    """Child side: cap memory, build, one warm-up step, the timed steps; peak at batch 1."""
    spec = json.loads(Path(spec_path).read_text())
    device = torch.device(spec["device"])
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    import losa_cache.backbone
    import losa_cache.side
    import losa_cache.train.live  # noqa: F401 - imported before the cap: not counted in it

    _cap_memory(spec["max_gb"], device)
    result: dict[str, Any] = {"ok": False}
    try:
        step, model = _build(spec, device)
        model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        img = int(spec["image"])
        clip = lambda n: torch.randn(n, 3, spec["frames"], img, img, device=device)
        base = _peak_reset(device)
        step(clip(1))  # batch 1: the memory figure
        peak = _peak(device, base)
        x = clip(spec["batch"])
        step(x)  # warm-up at the timed batch
        t0 = time.perf_counter()
        for _ in range(spec["steps"]):
            step(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        result = {
            "ok": True,
            "peak_bytes_batch1": peak,
            "model_bytes": model_bytes,
            "clips_s": spec["batch"] * spec["steps"] / seconds,
        }
    except (MemoryError, RuntimeError) as err:  # torch's out-of-memory is a RuntimeError
        text = (str(err) or "out of memory").splitlines()[0][:300]
        result["error"] = f"{type(err).__name__}: {text}"
    Path(out_path).write_text(json.dumps(result))


# ----------------------------------------------------------------------------- parent side


def run_one(spec: dict[str, Any], folder: Path, timeout: float) -> dict[str, Any]:
    """A worker subprocess, killed when its RSS passes --max-gb or it runs past ``timeout``."""
    name = f"{spec['method']}-{spec['model']}-{spec['frames']}"
    spec_path, out_path = folder / f"{name}.spec.json", folder / f"{name}.out.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path), str(out_path)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    watched, t0, killed = psutil.Process(proc.pid), time.monotonic(), None
    while proc.poll() is None:
        try:
            rss = watched.memory_info().rss
        except psutil.NoSuchProcess:
            break
        if rss > spec["max_gb"] * GB * 1.05 + GB:  # the in-worker cap should fire first
            killed = f"killed: RSS {rss / GB:.1f} GB over --max-gb {spec['max_gb']}"
        elif time.monotonic() - t0 > timeout:
            killed = f"killed: over --timeout {timeout:.0f} s"
        if killed:
            proc.kill()
            break
        time.sleep(0.1)
    stderr = proc.communicate()[1]
    if killed:
        return {"ok": False, "error": killed}
    if not out_path.exists():
        return {"ok": False, "error": f"worker died (rc {proc.returncode}): {stderr[-500:]}"}
    return json.loads(out_path.read_text())


def sizes(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(model, frames), smallest first (tokens x width x depth)."""
    from losa_cache.backbone.registry import describe

    out = []
    for model in args.models.split(","):
        for frames in map(int, args.frames.split(",")):
            d = describe(model, frames=frames)
            out.append((d["tokens"] * d["dim"] * d["depth"], model, frames, d))
    return [(m, f) for _, m, f, _ in sorted(out, key=lambda t: t[0])]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return {}
    device = (
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    with tempfile.TemporaryDirectory(prefix="losa-bench-video-") as tmp:
        rows, largest = measure(args, device, Path(tmp))
    payload = {
        "args": {k: v for k, v in vars(args).items() if k != "worker"},
        "runs": rows,
        "largest_that_ran": largest,
    }
    path = save("video", payload)
    print_table(
        [{**r, "peak_gb": r.get("peak_bytes_batch1", 0) / GB} for r in rows],
        ["method", "model", "frames", "tokens", "ok", "peak_gb", "clips_s"],
    )
    for method in args.methods.split(","):
        print(f"{method}: largest that ran: {largest.get(method, 'none')}")
    print(f"wrote {path}")
    return payload


def measure(
    args: argparse.Namespace, device: str, folder: Path
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every (size, method) from the smallest size up; a method stops at its first failure."""
    from losa_cache.backbone.registry import describe

    rows, largest, stopped = [], {}, set()
    for model, frames in sizes(args):
        d = describe(model, frames=frames)
        for method in args.methods.split(","):
            if method in stopped:
                continue
            spec = {
                "method": method,
                "model": model,
                "frames": frames,
                "rank": args.rank,
                "batch": args.batch_size,
                "steps": args.steps,
                "max_gb": args.max_gb,
                "device": device,
                "threads": args.threads,
                "image": d["input_size"][-1],
            }
            r = run_one(spec, folder, args.timeout)
            rows.append(
                {"method": method, "model": model, "frames": frames, "tokens": d["tokens"], **r}
            )
            if r["ok"]:
                largest[method] = f"{model} @ {frames} frames ({d['tokens']} tokens)"
            else:
                stopped.add(method)
    return rows, largest


if __name__ == "__main__":
    main()
