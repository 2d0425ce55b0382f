"""A method from an outside package: installed through the ``losa_cache.methods`` entry
point, it trains, sweeps, plans, evaluates and predicts with its own flag, and no file of
losa_cache/ knows it.

The package is a module plus a ``*.dist-info`` folder (what ``pip install`` writes) on a
temporary ``PYTHONPATH``; the commands run in a fresh interpreter, as a user's would, so
the method's option becomes a field of TrainConfig and SweepConfig when they are built.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

PLUGIN = '''
"""toy: a residual MLP of width --toy-width on the last block (a throwaway method)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from losa_cache.fields import check_fields, option
from losa_cache.side.base import SideNetwork
from losa_cache.side.registry import register_side


@dataclass(frozen=True)
class ToyOptions:
    toy_width: int = option(3, "toy: width of the residual MLP on b_L.", min=1)

    def __post_init__(self) -> None:
        check_fields(self)


@register_side("toy")
class ToySide(SideNetwork):
    options = ToyOptions
    sizes = ("toy_width",)

    def __init__(self, config):
        super().__init__(config)
        d, w = config.dim, config.toy_width
        self.mlp = nn.Sequential(nn.Linear(d, w), nn.GELU(), nn.Linear(w, d))

    @classmethod
    def count_learned_params(cls, config):
        return 2 * config.dim * config.toy_width + config.toy_width + config.dim

    @classmethod
    def blocks(cls, config):
        return (config.num_layers - 1,)

    def forward_features(self, features):
        x = self.block(features, self.config.num_layers - 1)
        return x + self.mlp(x)
'''

#: the commands, run in one fresh interpreter (one import of torch): each prints a line
SCRIPT = """
import json, sys
from typer.testing import CliRunner
from losa_cache.cli.main import app
store, out, image = sys.argv[1:4]
r = CliRunner()
def run(*args):
    res = r.invoke(app, list(args))
    assert res.exit_code == 0, (args, res.output)
    return res.stdout
common = ["--store", store, "--steps", "3", "--batch-size", "8", "--device", "cpu"]
print(json.dumps({
    "help": run("train", "--help"),
    "sweep_help": run("sweep", "--help"),
    "train": json.loads(run("train", *common, "--method", "toy", "--toy-width", "5",
                            "--out", out + "/train", "--json")),
    "sweep": json.loads(run("sweep", *common, "--method", "toy,linear", "--toy-width", "2,4",
                            "--out", out + "/sweep", "--speed-batches", "0", "--no-costs",
                            "--json")),
    "plan": json.loads(run("plan", "--model", "vit_micro", "--method", "toy", "--toy-width",
                           "6", "--no-measure", "--json")),
    "eval": json.loads(run("eval", "--adapter", out + "/train", "--store", store, "--split",
                           "test", "--json")),
    "predict": json.loads(run("predict", "--adapter", out + "/train", "--random-init",
                              image, "--json")),
}))
"""


def _install(site: Path) -> None:
    """What pip would leave: the module and its dist-info with the entry point."""
    (site / "toy_method.py").write_text(PLUGIN)
    info = site / "toy_method-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-method\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[losa_cache.methods]\ntoy = toy_method\n")


def test_an_outside_method_trains_sweeps_plans_evaluates_and_predicts(
    micro_store: str, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _install(site)
    image = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(image)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "COLUMNS": "80",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(SCRIPT),
            micro_store,
            str(tmp_path / "out"),
            str(image),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])

    # its option is a flag of train and sweep, with its one help text
    for text in (got["help"], got["sweep_help"]):
        flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())  # unwrapped at 80 columns
        assert re.search(r"--toy-width <int[,.]*> toy: width of the residual MLP on b_L\.", flat)
    # train: the option reached the network (the saved side config, the learned count)
    saved = json.loads((tmp_path / "out/train/adapter.json").read_text())["side_config"]
    assert (saved["method"], saved["toy_width"]) == ("toy", 5)
    dim = saved["dim"]
    assert got["train"]["learned_params"] == 2 * dim * 5 + 5 + dim
    # sweep: a run per width for toy, one linear probe (which ignores the option)
    runs = sorted(r["run"] for r in got["sweep"]["results"])
    assert len(runs) == 3 and sum(r.startswith("toy-") for r in runs) == 2, runs
    assert any("tw2" in r for r in runs) and any("tw4" in r for r in runs), runs
    # plan prices it without weights, with its own flag; eval equals the run's test
    # accuracy; predict runs
    assert got["plan"]["method_cost"]["learned_params"] == 2 * dim * 6 + 6 + dim
    assert got["eval"]["accuracy"] == got["train"]["test_acc"]
    assert len(got["predict"]) == 1 and got["predict"][0]["probs"]


def test_a_broken_plugin_is_named_and_left_out(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "broken_method.py").write_text("raise RuntimeError('boom')\n")
    info = site / "broken_method-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-method\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[losa_cache.methods]\nbroken = broken_method\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = "import losa_cache.train; from losa_cache.methods import list_methods as m; print(m())"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "'losa'" in proc.stdout and "broken" not in proc.stdout
    assert "method plugin 'broken' (broken_method) failed to load" in proc.stderr
    assert "RuntimeError: boom" in proc.stderr
