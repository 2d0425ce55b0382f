"""``--compile``: the side network's training steps through torch.compile, equal to eager
to float tolerance; eager (one warning, one note) when compiling fails."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from losa_cache.train import TrainConfig, train


def _weights(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    return torch.load(Path(cfg.out) / "checkpoint.pt", weights_only=False)["model"]


def _failing_backend(gm: torch.fx.GraphModule, inputs: list) -> Callable:
    raise RuntimeError("no C++ compiler here\nsecond line")


def test_a_failing_compile_trains_eagerly_with_one_warning(
    make_cfg: Callable[..., TrainConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    eager = make_cfg("eager")
    train(eager, progress=False)
    monkeypatch.setattr(
        torch, "compile", functools.partial(torch.compile, backend=_failing_backend)
    )
    cfg = make_cfg("compiled", compile="on")
    with pytest.warns(
        RuntimeWarning,
        match=r"--compile on: the compiled side network failed"
        r" \(.*no C\+\+ compiler here\); training eagerly",
    ):
        m = train(cfg, progress=False)
    assert m["complete"] and not m["compiled"]
    assert sum("training eagerly" in n for n in m["notes"]) == 1
    a, b = _weights(eager), _weights(cfg)  # the fallback came before any update: exact
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_auto_stays_eager_on_cpu(make_cfg: Callable[..., TrainConfig]) -> None:
    m = train(make_cfg("auto", compile="auto", steps=1), progress=False)
    assert m["compiled"] is False


@pytest.mark.slow  # inductor's first compile of a graph takes minutes on a loaded 2-core box
def test_compiled_training_equals_eager_to_float_tolerance(
    make_cfg: Callable[..., TrainConfig],
) -> None:
    eager, compiled = make_cfg("eager"), make_cfg("compiled", compile="on")
    ma, mb = train(eager, progress=False), train(compiled, progress=False)
    assert mb["compiled"] and not ma["compiled"]
    a, b = _weights(eager), _weights(compiled)
    assert any(a[k].abs().sum() > 0 for k in a if ".up." in k)  # W_u starts at 0: it trained
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    assert mb["train_loss"] == pytest.approx(ma["train_loss"], rel=1e-4)
