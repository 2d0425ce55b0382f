"""Profiles (memory, FLOPs) per distinct side network, and memory groups of runs.

Every run's training memory at its batch size is estimated from two measurements, at
batch 1 and 2 (:func:`losa_cache.sweep.measure.memory_at`): memory grows linearly in
the batch (activations), on top of a fixed part (weights, gradients, optimizer state).
Runs whose estimates do not fit the budget together are split into groups by
first-fit decreasing; each group is one pass over the data (the memory-resident
feature cache, when there is one, is shared by all groups and read once). The estimate
assumes all of a group's runs hold activations at once (true under vmap; a loop frees
each run's before the next): conservative.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from losa_cache.side import SideConfig
from losa_cache.sweep.measure import (
    Build,
    backbone_flops,
    image_inputs,
    memory_at,
    side_flops,
    step_memory,
)
from losa_cache.train.cache import GiB, free_memory
from losa_cache.train.keys import deepest_block, side_inputs

__all__ = [
    "Group",
    "Profile",
    "baseline_profile",
    "default_budget",
    "make_groups",
    "profile_key",
    "profiles",
]

#: Share of free memory the models of one group may take, minus this reserve.
MODEL_FRACTION, MODEL_RESERVE = 0.5, 1 * GiB


@dataclass
class Profile:
    """Measurements shared by every run with the same side network and optimizer."""

    memory_b1: int
    memory_b2: int
    memory_kind: str
    side_flops: int
    backbone_flops: int | None

    def memory_at(self, batch: int) -> int:
        return self.memory_b1 + max(0, self.memory_b2 - self.memory_b1) * (batch - 1)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Group:
    """Runs trained in one pass, with the memory they were estimated to need."""

    runs: list[str]
    estimate: int

    def to_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "estimate_bytes": self.estimate}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Group:
        return cls(list(data["runs"]), int(data["estimate_bytes"]))


def profile_key(
    side: SideConfig, optimizer: str, amp: bool, baseline: dict[str, Any] | None = None
) -> str:
    """Runs with equal keys share a profile; ``baseline``: a live baseline's method and
    options (its side config is only its head's)."""
    key = {"side": side.to_dict(), "optimizer": optimizer, "amp": amp}
    return json.dumps({**key, "baseline": baseline} if baseline else key, sort_keys=True)


def profiles(
    keys: dict[str, tuple[SideConfig, str, bool]],
    dtype: torch.dtype,
    device: torch.device,
    model_name: str,
) -> dict[str, Profile]:
    """Measure each distinct (side network, optimizer, amp) once."""
    out = {}
    for key, (side, optimizer, amp) in keys.items():
        m1, kind = memory_at(side, optimizer, 1, dtype, device, amp)
        m2, _ = memory_at(side, optimizer, 2, dtype, device, amp)
        upto = deepest_block(side_inputs(side))
        out[key] = Profile(
            m1, m2, kind, side_flops(side), backbone_flops(model_name, upto, side.tokens)
        )
    return out


def default_budget(
    device: torch.device,
    cache_bytes_here: int,
    sharing: int = 1,
    free: dict[str, int] | None = None,
) -> int:
    """Bytes the models of one group may use: a share of free memory after the cache.
    ``sharing``: processes training in the same memory at once (Dask workers on one host's
    RAM or one GPU), each given an equal part and holding its own cache; ``free``: the
    free memory measured where they train (default: here)."""
    free = free if free is not None else free_memory(device)
    room = free["gpu"] if device.type == "cuda" else free["ram"]
    share = (int(room * MODEL_FRACTION) - MODEL_RESERVE) // max(1, sharing)
    return max(0, share - cache_bytes_here)


def make_groups(estimates: dict[str, int], budget: int | None) -> list[Group]:
    """First-fit decreasing; a run too big for the budget gets a group of its own."""
    if budget is None:
        return [Group(list(estimates), sum(estimates.values()))]
    groups: list[Group] = []
    for key in sorted(estimates, key=lambda k: -estimates[k]):
        need = estimates[key]
        target = next((g for g in groups if g.estimate + need <= budget), None)
        if target is None:
            groups.append(Group([key], need))
        else:
            target.runs.append(key)
            target.estimate += need
    order = {k: i for i, k in enumerate(estimates)}
    for g in groups:  # keep the user's order inside a group (shapes stay together)
        g.runs.sort(key=order.__getitem__)
    return groups


def baseline_profile(
    build: Build,
    net: torch.nn.Module,
    side: SideConfig,
    optimizer: str,
    amp: bool,
    device: torch.device,
    model_name: str,
) -> Profile:
    """A live baseline's profile: one training step on images at batch 1 and 2 (its own
    backbone copy, forward and backward included: the paper's setting)."""

    def make(b: int) -> tuple[dict, torch.Tensor]:
        return image_inputs(net, side.num_classes, b, device)

    m1, kind = step_memory(build, make, optimizer, 1, device, amp)
    m2, _ = step_memory(build, make, optimizer, 2, device, amp)
    return Profile(
        m1, m2, kind, side_flops(side), backbone_flops(model_name, side.num_layers - 1, side.tokens)
    )
