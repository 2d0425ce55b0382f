"""Live baselines: methods that train (part of) the backbone itself, on images.

The LoSA paper's comparisons (Tables 1, 7, 9, 10): ``full`` fine-tuning, ``lora`` (peft),
``bitfit``, ``vpt`` (VPT-deep) and ``partial`` (the last K blocks). Each is a method of
``losa-cache train --live``: the engine's live feed hands it preprocessed images instead
of block outputs (the :data:`IMAGES` key) and its model is backbone + the side networks'
head (:class:`~losa_cache.side.head.ClassifierHead` on b_L, the final norm pruned), so it
writes the same metrics, checkpoint and learning curves as a side network. One backbone
pass cannot serve these (each backpropagates through its own backbone copy).

    model = build_baseline("lora", backbone, head_config, cfg)   # nn.Module on {IMAGES: x}
    count_baseline("lora", describe_backbone, cfg)               # learned params, no weights
    load_adapter("runs/lora").bind(backbone)                     # predict with its adapter
"""

from __future__ import annotations

from losa_cache.baselines.adapter import (
    BaselineAdapter,
    copy_baseline_adapter,
    is_baseline_adapter,
    read_baseline_adapter,
)
from losa_cache.baselines.methods import (
    BASELINES,
    IMAGES,
    LORA_MODULES,
    LiveBaseline,
    build_baseline,
    count_baseline,
    list_baselines,
    lora_regex,
)

__all__ = [
    "BASELINES",
    "IMAGES",
    "LORA_MODULES",
    "BaselineAdapter",
    "LiveBaseline",
    "build_baseline",
    "copy_baseline_adapter",
    "count_baseline",
    "is_baseline_adapter",
    "list_baselines",
    "lora_regex",
    "read_baseline_adapter",
]

# register the baselines that live in their own modules
from losa_cache.baselines import adaptformer, finetune_parts  # noqa: F401
