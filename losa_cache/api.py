"""The Python API: ``losa_cache.extract``, ``losa_cache.train``, ``losa_cache.sweep``.

Each takes its config (:class:`~losa_cache.extract.ExtractConfig`,
:class:`~losa_cache.train.TrainConfig`, :class:`~losa_cache.sweep.SweepConfig`) or the
same fields as keywords, the CLI's flags with ``_`` for ``-``, and does what the command of
the same name does (see docs/python-api.md)::

    import losa_cache
    losa_cache.extract(model="vit_b", pretrained=True, dataset="imagefolder:photos",
                       store="stores/photos.zarr", split="val=0.1,test=0.1")
    metrics = losa_cache.train(store="stores/photos.zarr", method="losa", rank=16,
                               steps=300, out="runs/photos-losa")
    ds = losa_cache.open_store("stores/photos.zarr").torch_dataset([-1], split="train")

Everything is imported on call, so ``import losa_cache`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from losa_cache.extract import DaskConfig, ExtractConfig, ExtractResult
    from losa_cache.sweep import SweepConfig
    from losa_cache.train import TrainConfig

__all__ = ["extract", "sweep", "train"]


def _config(cls: type, config: Any, fields: dict[str, Any]) -> Any:
    if config is not None and fields:
        raise TypeError(f"give a {cls.__name__} or its fields as keywords, not both")
    if config is None:
        return cls(**fields)
    if not isinstance(config, cls):
        raise TypeError(f"expected a {cls.__name__}, got {type(config).__name__}")
    return config


def extract(
    config: ExtractConfig | None = None,
    /,
    *,
    progress: bool = True,
    storage_options: dict | None = None,
    dask: DaskConfig | None = None,
    **fields: Any,
) -> ExtractResult:
    """Run the frozen backbone once over a data set into a store (`losa-cache extract`);
    rerunning it resumes. ``dask`` with a cluster or scheduler runs it as Dask tasks that
    each write whole shards (the same store). Returns what was written (``.to_dict()``)."""
    from losa_cache.extract import ExtractConfig
    from losa_cache.extract import extract as run

    cfg = _config(ExtractConfig, config, fields)
    if dask is None or not (dask.cluster or dask.scheduler):
        return run(cfg, progress=progress, storage_options=storage_options)
    from losa_cache.distributed import extract_distributed

    return extract_distributed(
        cfg,
        cluster=dask.cluster,
        scheduler=dask.scheduler,
        progress=progress,
        storage_options=storage_options,
        retries=dask.retries,
        shards_per_task=dask.shards_per_task,
    )


def train(
    config: TrainConfig | None = None,
    /,
    *,
    progress: bool = True,
    storage_options: dict | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Train one side network from a store, or live (`losa-cache train`); returns the
    final metrics (also in ``out/metrics.json``), ``metrics["adapter"]`` the adapter."""
    from losa_cache.train import TrainConfig
    from losa_cache.train.trainer import train as run

    cfg = _config(TrainConfig, config, fields)
    return run(cfg, progress=progress, storage_options=storage_options)


def sweep(
    config: SweepConfig | None = None,
    /,
    *,
    progress: bool = True,
    storage_options: dict | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Train a grid of side networks from one pass over a store (`losa-cache sweep`);
    returns ``{"summary": ..., "results": [one row per run]}``."""
    from losa_cache.sweep import SweepConfig
    from losa_cache.sweep.runner import run_sweep

    cfg = _config(SweepConfig, config, fields)
    return run_sweep(cfg, progress=progress, storage_options=storage_options)
