"""The `losa-cache` command line. Wiring only: every command calls the library."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from losa_cache.cli import (
    cluster_cmds,
    demo_cmds,
    predict_cmds,
    store_cmds,
    sweep_cmds,
    train_cmds,
)
from losa_cache.cli.errors import top_level_errors


class MappedGroup(TyperGroup):
    """The command tree; every command (sub-commands too) runs under the one error mapper."""

    def invoke(self, ctx: Any) -> Any:
        args = [*getattr(ctx, "_protected_args", ()), *ctx.args]  # the command's own line
        with top_level_errors(args):
            return super().invoke(ctx)


app = typer.Typer(
    cls=MappedGroup,
    name="losa-cache",
    help="Extract a frozen ViT once into a Zarr feature store, then train many LoSA side "
    "networks from it.\n\nStart with: losa-cache demo",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(demo_cmds.demo)
app.command()(store_cmds.models)
app.command()(store_cmds.plan)
app.command()(store_cmds.extract)
app.command()(store_cmds.info)
app.command()(store_cmds.subset)
app.command()(cluster_cmds.verify)
app.command()(cluster_cmds.export)
app.command("import")(cluster_cmds.import_store)
app.add_typer(store_cmds.tasks_app, name="tasks")
app.command("train")(train_cmds.train)
app.command("sweep")(sweep_cmds.sweep)
app.command("report")(sweep_cmds.report)
app.command("predict")(predict_cmds.predict)
app.command("eval")(predict_cmds.evaluate)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
