"""The lean optimizers step, save and load exactly as torch.optim's, without torch._dynamo."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from losa_cache.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups
from tests.train._train_helpers import compiler_imports_after


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3))


def _torch_pair(net: nn.Module, name: str) -> tuple[torch.optim.Optimizer, object]:
    """Today's optimizer and schedule before the lean ones (the reference)."""
    groups = param_groups(net, 0.05)
    opt = (
        torch.optim.SGD(groups, lr=0.1, momentum=0.9)
        if name == "sgd"
        else torch.optim.AdamW(groups, lr=0.01)
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, 2, 7))


def _train(net: nn.Module, opt: object, sched: object, steps: range) -> None:
    for step in steps:
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(5, 6, generator=g), torch.randint(0, 3, (5,), generator=g)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        sched.step()


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_lean_optimizer_is_bit_identical_to_torch_optim(name: str) -> None:
    ref, lean = _net(), _net()
    opt, sched = _torch_pair(ref, name)
    mine = build_optimizer(lean, name, 0.1 if name == "sgd" else 0.01, 0.05, 0.9)
    my_sched = build_scheduler(mine, 2, 7)
    _train(ref, opt, sched, range(9))  # warmup, cosine, then lr 0
    _train(lean, mine, my_sched, range(9))
    for a, b in zip(ref.parameters(), lean.parameters(), strict=True):
        assert torch.equal(a, b)
    want, got = opt.state_dict(), mine.state_dict()
    assert got["param_groups"] == want["param_groups"]
    assert got["state"].keys() == want["state"].keys()
    for i, s in want["state"].items():
        assert s.keys() == got["state"][i].keys()
        assert all(torch.equal(v, got["state"][i][k]) for k, v in s.items())
    assert my_sched.get_last_lr() == sched.get_last_lr()
    assert my_sched.state_dict()["last_epoch"] == sched.state_dict()["last_epoch"]


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_lean_optimizer_resumes_a_torch_optim_checkpoint(name: str) -> None:
    """A checkpoint written before the lean optimizers (torch.optim's state) resumes the
    same, and torch.optim takes the lean one's."""
    ref, lean, back = _net(), _net(), _net()
    opt, sched = _torch_pair(ref, name)
    _train(ref, opt, sched, range(3))
    lean.load_state_dict(ref.state_dict())
    mine = build_optimizer(lean, name, 1.0, 0.0, 0.9)  # overwritten by the load
    my_sched = build_scheduler(mine, 2, 7)
    mine.load_state_dict(copy.deepcopy(opt.state_dict()))  # as through a checkpoint file
    my_sched.load_state_dict(copy.deepcopy(sched.state_dict()))
    _train(ref, opt, sched, range(3, 6))
    _train(lean, mine, my_sched, range(3, 6))
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), lean.parameters(), strict=True))
    back.load_state_dict(lean.state_dict())
    opt2, sched2 = _torch_pair(back, name)
    opt2.load_state_dict(copy.deepcopy(mine.state_dict()))
    sched2.load_state_dict(copy.deepcopy(my_sched.state_dict()))
    _train(back, opt2, sched2, range(6, 8))
    _train(lean, mine, my_sched, range(6, 8))
    assert all(torch.equal(a, b) for a, b in zip(back.parameters(), lean.parameters(), strict=True))


def test_lean_optimizer_does_not_import_torch_dynamo() -> None:
    """torch.optim.Optimizer imports torch._dynamo and sympy (70-85 MB) on first use."""
    code = (
        "import torch\n"
        "from losa_cache.train.optim import build_optimizer, build_scheduler\n"
        "for name in ('adamw', 'sgd'):\n"
        "    net = torch.nn.Linear(4, 2)\n"
        "    opt = build_optimizer(net, name, 0.1, 0.01)\n"
        "    sched = build_scheduler(opt, 1, 3)\n"
        "    net(torch.randn(3, 4)).sum().backward()\n"
        "    opt.step(); sched.step(); opt.zero_grad(); opt.load_state_dict(opt.state_dict())\n"
    )
    assert compiler_imports_after(code) == []
