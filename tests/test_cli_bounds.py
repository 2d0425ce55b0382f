"""Options have upper bounds that follow from the model and the machine, each a one-line
error naming the bound and why (issue 26, items 13 and 16).

Before: ``train --rank 100000`` and ``extract --workers 100000`` ran the machine out of
memory; ``--seed`` beyond 64 bits, ``sweep --memory-budget 1e400`` and a label of 10**30
were OverflowError tracebacks; ``--interpolation nope`` a KeyError; ``--crop-pct 1e9``
"height and width must be > 0"; ``train --device cuda`` without a GPU "invalid argument to
reset_peak_memory_stats".
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from losa_cache.checks import max_workers
from losa_cache.cli.main import app
from losa_cache.extract import INTERPOLATIONS, ExtractConfig
from losa_cache.side.transformer import layer_params

TOO_MANY = str(100_000)
HUGE = str(10**30)


def one_line_error(*args: str) -> str:
    """The command's single output line (exit 2, no traceback)."""
    result = CliRunner().invoke(app, list(args))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    return lines[0]


def extract(tmp_path: Path, *more: str) -> str:
    return one_line_error("extract", "--model", "vit_micro", "--random-init", "--dataset",
                          "demo", "--store", str(tmp_path / "s.zarr"), *more)  # fmt: skip


def train(micro_store: str, tmp_path: Path, *more: str) -> str:
    return one_line_error("train", "--store", micro_store, "--out", str(tmp_path / "run"),
                          "--steps", "1", "--device", "cpu", *more)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--workers", TOO_MANY], f"--workers must be an integer >= -1 and <= {max_workers()[0]} "
         "(4 per CPU core"),
        (["--batch-size", TOO_MANY], "must be an integer >= 1 and <= 65536 (a larger batch only "
         "exhausts"),
        (["--seed", HUGE], "--seed must be an integer >= 0 and <= 9223372036854775807 (it must fit "
         "in 64 bits)"),
        (["--crop-pct", "1e9"], "--crop-pct must be a number > 0 and <= 1 (the share of the "
         "resized image"),
        (["--input-size", TOO_MANY], "--input-size must be an integer >= 1 and <= 4096"),
        (["--max-file-bytes", "0"], "the size '0' is not positive; give a size such as 500GB"),
    ],
)  # fmt: skip
def test_extract_bounds(tmp_path: Path, args: list[str], says: str) -> None:
    assert says in extract(tmp_path, *args)
    assert not (tmp_path / "s.zarr").exists()  # refused before anything is written


def test_extract_refuses_an_unknown_choice_naming_them(tmp_path: Path) -> None:
    """A choice flag lists its choices in --help and refuses others before anything runs
    (from Python: ExtractConfig's one-line error)."""
    res = CliRunner().invoke(
        app,
        [
            "extract",
            "--model",
            "vit_micro",
            "--dataset",
            "demo",
            "--store",
            str(tmp_path / "s.zarr"),
            "--interpolation",
            "nope",
        ],
    )
    assert res.exit_code == 2 and "'nope' is not one of" in res.output
    assert all(f"'{name}'" in " ".join(res.output.split()) for name in INTERPOLATIONS)
    assert not (tmp_path / "s.zarr").exists()
    with pytest.raises(ValueError, match=r"unknown interpolation 'nope' \(--interpolation\); "
                       "choose one of"):  # fmt: skip
        ExtractConfig(model="vit_micro", dataset="demo", store="s", interpolation="nope")


def test_extract_clip_frames_bound(tmp_path: Path) -> None:
    store = str(tmp_path / "v.zarr")
    line = one_line_error("extract", "--model", "vivit_test", "--random-init", "--dataset",
                          "demo", "--store", store, "--frames", TOO_MANY)  # fmt: skip
    assert "--frames must be an integer >= 1 and <= 512 (a clip's frames are decoded" in line


def test_every_interpolation_is_one_timm_resizes_with() -> None:
    """The choices are timm's evaluation resize modes, all of them and no others."""
    from timm.data.transforms import str_to_interp_mode

    for name in INTERPOLATIONS:
        str_to_interp_mode(name)
    import timm.data.transforms as T

    assert set(INTERPOLATIONS) == set(T._str_to_torch_interpolation)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--rank", TOO_MANY], "--rank must be an integer <= 64 (the backbone's width D 32, "
         "token count T 17 or the default 64: beyond those it adds parameters, not capacity)"),
        (["--method", "lowrank_mlp", "--rank", "65"], "--rank must be an integer <= 64 (the "
         "backbone's width D 32 or the default 64"),
        (["--method", "transformer", "--hidden", str(10**7)], f"transformer would have "
         f"{4 * layer_params(32, 10**7):,} learned parameters, over the limit"),
        (["--method", "mist", "--gather", "last", "--edge-blocks", str(10**6)], "over the limit "
         "of 2,147,483,648 (2**31"),
        (["--workers", TOO_MANY], f"--workers must be an integer >= -1 and <= {max_workers()[0]}"),
        (["--batch-size", HUGE], "--batch-size must be an integer >= 1 and <= 65536"),
        (["--seed", HUGE], "--seed must be an integer >= 0 and <= 9223372036854775807 (it must "
         "fit in 64 bits)"),
    ],
)  # fmt: skip
def test_train_bounds(micro_store: str, tmp_path: Path, args: list[str], says: str) -> None:
    assert says in train(micro_store, tmp_path, *args)


def test_the_default_rank_runs_on_a_backbone_narrower_than_it(micro_store: str) -> None:
    """vit_micro is 32 wide: the default r 64 is allowed, 65 is not (above)."""
    from losa_cache.side import SideConfig

    assert SideConfig(num_layers=4, dim=32, tokens=17, num_classes=3, rank=64).rank == 64


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_train_device_cuda_without_a_gpu_says_so(micro_store: str, tmp_path: Path) -> None:
    line = one_line_error("train", "--store", micro_store, "--out", str(tmp_path / "run"),
                          "--steps", "1", "--device", "cuda")  # fmt: skip
    assert "--device cuda: no CUDA GPU is visible here" in line


def test_sweep_memory_budget_beyond_64_bits(micro_store: str, tmp_path: Path) -> None:
    line = one_line_error("sweep", "--store", micro_store, "--out", str(tmp_path / "sw"),
                          "--memory-budget", "1e400")  # fmt: skip
    assert "size '1e400' is too large" in line


def test_eval_workers_bound(micro_store: str, tmp_path: Path) -> None:
    from losa_cache.adapter import save_adapter
    from losa_cache.side import SideConfig, create_side
    from losa_cache.store import open_store

    store = open_store(micro_store)
    config = SideConfig(num_layers=4, dim=32, tokens=17, num_classes=9, rank=2, layers=[3])
    meta = {"fingerprint": store.fingerprint, "classes": store.classes(), "task": "position"}
    adapter = save_adapter(tmp_path / "a", create_side(config), config, meta)
    line = one_line_error("eval", "--adapter", str(adapter), "--store", micro_store,
                          "--workers", TOO_MANY)  # fmt: skip
    assert "--workers must be an integer >= 0 and <=" in line


def test_a_huge_label_in_a_list_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text(f"a.png 0\nb.png {HUGE}\n")
    line = extract(tmp_path, "--dataset", f"list:{tmp_path / 'list.txt'}")
    assert "list.txt:2: label 1000000000000000000000000000000 is over the largest label" in line
