"""``pip install .`` (not editable) into a fresh venv: the accuracy pipeline and every live
baseline import from the installed package (no sys.path tricks) and run one step."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "losa_cache", "cli", "pipelines")

SMOKE = """
import sys, losa_cache
assert losa_cache.__file__.startswith(sys.prefix), losa_cache.__file__
import losa_cache.pipelines.accuracy as acc
from losa_cache.baselines import BASELINES
from losa_cache.pipelines.baseline_protocol import run_baseline
from losa_cache.train import TrainConfig, train
assert callable(acc.run_live) and callable(run_baseline)
for m in BASELINES:
    r = train(TrainConfig(live=True, store=None, model="vit_micro", random_init=True,
                          dataset="demo", limit=8, steps=1, batch_size=4, workers=0,
                          device="cpu", method=m, rank=2, out=f"runs/{m}"), progress=False)
    assert r["complete"] and r["learned_params"] > 0, m
print("ok", len(BASELINES))
"""


def run(*cmd: str, **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600, **kw)


@pytest.mark.slow
def test_a_wheel_install_runs_the_pipeline_imports_and_every_baseline(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy: the build leaves build/ and egg-info in its tree
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, src / name)
    venv = tmp_path / "venv"
    # without pip: the venv uses the system pip and setuptools (a bundled old setuptools
    # cannot build a wheel offline)
    run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    run(
        str(python),
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--quiet",
        str(src),
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    work = tmp_path / "work"
    work.mkdir()
    out = run(str(python), "-c", SMOKE, cwd=work, env=env)
    assert out.stdout.strip() == "ok 5"
    cli = run(
        str(venv / "bin" / "losa-cache"),
        "plan",
        "--model",
        "vit_micro",
        "--method",
        "lora",
        "--no-measure",
        "--json",
        cwd=work,
        env=env,
    )
    assert '"kind": "live baseline"' in cli.stdout
