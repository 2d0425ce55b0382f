"""--cache policy: auto picks GPU, then RAM, then streaming; explicit modes fail loudly."""

from __future__ import annotations

import pytest
import torch

from losa_cache.train.cache import GiB, choose_cache

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_prefers_gpu_then_ram_then_none() -> None:
    free = {"ram": 64 * GiB, "gpu": 40 * GiB}
    assert choose_cache("auto", 10 * GiB, CUDA, free).mode == "gpu"
    ram = choose_cache("auto", 25 * GiB, CUDA, free)
    assert ram.mode == "ram" and "GPU budget" in ram.reason
    none = choose_cache("auto", 40 * GiB, CUDA, free)
    assert none.mode == "none" and "streaming" in none.reason
    assert choose_cache("auto", 1 * GiB, CPU, {"ram": 64 * GiB}).mode == "ram"


def test_explicit_modes() -> None:
    assert choose_cache("none", 1, CPU, {"ram": 0}).mode == "none"
    with pytest.raises(ValueError, match="CUDA"):
        choose_cache("gpu", 1, CPU, {"ram": 64 * GiB})
    with pytest.raises(ValueError, match="do not fit"):
        choose_cache("ram", 100 * GiB, CPU, {"ram": 64 * GiB})
    with pytest.raises(ValueError, match="choose one of"):
        choose_cache("disk", 1, CPU, {"ram": 1})
