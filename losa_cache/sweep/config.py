"""``SweepConfig`` and its expansion into runs: one ``TrainConfig`` per (config, task).

A sweep is either a grid (``methods x ranks x layers x lrs`` for every task) or an
explicit list of entries (``--config FILE.json``: a JSON list of objects whose values
may themselves be lists, each entry expanding to its own cross product). Every run
is a plain :class:`~losa_cache.train.TrainConfig`: ``train(run.train)`` trains the same
run alone, which is what the sweep's equivalence test does.

Duplicates are dropped: ``linear`` ignores ``rank`` and ``layers``, and layer specs
that resolve to the same blocks (``evenly:4`` and ``all`` on a 4-block backbone) are
one run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, make_dataclass, replace
from pathlib import Path
from typing import Any

from losa_cache.data.opener import MAX_TEXT_BYTES, FileRefused, read_regular
from losa_cache.extract_config import DaskConfig
from losa_cache.fields import check_fields, inherit, metadata, option
from losa_cache.methods import get_method, list_methods
from losa_cache.outdir import folder_name, folder_names
from losa_cache.side import parse_layers
from losa_cache.side.config import VERSION_KEY, library_version
from losa_cache.train import TrainConfig
from losa_cache.train.batching import BATCHING
from losa_cache.train.config import DEFAULT_LR

__all__ = [
    "BATCHING",
    "ENTRY_KEYS",
    "RunSpec",
    "SweepConfig",
    "expand_runs",
    "load_entries",
    "method_uses",
    "slug",
]

#: TrainConfig fields a sweep does not pass to its runs: each run has its own folder, and
#: --resume resumes the sweep (its runs resume from their checkpoints).
NOT_SHARED = frozenset({"out", "resume"})
#: the settings some methods read (their options, rank, layers ...): a run of a method
#: that ignores one keeps the default (one run, not one per value)
METHOD_FIELDS = tuple(sorted({n for m in list_methods() for n in get_method(m).uses}))
#: the side networks' settings (a run id names them when not at their defaults)
SIDE_FIELDS = tuple(sorted({n for m in list_methods(live=False) for n in get_method(m).uses}))
#: TrainConfig fields a sweep varies: each a list (one run per value, the grid is their
#: cross product), on the command line and in a --config entry; the rest are sweep-wide.
ENTRY_KEYS = tuple(
    dict.fromkeys(
        (
            "task",
            "method",
            "rank",
            "layers",
            "lr",
            "optimizer",
            "momentum",
            "weight_decay",
            "label_smoothing",
            "warmup_steps",
            "seed",
            "batch_size",
            "steps",
            "epochs",
            "pool",
            "shuffle_buffer",
            *METHOD_FIELDS,
        )
    )
)
#: the grid without --config or --method: LoSA and the linear probe
DEFAULT_METHODS = ("losa", "linear")
#: what a sweep-wide field means in a sweep, after the run's help
MORE_HELP = {
    "log": "Each run logs into its own folder, so TensorBoard compares them.",
    "val_split": "It selects the best config.",
    "live": "One backbone pass per batch serves every config.",
    "method": "Default: losa,linear. Live baselines each run their own backbone forward "
    "and backward, so they train one after another (a group each).",
}

_f = option  # a field with help, range and choices (losa_cache.fields)


def parse_layer_specs(text: str) -> list[str]:
    """'evenly:1,evenly:4,all' -> 3 specs; runs of integers stay one explicit list
    ('3,6,-1' is one spec); ';' separates specs when several explicit lists are needed."""
    if ";" in text:
        return [p.strip() for p in text.split(";") if p.strip()]
    specs: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if (
            part.lstrip("-").isdigit()
            and specs
            and specs[-1].replace(",", "").replace("-", "").isdigit()
        ):
            specs[-1] += f",{part}"
        else:
            specs.append(part)
    return specs


#: values that hold commas themselves: how a list of them is split
LIST_PARSERS: dict[str, Callable[[str], list[str]]] = {
    "layers": parse_layer_specs,
    "lora_targets": lambda t: [p.strip() for p in t.split(";") if p.strip()],
    "k_candidates": lambda t: [p.strip() for p in t.split(";") if p.strip()],
}


@dataclass
class SweepConfig:
    """Many side networks trained from one store (or one live backbone), one pass per epoch.

    Its own fields are below; every TrainConfig field is added (:func:`_sweep_fields`):
    those of :data:`ENTRY_KEYS` as lists (one run per value), the others sweep-wide."""

    store: str = _f("", "Feature store path or URL (not needed with --live).")
    out: str = _f(
        "",
        "Sweep folder: results, adapters, every run's folder (default: a new "
        "runs/sweep-<date>-<time>).",
    )
    configs: list[dict[str, Any]] | None = field(
        default=None,
        metadata=metadata(
            "A JSON file: a list of config objects (any of the run settings, values may be "
            "lists: expanded); the flags' values are their defaults.",
            cli="config",
        ),
    )
    batching: str = _f(
        "auto",
        "Same-shape models: auto (loop on CPU, the faster of both on CUDA, timed) | loop | vmap.",
        choices=BATCHING,
        panel="Performance",
    )
    memory_budget: int | None = _f(
        None,
        "Memory the models of one group may use, e.g. 4GB (default: a share of free memory;"
        " on a cluster, of the tightest worker's, shared with workers on its host or GPU).",
        min=0,
        panel="Performance",
        unit="bytes",
    )
    speed_batches: int = _f(
        50, "Batches timed per config for img/s (paper: 50; 0 skips).", min=0, panel="Costs"
    )
    live_metrics: bool = _f(
        True,
        "Also measure the paper's setting: training memory (batch "
        "1) and img/s with the backbone forward, inference memory "
        "and img/s at batch 1 (a store sweep builds the store's "
        "backbone with random weights for it).",
        panel="Costs",
    )
    costs: bool = _f(
        True,
        "Measure every config's costs after training (img/s over "
        "--speed-batches steps, memory and inference at batch 1; it says "
        "up front what it will time); --no-costs skips them (their "
        "columns stay empty).",
        panel="Costs",
    )
    resume: bool = _f(False, "Continue the sweep in --out.")
    # a Dask cluster trains the groups (losa_cache.sweep.cluster): extract's flags, meanings
    cluster: str | None = inherit(DaskConfig, "cluster")
    scheduler: str | None = inherit(DaskConfig, "scheduler")

    def __post_init__(self) -> None:
        if not self.store and not self.live:
            raise ValueError(
                "give --store (the feature store to sweep over), or --live with "
                "--model and --dataset"
            )
        if self.live and not (self.model and self.dataset):
            raise ValueError("--live needs --model and --dataset (the backbone runs on images)")
        for name in ENTRY_KEYS:  # one value (Python callers): a list of it
            value = getattr(self, name)
            if value is not None and not isinstance(value, list | tuple):
                setattr(self, name, [value])
            elif isinstance(value, tuple):
                setattr(self, name, list(value))
            if getattr(self, name) == []:
                raise ValueError(f"--{name.replace('_', '-')} needs at least one value")
        if self.steps and self.epochs:
            raise ValueError("give --steps or --epochs, not both")
        check_fields(self)
        live_only = [m for m in self.method or () if get_method(m).live]
        if live_only and not self.live:
            raise ValueError(
                f"--method {','.join(live_only)} trains the backbone on images: "
                "add --live (with --model and --dataset)"
            )

    def grid(self) -> dict[str, list[Any]]:
        """The varied settings the flags give (the default methods without --config)."""
        default = {"method": list(DEFAULT_METHODS)} if self.configs is None else {}
        values = {n: getattr(self, n) for n in ENTRY_KEYS}
        return {
            n: v if v is not None else default[n]
            for n, v in values.items()
            if v is not None or n in default
        }

    def to_dict(self) -> dict[str, Any]:
        return dict(sorted({**asdict(self), VERSION_KEY: library_version()}.items()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepConfig:
        data = {OLD_NAMES.get(k, k): v for k, v in data.items() if k != VERSION_KEY}
        for name in set(data) & set(ENTRY_KEYS):  # an older sweep.json: one value
            if data[name] is not None and not isinstance(data[name], list):
                data[name] = [data[name]]
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SweepConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)


#: the grid's names before every run setting became a list (sweep.json of older sweeps)
OLD_NAMES = {"tasks": "task", "methods": "method", "ranks": "rank", "lrs": "lr"}


def _sweep_fields(base: type) -> type:
    """``base`` + every TrainConfig field but :data:`NOT_SHARED` and its own: a list of
    the run's values for :data:`ENTRY_KEYS`, else the run's field, sweep-wide."""
    hints = typing.get_type_hints(TrainConfig)
    own = {f.name for f in fields(base)}
    spec = []
    for f in fields(TrainConfig):
        if f.name in own or f.name in NOT_SHARED:
            continue
        more = MORE_HELP.get(f.name)
        meta = {
            **f.metadata,
            "help": f"{f.metadata['help']} {more}".strip() if more else f.metadata["help"],
        }
        if f.name in ENTRY_KEYS:  # the sweep's --help says how lists are written
            meta["parse"] = LIST_PARSERS.get(f.name)
            spec.append((f.name, list[hints[f.name]] | None, field(default=None, metadata=meta)))
        else:
            spec.append((f.name, hints[f.name], field(default=f.default, metadata=meta)))
    cls = make_dataclass(base.__name__, spec, bases=(base,))
    cls.__module__, cls.__qualname__, cls.__doc__ = base.__module__, base.__qualname__, base.__doc__
    return cls


SweepConfig = _sweep_fields(SweepConfig)  # type: ignore[misc]

#: SweepConfig fields every run's TrainConfig copies: the sweep-wide ones
SHARED_KEYS = tuple(
    f.name
    for f in fields(SweepConfig)
    if f.name in TrainConfig.__dataclass_fields__ and f.name not in NOT_SHARED | set(ENTRY_KEYS)
)


@dataclass(frozen=True)
class RunSpec:
    """One run of the sweep: an id, its task, and the TrainConfig it would use alone."""

    id: str
    task: str
    train: TrainConfig
    layers_label: str  # the spec as the user wrote it ("-" for linear)

    @property
    def key(self) -> str:
        return f"{self.task}/{self.id}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task,
            "layers_label": self.layers_label,
            "train": self.train.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        return cls(
            data["id"], data["task"], TrainConfig.from_dict(data["train"]), data["layers_label"]
        )


def method_uses(method: str) -> tuple[str, ...]:
    """The TrainConfig fields ``method`` (a side network or a live baseline) reads."""
    return get_method(method).uses


def load_entries(path: str | Path) -> list[dict[str, Any]]:
    """A JSON list of config entries (or ``{"configs": [...]}``), keys checked."""
    p = Path(path)
    try:  # a regular file only: a FIFO or /dev/zero is named, never read
        data = json.loads(read_regular(p, MAX_TEXT_BYTES, "--config file"))
    except FileRefused as e:
        raise ValueError(f"--config: {e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--config {p} is not valid JSON: {e}") from None
    data = data.get("configs") if isinstance(data, dict) else data
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data) or not data:
        raise ValueError(
            f"--config {p}: expected a non-empty JSON list of objects, e.g. "
            '[{"method": "losa", "rank": [8, 64], "lr": 0.05}]'
        )
    for entry in data:
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if unknown:
            raise ValueError(
                f"--config {p}: unknown keys {unknown}; an entry may set "
                f"{list(ENTRY_KEYS)} (store, cache, device... are sweep-wide)"
            )
    return data


# ---------------------------------------------------------------------------- expansion


def expand_runs(
    cfg: SweepConfig, depth: int, store_layers: list[int], default_task: str
) -> list[RunSpec]:
    """Every (entry x task) as a RunSpec, duplicates dropped, ids unique."""
    runs: dict[str, RunSpec] = {}
    seen: set[str] = set()
    for entry in (e for raw in _entries(cfg, default_task) for e in _with_k(raw, depth)):
        spec = _run(cfg, entry, depth, store_layers)
        key = _dedupe_key(spec, depth, store_layers)
        if key in seen:
            continue
        seen.add(key)
        rid = spec.id
        if f"{spec.task}/{rid}" in runs:
            rid = f"{rid}-{hashlib.sha1(key.encode()).hexdigest()[:6]}"
        spec = replace(spec, id=rid, train=replace(spec.train, out=_run_dir(cfg, spec.task, rid)))
        runs[spec.key] = spec
    folder_names(r.task for r in runs.values())  # refuse tasks that would share runs/<task>
    if not runs:
        raise ValueError(
            "the sweep has no runs: give at least one method, rank, layer spec, "
            "lr and task (or config entries in --config)"
        )
    return list(runs.values())


def _entries(cfg: SweepConfig, default_task: str) -> list[dict[str, Any]]:
    """The flags' grid, or each --config entry over the flags' values, expanded."""
    grid = {"task": [default_task], **cfg.grid()}
    entries = (
        [{**_without_length(grid, e), **e} for e in cfg.configs]
        if cfg.configs is not None
        else [grid]
    )
    return [e for entry in entries for e in _product(entry)]


def _without_length(grid: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """An entry that sets the run's length (steps or epochs) replaces the flags'."""
    if "steps" in entry or "epochs" in entry:
        return {k: v for k, v in grid.items() if k not in ("steps", "epochs")}
    return grid


def _with_k(entry: dict[str, Any], depth: int) -> list[dict[str, Any]]:
    """The runs the entry's method expands it to (MIST without ``gather_k``: a run per
    candidate k, as ``train`` alone trains and chooses among on val; the sweep keeps
    them all)."""
    return get_method(entry.get("method", TrainConfig.method)).runs(entry, depth)


def _product(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """An entry whose values may be lists -> its cross product (an empty list would
    silently drop the entry: refused, naming the key)."""
    empty = [k for k, v in entry.items() if v == []]
    if empty:
        raise ValueError(
            f"--config: the entry {json.dumps(entry)} gives no values for "
            f"{empty}, so it expands to no run; give at least one value (or "
            "leave the key out for the default)"
        )
    keys = list(entry)
    values = [v if isinstance(v, list) else [v] for v in entry.values()]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def _run(cfg: SweepConfig, entry: dict[str, Any], depth: int, store_layers: list[int]) -> RunSpec:
    base = {k: getattr(cfg, k) for k in SHARED_KEYS}
    base["store"] = cfg.store or None
    merged = {**base, **entry}
    label = str(merged.get("layers", "store"))
    uses = method_uses(merged.get("method", TrainConfig.method))
    for name in set(METHOD_FIELDS) - set(uses):  # a field the method ignores: one run
        merged[name] = getattr(TrainConfig, name)
    if "layers" not in uses:
        label = "-"
    train = TrainConfig(**merged)
    return RunSpec(_run_id(train, label, cfg), train.task or "", train, label)


def _run_id(t: TrainConfig, label: str, cfg: SweepConfig) -> str:
    """Readable and, for grids, unique: method, rank, layers, lr, and what else differs."""
    lr = "default" if t.lr is None else f"{t.lr:g}"
    uses = method_uses(t.method)
    parts = (
        [t.method]
        + ([f"r{t.rank}"] if "rank" in uses else [])
        + ([slug(label)] if "layers" in uses else [])
        + ([f"h{t.hidden}"] if "hidden" in uses else [])
    )
    parts += [
        _option_part(n, getattr(t, n))
        for n in uses  # mist's w32, gk8, mlp
        if n in SIDE_FIELDS
        and n not in ("rank", "layers", "hidden")
        and getattr(t, n) != getattr(TrainConfig, n)
    ]
    parts.append(f"lr{lr}")
    if t.optimizer != "sgd":
        parts.append(t.optimizer)
    if t.seed != _wide(cfg, "seed"):
        parts.append(f"s{t.seed}")
    if t.batch_size != _wide(cfg, "batch_size"):
        parts.append(f"b{t.batch_size}")
    return "-".join(parts)


def _wide(cfg: SweepConfig, name: str) -> Any:
    """A varied setting's sweep-wide value: the flag's one value, else the run's default."""
    values = getattr(cfg, name)
    return values[0] if values and len(values) == 1 else getattr(TrainConfig, name)


def _option_part(name: str, value: Any) -> str:
    """A method option in a run id: a choice as itself, a number after its initials."""
    if isinstance(value, str):
        return slug(value)
    return "".join(w[0] for w in name.split("_")) + str(value)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text.replace(":", "")).strip("_") or "x"


def _dedupe_key(spec: RunSpec, depth: int, store_layers: list[int]) -> str:
    maths = spec.train.maths()
    if "layers" in method_uses(spec.train.method):
        text = (
            ",".join(map(str, store_layers)) if spec.train.layers == "store" else spec.train.layers
        )
        maths["layers"] = list(parse_layers(text, depth))
    lr = maths.pop("lr")
    maths["lr"] = lr if lr is not None else DEFAULT_LR[maths["optimizer"]]
    maths.pop("store", None)
    return json.dumps(maths, sort_keys=True, default=str)


def _run_dir(cfg: SweepConfig, task: str, rid: str) -> str:
    return str(Path(cfg.out) / "runs" / folder_name(task) / rid)
