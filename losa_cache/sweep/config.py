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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from losa_cache.baselines import baseline_uses, is_baseline, list_baselines
from losa_cache.fields import check_fields, inherit, metadata, option
from losa_cache.outdir import folder_name, folder_names
from losa_cache.side import get_side_class, list_sides, parse_layers
from losa_cache.side.config import VERSION_KEY, library_version
from losa_cache.side.mist import candidate_ks
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

#: Grid fields: a list over the TrainConfig field the flag names (--method: methods).
GRID = {"tasks": "task", "methods": "method", "ranks": "rank", "layers": "layers", "lrs": "lr"}
#: TrainConfig fields a sweep does not pass to its runs: each run has its own folder, and
#: --resume resumes the sweep (its runs resume from their checkpoints).
NOT_SHARED = frozenset({"out", "resume"})


def _uses(methods: list[str], uses: Callable[[str], tuple[str, ...]]) -> tuple[str, ...]:
    """The TrainConfig fields any of ``methods`` reads."""
    names = {n for m in methods for n in uses(m)}
    return tuple(sorted(names & {f.name for f in fields(TrainConfig)}))


#: the side networks' own options (rank, layers, MIST's width ...): those a run id names
#: when not at their defaults
SIDE_FIELDS = _uses(list_sides(), lambda s: get_side_class(s).uses)
#: TrainConfig fields that only some methods use (the live baselines' too): a run of a
#: method that ignores one keeps the default (one run, not one per value)
METHOD_FIELDS = tuple(sorted({*SIDE_FIELDS, *_uses(list_baselines(), baseline_uses)}))
#: TrainConfig fields a config entry may set; everything else is sweep-wide.
ENTRY_KEYS = tuple(dict.fromkeys((
    "task", "method", "rank", "hidden", "layers", "lr", "optimizer", "momentum", "weight_decay",
    "label_smoothing", "warmup_steps", "seed", "batch_size", "steps", "epochs", "pool",
    "shuffle_buffer", *METHOD_FIELDS)))

_f = option  # a field with help, range and choices (losa_cache.fields)


def _grid(name: str, more: str) -> dict[str, Any]:
    """A grid field's metadata: a list over TrainConfig's field ``name`` (its range,
    choices, panel and help, then ``more``), flag ``--name``."""
    meta = TrainConfig.__dataclass_fields__[name].metadata
    return {**meta, "help": f"{meta['help']} {more}", "cli": name}


def _t(name: str, more: str | None = None) -> Any:
    """TrainConfig's field ``name``, its help (then ``more``, what it means in a sweep)."""
    help = TrainConfig.__dataclass_fields__[name].metadata["help"]
    return inherit(TrainConfig, name, f"{help} {more}" if more else None)


@dataclass
class SweepConfig:
    """Many side networks trained from one store (or one live backbone), one pass per epoch."""

    store: str = _f("", "Feature store path or URL (not needed with --live).")
    out: str = _f("", "Sweep folder: results, adapters, every run's folder (default: a new "
                      "runs/sweep-<date>-<time>).")
    tasks: list[str] | None = field(default=None, metadata=_grid(
        "task", "Several, comma-separated: each trains every config."))
    methods: list[str] = field(default_factory=lambda: ["losa", "linear"], metadata=_grid(
        "method", "Several, comma-separated; live baselines each run their own backbone "
        "forward and backward, so they train one after another, after the side networks "
        "(which share one backbone pass)."))
    ranks: list[int] = field(default_factory=lambda: [64], metadata=_grid(
        "rank", "Several, comma-separated, e.g. 4,8,16,64 (a method without a rank ignores "
        "it)."))
    layers: list[str] = field(default_factory=lambda: ["store"], metadata=_grid(
        "layers", "Several, comma-separated, e.g. evenly:1,evenly:4,all (3,6,-1 is one spec; "
        "';' separates lists; a method without layers ignores them)."))
    lrs: list[float | None] = field(default_factory=lambda: [None], metadata=_grid(
        "lr", "Several, comma-separated, e.g. 0.01,0.05."))
    configs: list[dict[str, Any]] | None = field(default=None, metadata=metadata(
        "A JSON file: a list of config objects instead of the grid; values may be lists "
        "(expanded).", cli="config"))
    steps: int | None = _t("steps")
    epochs: float | None = _t("epochs")
    batch_size: int = _t("batch_size")
    optimizer: str = _t("optimizer")
    weight_decay: float | None = _t("weight_decay")
    seed: int = _t("seed")
    cache: str = _t("cache")
    device: str = _t("device")
    amp: str = _t("amp")
    workers: int = _t("workers")
    max_memory: int | None = _t("max_memory")
    compile: str = _t("compile")
    batching: str = _f("auto", "Same-shape models: auto (loop on CPU, the faster of both "
                                   "on CUDA, timed) | loop | vmap.", choices=BATCHING,
                       panel="Performance")
    memory_budget: int | None = _f(None, "Memory the models of one group may use, e.g. "
                                             "4GB (default: a share of free memory).", min=0,
                                         panel="Performance", unit="bytes")
    eval_every: int | None = _t("eval_every")
    log_every: int | None = _t("log_every")
    log: str = _t("log", "Each run logs into its own folder, so TensorBoard compares them.")
    checkpoint_every: int | None = _t("checkpoint_every")
    shuffle_buffer: int | None = _t("shuffle_buffer")
    speed_batches: int = _f(50, "Batches timed per config for img/s (paper: 50; 0 skips).",
                                min=0, panel="Costs")
    live_metrics: bool = _f(True, "Also measure the paper's setting: training memory (batch "
                                  "1) and img/s with the backbone forward, inference memory "
                                  "and img/s at batch 1 (a store sweep builds the store's "
                                  "backbone with random weights for it).", panel="Costs")
    costs: bool = _f(True, "Measure every config's costs after training (img/s over "
                           "--speed-batches steps, memory and inference at batch 1; it says "
                           "up front what it will time); --no-costs skips them (their "
                           "columns stay empty).", panel="Costs")
    stop_at: int | None = _t("stop_at")
    resume: bool = _f(False, "Continue the sweep in --out.")
    train_split: str = _t("train_split")
    val_split: str = _t("val_split", "It selects the best config.")
    test_split: str = _t("test_split")
    live: bool = _t("live", "One backbone pass per batch serves every config.")
    model: str | None = _t("model")
    checkpoint: str | None = _t("checkpoint")
    pretrained: bool = _t("pretrained")
    random_init: bool = _t("random_init")
    init_seed: int = _t("init_seed")
    dataset: str | None = _t("dataset")
    data_root: str | None = _t("data_root")
    limit: int | None = _t("limit")
    start: str = _t("start")
    taps: str = _t("taps")
    lora_targets: str = _t("lora_targets")
    lora_alpha: float | None = _t("lora_alpha")
    prompt_tokens: int = _t("prompt_tokens")
    prompt_blocks: int | None = _t("prompt_blocks")
    tune_blocks: int = _t("tune_blocks")
    # the rest of every run's TrainConfig, sweep-wide (a --config entry may set them per run)
    adapter_scale: float = _t("adapter_scale")
    alpha_init: float = _t("alpha_init")
    hidden: int = _t("hidden")
    temporal: bool = _t("temporal")
    pool: str = _t("pool")
    width: int = _t("width")
    heads: int = _t("heads")
    edge_blocks: int = _t("edge_blocks")
    block_fn: str = _t("block_fn")
    gather: str = _t("gather")
    gather_k: int | None = _t("gather_k")
    k_candidates: str = _t("k_candidates")
    momentum: float = _t("momentum")
    label_smoothing: float = _t("label_smoothing")
    warmup_steps: int | None = _t("warmup_steps")
    views: str = _t("views")
    augment: str | None = _t("augment")
    view_seed: int = _t("view_seed")
    frames: int | None = _t("frames")
    stride: int = _t("stride")
    clip: str = _t("clip")
    inflation: str = _t("inflation")
    # a Dask cluster trains the groups (losa_cache.sweep.cluster); the meanings of extract's
    cluster: str | None = _f(None, "Run on Dask: local:N (N worker processes) | cuda (one per "
                             "GPU); one group of configs per task, largest first.",
                             panel="Performance")
    scheduler: str | None = _f(None, "Run on an existing Dask cluster: tcp://HOST:PORT (the "
                               "store and --out must be reachable from every worker).",
                               panel="Performance")

    def __post_init__(self) -> None:
        if not self.store and not self.live:
            raise ValueError("give --store (the feature store to sweep over), or --live with "
                             "--model and --dataset")
        if self.live and not (self.model and self.dataset):
            raise ValueError("--live needs --model and --dataset (the backbone runs on images)")
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give --steps or --epochs, not both")
        for name in ("methods", "ranks", "layers", "lrs"):
            if not getattr(self, name):
                raise ValueError(f"--{name.rstrip('s')} needs at least one value")
        check_fields(self)
        live_only = [m for m in self.methods if is_baseline(m)]
        if live_only and not self.live:
            raise ValueError(f"--method {','.join(live_only)} trains the backbone on images: "
                             "add --live (with --model and --dataset)")

    def to_dict(self) -> dict[str, Any]:
        return dict(sorted({**asdict(self), VERSION_KEY: library_version()}.items()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepConfig:
        data = {k: v for k, v in data.items() if k != VERSION_KEY}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SweepConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)


#: SweepConfig fields every run's TrainConfig copies: all they share but the grid's
SHARED_KEYS = tuple(f.name for f in fields(SweepConfig)
                    if f.name in TrainConfig.__dataclass_fields__
                    and f.name not in NOT_SHARED | set(GRID))


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
        return {"id": self.id, "task": self.task, "layers_label": self.layers_label,
                "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        return cls(data["id"], data["task"], TrainConfig.from_dict(data["train"]),
                   data["layers_label"])


def method_uses(method: str) -> tuple[str, ...]:
    """The TrainConfig fields ``method`` (a side network or a live baseline) reads."""
    return baseline_uses(method) if is_baseline(method) else get_side_class(method).uses


def load_entries(path: str | Path) -> list[dict[str, Any]]:
    """A JSON list of config entries (or ``{"configs": [...]}``), keys checked."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--config: no file {p}")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--config {p} is not valid JSON: {e}") from None
    data = data.get("configs") if isinstance(data, dict) else data
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data) or not data:
        raise ValueError(f"--config {p}: expected a non-empty JSON list of objects, e.g. "
                         '[{"method": "losa", "rank": [8, 64], "lr": 0.05}]')
    for entry in data:
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if unknown:
            raise ValueError(f"--config {p}: unknown keys {unknown}; an entry may set "
                             f"{list(ENTRY_KEYS)} (store, cache, device... are sweep-wide)")
    return data


# ---------------------------------------------------------------------------- expansion


def expand_runs(cfg: SweepConfig, depth: int, store_layers: list[int],
                default_task: str) -> list[RunSpec]:
    """Every (entry x task) as a RunSpec, duplicates dropped, ids unique."""
    runs: dict[str, RunSpec] = {}
    seen: set[str] = set()
    for entry in (e for raw in _entries(cfg, default_task) for e in _with_k(cfg, raw, depth)):
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
        raise ValueError("the sweep has no runs: give at least one method, rank, layer spec, "
                         "lr and task (or config entries in --config)")
    return list(runs.values())


def _entries(cfg: SweepConfig, default_task: str) -> list[dict[str, Any]]:
    tasks = cfg.tasks or [default_task]
    if cfg.configs is None:
        grid = [{"method": m, "rank": r, "layers": la, "lr": lr}
                for m, r, la, lr in itertools.product(cfg.methods, cfg.ranks, cfg.layers, cfg.lrs)]
    else:
        grid = [e for entry in cfg.configs for e in _product(entry)]
    return [{"task": t, **e} if "task" not in e else e for t in tasks for e in grid]


def _with_k(cfg: SweepConfig, entry: dict[str, Any], depth: int) -> list[dict[str, Any]]:
    """MIST without ``gather_k`` (in the entry or sweep-wide): one entry per candidate k, as
    ``train`` alone would train and choose among on val (losa_cache/train/choose.py); the
    sweep keeps them all."""
    get = lambda name: entry.get(name, getattr(cfg, name))
    if entry.get("method") != "mist" or get("gather") != "sum" or get("gather_k") is not None:
        return [entry]
    return [{**entry, "gather_k": k} for k in candidate_ks(get("k_candidates"), depth)]


def _product(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """An entry whose values may be lists -> its cross product (an empty list would
    silently drop the entry: refused, naming the key)."""
    empty = [k for k, v in entry.items() if v == []]
    if empty:
        raise ValueError(f"--config: the entry {json.dumps(entry)} gives no values for "
                         f"{empty}, so it expands to no run; give at least one value (or "
                         "leave the key out for the default)")
    keys = list(entry)
    values = [v if isinstance(v, list) else [v] for v in entry.values()]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def _run(cfg: SweepConfig, entry: dict[str, Any], depth: int,
         store_layers: list[int]) -> RunSpec:
    base = {k: getattr(cfg, k) for k in SHARED_KEYS}
    base["store"] = cfg.store or None
    if "steps" in entry or "epochs" in entry:
        base.update(steps=None, epochs=None)
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
    parts = [t.method] + ([f"r{t.rank}"] if "rank" in uses else []) + (
        [slug(label)] if "layers" in uses else []) + (
        [f"h{t.hidden}"] if "hidden" in uses else [])
    parts += [_option_part(n, getattr(t, n)) for n in uses  # mist's w32, gk8, mlp
              if n in SIDE_FIELDS and n not in ("rank", "layers", "hidden")
              and getattr(t, n) != getattr(TrainConfig, n)]
    parts.append(f"lr{lr}")
    if t.optimizer != "sgd":
        parts.append(t.optimizer)
    if t.seed != cfg.seed:
        parts.append(f"s{t.seed}")
    if t.batch_size != cfg.batch_size:
        parts.append(f"b{t.batch_size}")
    return "-".join(parts)


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
        text = ",".join(map(str, store_layers)) if spec.train.layers == "store" else \
            spec.train.layers
        maths["layers"] = list(parse_layers(text, depth))
    lr = maths.pop("lr")
    maths["lr"] = lr if lr is not None else DEFAULT_LR[maths["optimizer"]]
    maths.pop("store", None)
    return json.dumps(maths, sort_keys=True, default=str)


def _run_dir(cfg: SweepConfig, task: str, rid: str) -> str:
    return str(Path(cfg.out) / "runs" / folder_name(task) / rid)
