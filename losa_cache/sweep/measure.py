"""The paper's efficiency metrics, measured per side network (LoSA paper, App. and Fig. 4).

Two settings, both reported: this product's (features from the store: no backbone in
memory or in the step) and the paper's (the frozen backbone's forward in every step, its
weights in memory: live training). A live baseline has only the second.

* training memory at batch size 1: the bytes one training step allocates on the device
  (side network and head, gradients, optimizer state, one image's features,
  activations; the paper's setting adds the backbone's weights and forward). On CUDA
  ``max_memory_allocated``; on CPU every tensor storage the step creates is tracked (a
  dispatch mode) and the peak of the live total taken.
* training speed: images/s of forward + backward + optimizer step, averaged over 50
  batches (after 2 warm-up batches): from features in memory (I/O excluded), or with a
  backbone forward on fresh random images each step.
* inference memory and speed at batch 1 (Table 7): backbone forward + side network +
  head without autograd, as predict runs it.
* inference FLOPs per image: the backbone up to the deepest block the side network reads
  (:func:`losa_cache.compute.vit_flops`) plus the side network and head, counted with
  ``torch.utils.flop_counter.FlopCounterMode`` on one sample (matmuls, 2 x MACs, like
  ``vit_flops``); results also give GMACs (the paper's "GFLOPs").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from losa_cache.side import SideConfig, create_side
from losa_cache.train.keys import Key, side_inputs
from losa_cache.train.optim import Optimizer, build_optimizer
from losa_cache.train.run import forward_backward

__all__ = [
    "PeakTracker",
    "backbone_flops",
    "backbone_images",
    "image_inputs",
    "inference_memory",
    "inference_speed",
    "live_inputs",
    "memory_at",
    "side_flops",
    "step_memory",
    "step_speed",
    "train_speed",
]


class PeakTracker(TorchDispatchMode):
    """Peak bytes of live tensor storages created (or registered) while active. CPU-safe."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = self.peak = 0

    def track(self, *tensors: Any) -> None:
        for t in tensors:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key not in self.live:
                self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)

    def _drop_dead(self) -> None:
        for key, (ref, nbytes) in list(self.live.items()):
            if ref.expired():
                del self.live[key]
                self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._drop_dead()
        self.track(*tree_leaves(out))
        return out


def _inputs(
    side: SideConfig, layers: tuple[Key, ...], batch: int, dtype: torch.dtype, device: torch.device
) -> tuple[dict[Key, torch.Tensor], torch.Tensor]:
    feats = {i: torch.randn(batch, side.tokens, side.dim, device=device).to(dtype) for i in layers}
    labels = torch.randint(0, side.num_classes, (batch,), device=device)
    return feats, labels


def image_inputs(
    net: torch.nn.Module, num_classes: int, batch: int, device: torch.device
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """A live baseline's inputs: random (B, 3, H, W) images at the backbone's size."""
    from losa_cache.baselines import IMAGES

    size = tuple(net.patch_embed.img_size)
    images = torch.randn(batch, 3, *size, device=device)
    return {IMAGES: images}, torch.randint(0, num_classes, (batch,), device=device)


def _step(
    model: torch.nn.Module, opt: Optimizer, feats: dict, labels: torch.Tensor, amp: bool
) -> None:
    """A training step as a run takes it (its forward, loss and backward, then the
    optimizer's step)."""
    forward_backward(model, opt, feats, labels, amp)
    opt.step()


Build = Callable[[], torch.nn.Module]
Make = Callable[[int], tuple[dict[int, torch.Tensor], torch.Tensor]]


def step_memory(
    build: Build,
    make: Make,
    optimizer: str,
    batch: int,
    device: torch.device,
    amp: bool,
    resident: Sequence[torch.Tensor] = (),
) -> tuple[int, str]:
    """(bytes, how measured) of one training step at ``batch`` of the model ``build()``
    makes (built inside, so its weights, gradients and optimizer state count) on the
    inputs ``make(batch)`` makes (a backbone forward there counts too); ``resident``:
    tensors already in memory that count (a frozen backbone's weights)."""

    def run(tracker: PeakTracker | None) -> None:
        model = build().to(device)
        opt = build_optimizer(model, optimizer, 1e-3, 0.0)
        feats, labels = make(batch)
        if tracker is not None:
            tracker.track(*model.parameters(), *feats.values(), labels)
        _step(model, opt, feats, labels, amp)

    return _peak(run, device, resident)


def _peak(
    run: Callable[[PeakTracker | None], None],
    device: torch.device,
    resident: Sequence[torch.Tensor] = (),
) -> tuple[int, str]:
    held = sum(t.untyped_storage().nbytes() for t in resident)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run(None)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base + held
        return int(peak), "cuda_max_memory_allocated"
    tracker = PeakTracker()
    with tracker:
        tracker.track(*resident)
        run(tracker)
    return int(tracker.peak), "cpu_tracked_tensors"


# ---------------------------------------------------------------- the paper's setting


def backbone_images(backbone: Any, batch: int, device: torch.device) -> torch.Tensor:
    """Random inputs at the backbone's size: (B, 3, H, W), or (B, 3, F, H, W) clips."""
    c, h, w = backbone.preprocess["input_size"]
    shape = (c, backbone.clip_frames, h, w) if backbone.video else (c, h, w)
    return torch.randn(batch, *shape, device=device)


def live_inputs(side: SideConfig, backbone: Any, device: torch.device, amp: bool) -> Make:
    """A side network's inputs computed by the frozen backbone on random images (its
    forward is part of every call, as in live training)."""
    from losa_cache.train.live import frozen_features

    def make(batch: int) -> tuple[dict, torch.Tensor]:
        x = backbone_images(backbone, batch, device)
        feats = frozen_features(backbone, x, side_inputs(side), amp)
        return feats, torch.randint(0, side.num_classes, (batch,), device=device)

    return make


def inference_memory(
    model: torch.nn.Module,
    make: Make,
    device: torch.device,
    amp: bool,
    resident: Sequence[torch.Tensor] = (),
) -> tuple[int, str]:
    """(bytes, how measured) of one forward at batch 1 without autograd (predict's):
    ``model``'s weights, ``resident`` ones (a frozen backbone) and the activations."""

    def run(tracker: PeakTracker | None) -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            model(make(1)[0])

    return _peak(run, device, [*model.parameters(), *resident])


def inference_speed(
    model: torch.nn.Module,
    make: Make,
    batches: int,
    device: torch.device,
    amp: bool,
    warmup: int = 2,
) -> float | None:
    """Images/s of forwards at batch 1 (inputs made each time: a backbone forward in
    ``make`` counts); None when ``batches`` is 0."""
    if batches <= 0:
        return None

    def once() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            model(make(1)[0])

    for _ in range(warmup):
        once()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        once()
    _sync(device)
    return batches / (time.perf_counter() - t0)


def memory_at(
    side: SideConfig,
    optimizer: str,
    batch: int,
    dtype: torch.dtype,
    device: torch.device,
    amp: bool,
) -> tuple[int, str]:
    """(bytes, how measured) of one side-network training step at ``batch``, features
    from the store (no backbone in memory)."""
    return step_memory(
        lambda: create_side(side),
        lambda b: _inputs(side, side_inputs(side), b, dtype, device),
        optimizer,
        batch,
        device,
        amp,
    )


def side_flops(side: SideConfig) -> int:
    """Counted forward FLOPs of the side network + head for one image."""
    model = create_side(side).eval()
    feats, _ = _inputs(side, side_inputs(side), 1, torch.float32, torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(feats)
    return int(counter.get_total_flops())


def backbone_flops(model_name: str, upto_block: int, tokens: int) -> int | None:
    """Backbone forward FLOPs per image through ``upto_block``; None if unknown."""
    from losa_cache.backbone.registry import create_architecture
    from losa_cache.compute import vit_flops

    try:
        net = create_architecture(model_name, device="meta")
    except (ValueError, RuntimeError):
        return None
    grid = net.patch_embed.grid_size
    if net.num_prefix_tokens + grid[0] * grid[1] != tokens:  # extracted at another size
        return None
    return vit_flops(net, upto_block)


def train_speed(
    side: SideConfig,
    optimizer: str,
    batch: int,
    batches: int,
    dtype: torch.dtype,
    device: torch.device,
    amp: bool,
    warmup: int = 2,
) -> float | None:
    """Training images/s over ``batches`` timed steps on in-memory features."""
    return step_speed(
        lambda: create_side(side),
        lambda b: _inputs(side, side_inputs(side), b, dtype, device),
        optimizer,
        batch,
        batches,
        device,
        amp,
        warmup,
    )


def step_speed(
    build: Build,
    make: Make,
    optimizer: str,
    batch: int,
    batches: int,
    device: torch.device,
    amp: bool,
    warmup: int = 2,
    fresh: bool = False,
) -> float | None:
    """Training images/s of ``build()``'s model over ``batches`` timed steps on one batch
    ``make(batch)`` (after ``warmup`` untimed steps; ``fresh``: a new batch every step, so
    a backbone forward in ``make`` is timed); None when ``batches`` is 0."""
    if batches <= 0:
        return None
    model = build().to(device)
    opt = build_optimizer(model, optimizer, 1e-3, 0.0)
    feats, labels = make(batch)
    for _ in range(warmup):
        _step(model, opt, feats, labels, amp)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        if fresh:
            feats, labels = make(batch)
        _step(model, opt, feats, labels, amp)
    _sync(device)
    return batch * batches / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
