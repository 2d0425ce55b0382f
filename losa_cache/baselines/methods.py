"""The live baselines: which backbone parameters each trains, its model, counts and adapter.

Every baseline is a :class:`LiveBaseline`: a copy of the backbone (final norm and head
pruned, as the side networks see it) made trainable the method's way, then the side
networks' head on b_L. Counts come from the architecture alone (the meta device works),
so ``plan`` prices a baseline without weights.

* ``full``: every backbone parameter.
* ``lora``: peft LoRA of rank ``rank`` (alpha ``lora_alpha``, default = rank) on the
  blocks' ``lora_targets`` (default qkv, proj, fc1, fc2): r (in + out) per adapted layer.
* ``bitfit``: the backbone's biases (Zaken et al., 2022).
* ``vpt``: VPT-deep (Jia et al., 2022): ``prompt_tokens`` learned tokens inserted after
  the prefix tokens in each of the first ``prompt_blocks`` blocks (each block's prompts
  replace the previous block's prompt outputs; after the last prompted block they run on
  and are dropped before the head): N K D parameters.
* ``partial``: the last ``tune_blocks`` blocks.

More baselines register from their own modules (:func:`register_baseline`, a
:class:`BaselineMethod`): ``mlp_only``/``attention_only`` (finetune_parts.py) and
``adaptformer`` (adaptformer.py).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from losa_cache.fields import check_fields, option
from losa_cache.methods import Method, get_method, list_methods, option_fields, register
from losa_cache.side.head import ClassifierHead

__all__ = [
    "BASELINES",
    "IMAGES",
    "LORA_MODULES",
    "BaselineMethod",
    "LiveBaseline",
    "LoraOptions",
    "PartialOptions",
    "VptOptions",
    "build_baseline",
    "count_baseline",
    "list_baselines",
    "lora_regex",
    "option_defaults",
    "register_baseline",
    "saved_options",
    "trainable_names",
]

#: The feature key under which a live feed hands a baseline its preprocessed images.
IMAGES = -1
#: the built-in live baselines of the LoSA paper (more register from their own modules)
BASELINES = ("full", "lora", "bitfit", "vpt", "partial")
#: LoRA target names -> the timm ViT module they name inside each block.
LORA_MODULES = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
ADAPTER_FORMAT = "losa-cache-live-baseline"
PEFT_DIR = "peft"


@dataclass(frozen=True)
class LoraOptions:
    """lora's own settings (its rank is the run's ``--rank``)."""

    lora_targets: str = option(
        "qkv,proj,fc1,fc2",
        "lora: the block layers LoRA adapts, comma-separated, of qkv, proj, fc1, fc2.",
    )
    lora_alpha: float | None = option(None, "lora: LoRA's alpha (default: the rank).", above=0)

    def __post_init__(self) -> None:
        check_fields(self)
        lora_regex(self.lora_targets)


@dataclass(frozen=True)
class VptOptions:
    prompt_tokens: int = option(10, "vpt: learned prompt tokens per prompted block.", min=1)
    prompt_blocks: int | None = option(
        None, "vpt: prompt the first K blocks (default: all).", min=1
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class PartialOptions:
    tune_blocks: int = option(1, "partial: fine-tune the last K blocks.", min=1)

    def __post_init__(self) -> None:
        check_fields(self)


def _nothing_added(net: nn.Module, cfg: Any) -> int:
    return 0


@dataclass(frozen=True)
class BaselineMethod:
    """A live baseline: the backbone parameters it trains, its own settings, the
    parameters it adds (counted without building) and how it adds them."""

    name: str
    #: (pruned backbone, run config) -> the backbone parameter names it trains
    trainable: Callable[[nn.Module, Any], list[str]]
    #: the run's common settings it reads (``rank``); its options are read too
    uses: tuple[str, ...] = ()
    #: its own settings: a dataclass of option() fields, validated with the run's config
    options: type | None = None
    #: (pruned backbone, possibly on meta, run config) -> parameters it adds
    added_params: Callable[[nn.Module, Any], int] = _nothing_added
    #: adds its (trainable) modules to the pruned backbone copy in place, seeded
    attach: Callable[[nn.Module, Any], None] | None = None


def register_baseline(method: BaselineMethod) -> BaselineMethod:
    """Register a live baseline under ``method.name`` in the one method registry."""
    register(Method(method.name, method, options=method.options, live=True, reads=method.uses))
    return method


def list_baselines() -> list[str]:
    return list_methods(live=True)


def _impl(method: str) -> BaselineMethod:
    m = get_method(method)
    if not m.live:
        raise ValueError(f"unknown live baseline {method!r}; choose one of {list_baselines()}")
    return m.impl


def lora_regex(targets: str) -> str:
    """peft's ``target_modules`` regex for a comma list of :data:`LORA_MODULES` names."""
    names = [t.strip() for t in targets.split(",") if t.strip()]
    bad = [t for t in names if t not in LORA_MODULES]
    if bad or not names:
        raise ValueError(
            f"--lora-targets {targets!r}: choose a comma list of {', '.join(LORA_MODULES)}"
        )
    alternatives = "|".join(re.escape(LORA_MODULES[t]) for t in names)
    return rf".*blocks\.\d+\.({alternatives})"


def option_defaults() -> dict[str, Any]:
    """Every live baseline's own settings at their defaults (plan prices one without a run)."""
    return {n: o.field.default for n, o in option_fields(live=True).items()}


def saved_options(train_config: dict[str, Any]) -> SimpleNamespace:
    """What :func:`build_baseline` reads (every live baseline's settings and ``rank``)
    from a run's saved train config (an adapter's), each method's checked by its options
    dataclass; missing keys (older runs) take their defaults."""
    values = {
        **option_defaults(),
        **{k: v for k, v in train_config.items() if k in option_defaults()},
    }
    for name in list_baselines():
        if (opts := _impl(name).options) is not None:
            opts(**{f.name: values[f.name] for f in fields(opts)})
    return SimpleNamespace(**values, rank=train_config["rank"])


def _blocks_arg(net: nn.Module, k: int | None, flag: str) -> int:
    depth = len(net.blocks)
    k = depth if k is None else k
    if not 1 <= k <= depth:
        raise ValueError(f"{flag} {k} is out of range: the backbone has {depth} blocks")
    return k


def trainable_names(method: str, net: nn.Module, cfg: Any) -> list[str]:
    """Backbone parameters (by name) the method trains; LoRA and prompts add their own."""
    return _impl(method).trainable(net, cfg)


def _lora_layers(net: nn.Module, targets: str) -> Iterator[nn.Linear]:
    pattern = lora_regex(targets)
    for name, m in net.named_modules():
        if isinstance(m, nn.Linear) and re.fullmatch(pattern, name):
            yield m


def count_baseline(method: str, net: nn.Module, cfg: Any) -> int:
    """Learned parameters (head excluded, as in the paper) of ``method`` on ``net`` (a
    pruned architecture, possibly on the meta device): nothing is built or trained."""
    params = dict(net.named_parameters())
    own = sum(params[n].numel() for n in trainable_names(method, net, cfg))
    return own + _impl(method).added_params(net, cfg)


def prune_for_head(net: nn.Module) -> nn.Module:
    """The blocks the head reads b_L from: final norm and classifier pruned (in place)."""
    net.prune_intermediate_layers(indices=[len(net.blocks) - 1], prune_norm=True, prune_head=True)
    return net


class LiveBaseline(nn.Module):
    """Backbone (trainable the method's way) -> :class:`ClassifierHead` on b_L.

    Called like a side network on ``{IMAGES: (B, 3, H, W)}``; ``required_layers`` tells
    the engine to feed images.
    """

    required_layers = (IMAGES,)

    def __init__(
        self,
        method: str,
        net: nn.Module,
        head: ClassifierHead,
        prompts: nn.Parameter | None = None,
        peft_model: Any = None,
    ) -> None:
        super().__init__()
        self.method, self.backbone, self.head = method, net, head
        self.prompts = prompts  # (K, N, D) for vpt
        object.__setattr__(self, "_peft", peft_model)  # not a submodule: no second copy

    @property
    def peft_model(self) -> Any:
        return self._peft

    @property
    def dtype(self) -> torch.dtype:
        return self.head.dtype

    def forward(self, features: dict[int, Tensor]) -> Tensor:
        x = features[IMAGES]
        tokens = (
            self.prompted(x) if self.prompts is not None else self.backbone.forward_features(x)
        )  # (B, T, D): b_L, the final norm pruned
        return self.head(tokens)  # (B, C)

    def prompted(self, x: Tensor) -> Tensor:
        """VPT-deep: the blocks with prompt tokens after the prefix tokens -> (B, T, D)."""
        net, p = self.backbone, int(self.backbone.num_prefix_tokens)
        n = self.prompts.shape[1]
        x = net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x))))  # (B, T, D)
        for i, block in enumerate(net.blocks):
            if i < len(self.prompts):
                rest = x[:, p:] if i == 0 else x[:, p + n :]
                prompt = self.prompts[i].to(x.dtype).expand(len(x), -1, -1)  # (B, N, D)
                x = torch.cat([x[:, :p], prompt, rest], dim=1)  # (B, T + N, D)
            x = block(x)
        return torch.cat([x[:, :p], x[:, p + n :]], dim=1)  # (B, T, D)

    def side_parameters(self) -> Iterator[nn.Parameter]:
        """Learned parameters the paper counts: everything trainable but the head."""
        for name, param in self.named_parameters():
            if param.requires_grad and not name.startswith("head."):
                yield param

    def num_learned_params(self) -> int:
        return sum(p.numel() for p in self.side_parameters())

    def learned_state(self) -> dict[str, Tensor]:
        """What the adapter holds: the trained tensors (head included)."""
        return {n: p.detach().contiguous() for n, p in self.named_parameters() if p.requires_grad}

    def save_adapter(self, out: str | Path, meta: dict[str, Any]) -> Path:
        """adapter.json + adapter.safetensors (the trained tensors); lora also peft's own
        ``save_pretrained`` folder ``peft/`` (adapter_config.json, adapter_model.*)."""
        from safetensors.torch import save_file

        from losa_cache.outdir import atomic_write, atomic_write_text, remove_file

        out = Path(out)
        remove_file(out / "adapter.json")  # the commit marker: gone while the weights change
        tags = {"format": "pt", "losa_cache_format": ADAPTER_FORMAT, "method": self.method}
        state = self.learned_state()
        atomic_write(out / "adapter.safetensors", lambda tmp: save_file(state, str(tmp), tags))
        from losa_cache.files import sha256_file

        record = {
            "format": ADAPTER_FORMAT,
            "method": self.method,
            "weights": {
                "file": "adapter.safetensors",
                "sha256": sha256_file(out / "adapter.safetensors"),
                "num_learned_params": self.num_learned_params(),
            },
            "peft": PEFT_DIR if self._peft is not None else None,
            **meta,
        }
        if self._peft is not None:
            self._peft.save_pretrained(str(out / PEFT_DIR))
        atomic_write_text(
            out / "adapter.json", json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"
        )
        return out


def build_baseline(
    method: str, net: nn.Module, head_config: Any, cfg: Any, seed: int = 0
) -> LiveBaseline:
    """A fresh copy of ``net`` (the backbone's timm model) made trainable the method's way,
    with the head of ``head_config`` (a SideConfig); ``cfg`` (a TrainConfig) holds the
    options. Seeded: the same start for every lr of a grid."""
    impl = _impl(method)
    net = prune_for_head(copy.deepcopy(net)).requires_grad_(False)
    torch.manual_seed(seed)
    head = ClassifierHead.from_config(head_config)
    for name in trainable_names(method, net, cfg):
        net.get_parameter(name).requires_grad_(True)
    extra = (impl.attach(net, cfg) if impl.attach is not None else None) or {}
    return LiveBaseline(method, net, head, **extra)


def _add_lora(net: nn.Module, cfg: Any) -> dict[str, Any]:
    """peft LoRA in place (B = 0: the output starts unchanged), rank ``cfg.rank``."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("the lora baseline needs peft: pip install peft") from None
    config = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.lora_alpha or cfg.rank,
        lora_dropout=0.0,
        target_modules=lora_regex(cfg.lora_targets),
        bias="none",
    )
    return {"peft_model": get_peft_model(net, config)}


def _prompts(net: nn.Module, cfg: Any) -> dict[str, Any]:
    """(K, N, D) prompt tokens, VPT's uniform init over the patch embedding's fan-in."""
    for attr in ("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "blocks"):
        if not hasattr(net, attr):
            raise ValueError(
                f"vpt needs a timm VisionTransformer (this {type(net).__name__} "
                f"lacks {attr}); use another baseline for it"
            )
    k = _blocks_arg(net, cfg.prompt_blocks, "--prompt-blocks")
    dim = int(net.embed_dim)
    proj = net.patch_embed.proj
    fan_in = proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1]
    bound = math.sqrt(6.0 / float(fan_in + dim))
    init = torch.empty(k, cfg.prompt_tokens, dim).uniform_(-bound, bound)
    return {"prompts": nn.Parameter(init)}


def _all(net: nn.Module, cfg: Any) -> list[str]:
    return [n for n, _ in net.named_parameters()]


def _biases(net: nn.Module, cfg: Any) -> list[str]:
    return [n for n in _all(net, cfg) if n.endswith("bias")]


def _last_blocks(net: nn.Module, cfg: Any) -> list[str]:
    depth = len(net.blocks)
    first = depth - _blocks_arg(net, cfg.tune_blocks, "--tune-blocks")
    keep = tuple(f"blocks.{i}." for i in range(first, depth))
    return [n for n in _all(net, cfg) if n.startswith(keep)]


def _none(net: nn.Module, cfg: Any) -> list[str]:
    return []  # the backbone stays frozen: the method adds its own parameters


def _lora_params(net: nn.Module, cfg: Any) -> int:
    return sum(
        cfg.rank * (m.in_features + m.out_features) for m in _lora_layers(net, cfg.lora_targets)
    )


def _prompt_params(net: nn.Module, cfg: Any) -> int:
    blocks = _blocks_arg(net, cfg.prompt_blocks, "--prompt-blocks")
    return cfg.prompt_tokens * blocks * int(net.embed_dim)


for _m in (
    BaselineMethod("full", _all),
    BaselineMethod("bitfit", _biases),
    BaselineMethod("lora", _none, ("rank",), LoraOptions, _lora_params, _add_lora),
    BaselineMethod("vpt", _none, (), VptOptions, _prompt_params, _prompts),
    BaselineMethod("partial", _last_blocks, (), PartialOptions),
):
    register_baseline(_m)
