"""The `plan` command, wiring only: a PlanConfig from the flags, the plan, its text or JSON."""

from __future__ import annotations

from typing import Any

import typer

from losa_cache.cli.common import emit_json, user_errors
from losa_cache.cli.options import build, command, config_params, output_params
from losa_cache.plan import PlanConfig, plan_text, run_plan

__all__ = ["plan"]

DOC = """Store size per tap, backbone GMACs, extraction time and epoch reads before anything runs.

    Example: losa-cache plan --model vivit_e --dataset kinetics400 --frames 32

    Example: losa-cache plan --model vit_g --dataset inat2018 --layers all --dtype fp16

    Example: losa-cache plan --model vit_g --dataset inat2018 --budget 500GB
    """


def _plan(json_out: bool, **values: Any) -> None:
    with user_errors():
        (cfg,) = build(values, PlanConfig)
        result = run_plan(cfg)
    if json_out:
        return emit_json(result)
    typer.echo(plan_text(result))


plan = command(_plan, [*config_params(PlanConfig), *output_params(
    "Print the plan as JSON.", storage=False, quiet=False)], DOC)  # fmt: skip
