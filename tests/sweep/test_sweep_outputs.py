"""A sweep's folder: never the user's files, never through a symlink, members resume
only from their own checkpoints, damaged records named (issue 26)."""

from __future__ import annotations

from pathlib import Path

import pytest

from losa_cache.outdir import OutdirError
from losa_cache.sweep import SweepConfig, expand_runs, run_sweep

ONE = {"method": ["linear"], "layers": ["all"], "lr": [0.05, 0.1]}


def tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.mark.parametrize("name", ["results.csv", "results.json"])
def test_a_folder_holding_the_users_results_is_refused(make_sweep, name: str) -> None:
    cfg = make_sweep(**ONE)
    Path(cfg.out).mkdir()
    (Path(cfg.out) / name).write_text("mine\n")
    with pytest.raises(OutdirError, match=f"did not write \\({name}\\)"):
        run_sweep(cfg, progress=False)
    assert tree(Path(cfg.out)) == {name: b"mine\n"}


def test_best_as_a_symlink_is_refused_and_its_target_untouched(make_sweep, tmp_path) -> None:
    cfg = make_sweep(**ONE)
    run_sweep(cfg, progress=False)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "full" / "peft").mkdir(parents=True)
    (elsewhere / "full" / "adapter.json").write_text("{}\n")
    (elsewhere / "full" / "peft" / "w.bin").write_bytes(b"w")
    before = tree(elsewhere)
    best = Path(cfg.out) / "best"
    for p in sorted(best.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    best.rmdir()
    best.symlink_to(elsewhere)
    with pytest.raises(OutdirError, match=r"holds symlinks \(best\)"):
        run_sweep(make_sweep(resume=True, **ONE), progress=False)
    assert tree(elsewhere) == before


def test_a_checkpoint_swapped_between_members_is_refused(make_sweep) -> None:
    cfg = make_sweep(stop_at=1, **ONE)
    run_sweep(cfg, progress=False)
    a, b = sorted(Path(cfg.out).glob("runs/full/*/checkpoint.pt"))
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    with pytest.raises(
        ValueError,
        match=r"checkpoint\.pt was written by a run with different "
        r"\['lr'\]",
    ):
        run_sweep(make_sweep(resume=True, **ONE), progress=False)


def test_a_truncated_sweep_json_is_named(make_sweep) -> None:
    cfg = make_sweep(stop_at=1, **ONE)
    run_sweep(cfg, progress=False)
    doc = Path(cfg.out) / "sweep.json"
    doc.write_bytes(doc.read_bytes()[:100])
    with pytest.raises(OutdirError, match=f"{doc} is damaged or incomplete.*new --out"):
        run_sweep(make_sweep(resume=True, **ONE), progress=False)


def test_a_truncated_member_metrics_json_is_named(make_sweep) -> None:
    cfg = make_sweep(**ONE)
    run_sweep(cfg, progress=False)
    metrics = sorted(Path(cfg.out).glob("runs/full/*/metrics.json"))[0]
    metrics.write_text('{"status": "trai')
    with pytest.raises(OutdirError, match=f"{metrics} is damaged.*rerun with --resume"):
        run_sweep(make_sweep(resume=True, **ONE), progress=False)


def test_a_config_entry_with_an_empty_list_is_an_error_naming_the_key() -> None:
    cfg = SweepConfig(store="s.zarr", out="o", configs=[{"method": "losa", "rank": []}])
    with pytest.raises(ValueError, match=r"no values for \['rank'\]"):
        expand_runs(cfg, depth=4, store_layers=[0, 1, 2, 3], default_task="t")
