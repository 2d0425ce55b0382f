"""The `losa-cache` command line. Wiring only: every command calls the library.

The commands of :data:`LAZY` are loaded when run (or asked for their help): their options
are generated from config dataclasses that import torch or zarr, so ``losa-cache --help``
lists them by their short help without loading either.
"""

from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from losa_cache.cli import store_cmds
from losa_cache.cli.errors import top_level_errors

#: name -> (module, function, the short help ``--help`` lists: its docstring's first line)
LAZY: dict[str, tuple[str, str, str]] = {
    "train": ("losa_cache.cli.train_cmds", "train", "Train a LoSA side network (or the "
              "linear probe) from a store, then save an adapter."),
    "sweep": ("losa_cache.cli.sweep_cmds", "sweep", "Train the cross product of configs (or "
              "a --config list) in one pass over the data."),
    "report": ("losa_cache.cli.sweep_cmds", "report", "Plot accuracy against learned params, "
               "training memory, speed and inference GFLOPs."),
    "plan": ("losa_cache.cli.plan_cmds", "plan", "Store size per tap, backbone GMACs, "
             "extraction time and epoch reads before anything runs."),
    "predict": ("losa_cache.cli.predict_cmds", "predict", "Classify images with the live "
                "backbone + adapter; undecodable images are reported."),
    "eval": ("losa_cache.cli.predict_cmds", "evaluate", "Score an adapter on a store split's "
             "cached features: accuracy, loss, per class."),
    "demo": ("losa_cache.cli.demo_cmds", "demo", "Extract the embedded data set with the "
             "embedded ViT once, train the linear probe and LoSA from the store, compare them, "
             "and predict a few images with the adapter."),
    "info": ("losa_cache.cli.manage_cmds", "info", "Images, splits, layers, tasks, "
             "fingerprint, progress, size and compression."),
    "subset": ("losa_cache.cli.manage_cmds", "subset", "Copy part of a store (no backbone "
               "run): same fingerprint, checksummed, resumable."),
    "verify": ("losa_cache.cli.manage_cmds", "verify", "Re-read every finished shard and "
               "compare it with the checksums recorded at write time."),
    "export": ("losa_cache.cli.manage_cmds", "export", "Copy a whole store (every array and "
               "attribute) into one HDF5 file."),
    "import": ("losa_cache.cli.manage_cmds", "import_store", "Recreate a store from an HDF5 "
               "export, bit-exact (same chunks, codecs, attributes)."),
    "tasks": ("losa_cache.cli.manage_cmds", "tasks_app", "Labellings of one store: many "
              "tasks, one extraction."),
}  # fmt: skip
#: The order ``--help`` lists the commands in.
ORDER = ("demo", "models", "plan", "extract", "info", "subset", "verify", "export", "import",
         "tasks", "train", "sweep", "report", "predict", "eval")  # fmt: skip


def load_command(name: str) -> Any:
    """The click command of a LAZY one (importing its module); a Typer: its group."""
    module, attr, _ = LAZY[name]
    found = getattr(importlib.import_module(module), attr)
    if isinstance(found, typer.Typer):
        group = typer.main.get_group(found)
        group.name = name
        return group
    one = typer.Typer(add_completion=False)  # completion is the app's, not a command's
    one.command(name)(found)
    return typer.main.get_command(one)


class LazyGroup(TyperGroup):
    """The command tree: loads a LAZY command on first use (while help lists the commands,
    a stub stands in), and runs every command, sub-commands too, under the one error
    mapper."""

    listing = False

    def invoke(self, ctx: Any) -> Any:
        args = [*getattr(ctx, "_protected_args", ()), *ctx.args]  # the command's own line
        with top_level_errors(args):
            return super().invoke(ctx)

    def list_commands(self, ctx: Any) -> list[str]:
        return [n for n in ORDER if n in self.commands or n in LAZY]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in LAZY and cmd_name not in self.commands:
            if self.listing:
                short = LAZY[cmd_name][2]
                return TyperCommand(name=cmd_name, help=short, short_help=short)
            self.commands[cmd_name] = load_command(cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self.listing = False


app = typer.Typer(
    name="losa-cache",
    cls=LazyGroup,
    help="Extract a frozen ViT once into a Zarr feature store, then train many LoSA side "
    "networks from it.\n\nStart with: losa-cache demo",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"losa-cache {version('losa-cache')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """The app's own options (--version); its help is the Typer's."""


app.command()(store_cmds.models)
app.command()(store_cmds.extract)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
