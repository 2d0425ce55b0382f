"""A run's output folder: never the user's files, never through a symlink, every rewrite
atomic, resume only from this run's own intact checkpoint (issue 26)."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import losa_cache.outdir as O
from losa_cache.cli.main import app
from losa_cache.outdir import MARKER, OutdirError, OutdirInUse, OutdirLock, OutputWriteError
from losa_cache.train import NonFiniteLossError, TrainConfig, train
from losa_cache.train import engine as E
from losa_cache.train.checkpoint import CheckpointError


def records(out: str | Path) -> list[dict]:
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def curve(out: str | Path) -> list[tuple]:
    """The learning curve without timings: what a resumed run must equal."""
    return [(r["kind"], r["step"], r.get("loss"), r.get("acc")) for r in records(out)]


def listing(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


# ------------------------------------------------------------------------------ ownership


@pytest.mark.parametrize("name", ["metrics.json", "adapter.json", "metrics.jsonl"])
def test_a_folder_holding_the_users_files_is_refused(make_cfg, name: str) -> None:
    cfg = make_cfg("mine")
    Path(cfg.out).mkdir()
    (Path(cfg.out) / name).write_text("my own\n")
    with pytest.raises(OutdirError, match=f"did not write \\({name}\\).*new or empty --out"):
        train(cfg, progress=False)
    assert listing(Path(cfg.out)) == {name: b"my own\n"}


def test_symlinks_inside_out_are_refused_and_their_targets_untouched(
    make_cfg, tmp_path: Path
) -> None:
    cfg = make_cfg("run", stop_at=2)
    train(cfg, progress=False)
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text("keep me\n")
    log = Path(cfg.out) / "metrics.jsonl"
    log.unlink()
    log.symlink_to(elsewhere)
    with pytest.raises(OutdirError, match=r"holds symlinks \(metrics\.jsonl\)"):
        train(make_cfg("run", resume=True), progress=False)
    assert elsewhere.read_text() == "keep me\n" and log.is_symlink()


def test_a_run_of_an_earlier_version_is_adopted(make_cfg) -> None:
    """A folder without the marker but with this tool's checkpoint and files only."""
    cfg = make_cfg("old", stop_at=2)
    train(cfg, progress=False)
    (Path(cfg.out) / MARKER).unlink()
    assert train(make_cfg("old", resume=True), progress=False)["complete"]


def test_a_member_folder_of_a_running_sweep_is_locked(make_cfg, tmp_path: Path) -> None:
    member = tmp_path / "sweep" / "runs" / "full" / "a"
    in_use = r"inside output folder .*sweep, which is in use by sweep pid"
    with OutdirLock(tmp_path / "sweep", "sweep"), pytest.raises(OutdirInUse, match=in_use):
        train(make_cfg(str(member), resume=True), progress=False)
    assert not member.exists()


# ------------------------------------------------------------------------------ rewrites


def test_a_kill_inside_the_log_rewrite_keeps_the_old_log(make_cfg, monkeypatch) -> None:
    straight = make_cfg("straight", steps=6, eval_every=3)
    train(straight, progress=False)
    cfg = make_cfg("split", steps=6, eval_every=3, stop_at=4, checkpoint_every=2)
    train(cfg, progress=False)
    before = (Path(cfg.out) / "metrics.jsonl").read_bytes()
    real = O.os.replace

    def killed(src: object, dst: object) -> None:
        if Path(str(dst)).name == "metrics.jsonl":
            raise KeyboardInterrupt  # the kill lands after the write aside, before the rename
        real(src, dst)

    monkeypatch.setattr(O.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg("split", steps=6, eval_every=3, resume=True), progress=False)
    monkeypatch.undo()
    assert (Path(cfg.out) / "metrics.jsonl").read_bytes() == before
    assert [p.name for p in Path(cfg.out).iterdir() if ".tmp-" in p.name] == []
    train(make_cfg("split", steps=6, eval_every=3, resume=True), progress=False)
    assert curve(cfg.out) == curve(straight.out)


def test_a_log_line_cut_short_by_a_kill_is_dropped_on_resume(make_cfg) -> None:
    straight = make_cfg("straight", steps=6, eval_every=3)
    train(straight, progress=False)
    cfg = make_cfg("cut", steps=6, eval_every=3, stop_at=3)
    train(cfg, progress=False)
    with (Path(cfg.out) / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "step": 4, "lo')  # the append a kill interrupted
    train(make_cfg("cut", steps=6, eval_every=3, resume=True), progress=False)
    assert curve(cfg.out) == curve(straight.out)


def test_resuming_a_finished_run_adds_no_test_record(make_cfg) -> None:
    cfg = make_cfg("done", steps=4, eval_every=2)
    train(cfg, progress=False)
    first = curve(cfg.out)
    for _ in range(2):
        train(make_cfg("done", steps=4, eval_every=2, resume=True), progress=False)
    assert curve(cfg.out) == first
    assert [r["kind"] for r in records(cfg.out)].count("test") == 1


def test_leftovers_of_killed_writes_are_removed_on_the_next_run(make_cfg) -> None:
    cfg = make_cfg("left", stop_at=2)
    train(cfg, progress=False)
    litter = [Path(cfg.out) / f".{n}.tmp-999999" for n in ("checkpoint.pt", "adapter.safetensors")]
    for p in litter:
        p.write_bytes(b"half")
    train(make_cfg("left", resume=True), progress=False)
    assert not any(p.exists() for p in litter)


# ------------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize(
    ("key", "value"), [("step", 10**9), ("step", -3), ("position", 10**9), ("position", -3)]
)
def test_a_checkpoint_out_of_range_is_refused_naming_it(make_cfg, key: str, value: int) -> None:
    cfg = make_cfg("edited", stop_at=2)
    train(cfg, progress=False)
    path = Path(cfg.out) / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state[key] = value
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=f"{path}.*cannot have reached"):
        train(make_cfg("edited", resume=True), progress=False)


def test_a_full_disk_at_the_checkpoint_is_one_error_and_resume_is_exact(
    make_cfg, monkeypatch
) -> None:
    straight = make_cfg("straight", steps=6, eval_every=3)
    train(straight, progress=False)
    cfg = make_cfg("full", steps=6, eval_every=3, checkpoint_every=2)
    real, calls = torch.save, {"n": 0}

    def fills_up(obj: object, f: object, *a: object, **k: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # torch's own wording, which hides the OSError
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . PytorchStreamWriter "
                "failed writing file data/0: file write failed"
            )
        real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", fills_up)
    monkeypatch.setattr(O, "_nearly_full", lambda path: True)
    with pytest.raises(OutputWriteError) as err:
        train(cfg, progress=False)
    msg = str(err.value)
    assert f"cannot write {Path(cfg.out) / 'checkpoint.pt'}" in msg and "--resume" in msg
    assert err.value.errno == errno.ENOSPC and "\n" not in msg
    assert [p.name for p in Path(cfg.out).iterdir() if ".tmp-" in p.name] == []
    monkeypatch.undo()
    train(make_cfg("full", steps=6, eval_every=3, checkpoint_every=2, resume=True), progress=False)
    assert curve(cfg.out) == curve(straight.out)


def test_cli_full_disk_and_read_only_out_are_one_line(
    micro_store: str, tmp_path: Path, monkeypatch
) -> None:
    real = os.open

    def read_only(path: object, flags: int, *a: object, **k: object) -> int:
        if str(path).startswith(str(tmp_path / "ro")) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, flags, *a, **k)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(O.os, "open", read_only)
    got = CliRunner().invoke(
        app,
        [
            "train",
            "--store",
            micro_store,
            "--out",
            str(tmp_path / "ro"),
            "--steps",
            "2",
            "--device",
            "cpu",
        ],
    )
    assert got.exit_code == 2, got.output
    assert "read-only" in got.output and str(tmp_path / "ro") in got.output
    assert "Traceback" not in got.output


# ------------------------------------------------------------------------------ inputs


def test_non_finite_features_are_named_not_the_lr(make_cfg, monkeypatch) -> None:
    real, once = E.to_device, []

    def poisoned(feats: dict, device: torch.device) -> dict:
        feats = real(feats, device)
        if not once:  # the first training batch: one row of the deepest block is NaN
            once.append(True)
            key = max(k for k in feats if isinstance(k, int))
            feats[key] = feats[key].clone()
            feats[key][1] = float("nan")
        return feats

    monkeypatch.setattr(E, "to_device", poisoned)
    with pytest.raises(NonFiniteLossError) as err:
        train(make_cfg("nanfeat", method="linear", layers="3"), progress=False)
    msg = str(err.value)
    assert "input features are not finite" in msg
    assert re.search(r"block \d+ at store rows \[\d+\] \(1 rows of this batch\)", msg), msg
    assert "lower --lr" not in msg


# ------------------------------------------------------------------------------ MIST


def test_mist_resumes_when_only_some_candidates_checkpointed(
    tap_stores: dict, tmp_path: Path
) -> None:
    def cfg(out: str, **kw: object) -> TrainConfig:
        return TrainConfig(
            store=tap_stores["taps"],
            out=str(tmp_path / out),
            method="mist",
            width=8,
            heads=2,
            edge_blocks=1,
            k_candidates="2,4",
            batch_size=16,
            steps=4,
            eval_every=2,
            workers=1,
            device="cpu",
            amp="fp32",
            **kw,
        )

    straight = train(cfg("straight"), progress=False)
    train(cfg("cut", stop_at=2), progress=False)
    k4 = tmp_path / "cut" / "k" / "k4"
    for p in k4.iterdir():  # killed after k2's first checkpoint, before k4's
        if p.name != MARKER:
            p.unlink()
    with pytest.raises(ValueError, match="pass --resume"):
        train(cfg("cut"), progress=False)
    resumed = train(cfg("cut", resume=True), progress=False)
    assert resumed["k_choice"]["candidates"] == straight["k_choice"]["candidates"]
    for k in ("k2", "k4"):
        assert curve(tmp_path / "cut" / "k" / k) == curve(tmp_path / "straight" / "k" / k), k


def _mist_candidates(store: str, out: Path, **kw: object) -> TrainConfig:
    return TrainConfig(store=store, out=str(out), method="mist", width=8, heads=2,
                       edge_blocks=1, k_candidates="2,4", batch_size=16, steps=4,
                       eval_every=2, workers=1, device="cpu", amp="fp32", **kw)  # fmt: skip


def test_mist_candidates_each_get_the_shared_notes(tap_stores: dict, tmp_path: Path) -> None:
    """The feed is shared by every k candidate: each candidate's metrics say so (the loop
    variable used to leave the cache note to the last candidate only)."""
    train(_mist_candidates(tap_stores["taps"], tmp_path / "m"), progress=False)
    for k in ("k2", "k4"):
        m = json.loads((tmp_path / "m" / "k" / k / "metrics.json").read_text())
        assert [n for n in m["notes"] if n.startswith("cache: ")], (k, m["notes"])
        assert m["feed"]["buffer_rows"] > 0


def test_mist_divergence_names_every_candidate(tap_stores: dict, tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError) as err:
        train(_mist_candidates(tap_stores["taps"], tmp_path / "d", lr=1e30), progress=False)
    msg = str(err.value)
    for k in ("k2", "k4"):
        assert str(tmp_path / "d" / "k" / k) + ": loss became" in msg, msg
