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
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from losa_cache.fields import check_fields, option
from losa_cache.side.head import ClassifierHead

__all__ = [
    "BASELINES",
    "IMAGES",
    "LORA_MODULES",
    "BaselineMethod",
    "BaselineOptions",
    "LiveBaseline",
    "baseline_uses",
    "build_baseline",
    "count_baseline",
    "is_baseline",
    "list_baselines",
    "lora_regex",
    "register_baseline",
    "saved_options",
    "trainable_names",
]

#: The feature key under which a live feed hands a baseline its preprocessed images.
IMAGES = -1
BASELINES = ("full", "lora", "bitfit", "vpt", "partial")
#: LoRA target names -> the timm ViT module they name inside each block.
LORA_MODULES = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
ADAPTER_FORMAT = "losa-cache-live-baseline"
PEFT_DIR = "peft"


@dataclass(frozen=True)
class BaselineOptions:
    """The TrainConfig fields the live baselines read (besides ``rank`` for lora)."""

    lora_targets: str = option(
        "qkv,proj,fc1,fc2",
        "lora: the block layers LoRA adapts, comma-separated, of qkv, proj, fc1, fc2.",
    )
    lora_alpha: float | None = option(None, "lora: LoRA's alpha (default: the rank).", above=0)
    prompt_tokens: int = option(10, "vpt: learned prompt tokens per prompted block.", min=1)
    prompt_blocks: int | None = option(
        None, "vpt: prompt the first K blocks (default: all).", min=1
    )
    tune_blocks: int = option(1, "partial: fine-tune the last K blocks.", min=1)
    adapter_scale: float = option(
        0.1,
        "adaptformer: scale s of the parallel adapter's output (bottleneck: --rank).",
        above=0,
    )

    def __post_init__(self) -> None:
        check_fields(self)
        lora_regex(self.lora_targets)


def _nothing_added(net: nn.Module, cfg: Any) -> int:
    return 0


@dataclass(frozen=True)
class BaselineMethod:
    """A live baseline from its own module: the backbone parameters it trains, the
    parameters it adds (counted without building) and how it adds them."""

    name: str
    #: (pruned backbone, TrainConfig) -> the backbone parameter names it trains
    trainable: Callable[[nn.Module, Any], list[str]]
    #: the TrainConfig fields it reads (a sweep dedups on the others)
    uses: tuple[str, ...] = ()
    #: (pruned backbone, possibly on meta, TrainConfig) -> parameters it adds
    added_params: Callable[[nn.Module, Any], int] = _nothing_added
    #: adds its (trainable) modules to the pruned backbone copy in place, seeded
    attach: Callable[[nn.Module, Any], None] | None = None


_REGISTERED: dict[str, BaselineMethod] = {}


def register_baseline(method: BaselineMethod) -> BaselineMethod:
    """Register a live baseline under ``method.name``; refuses a name already taken."""
    if method.name in BASELINES or method.name in _REGISTERED:
        raise ValueError(f"live baseline {method.name!r} is already registered; pick another name")
    _REGISTERED[method.name] = method
    return method


def list_baselines() -> list[str]:
    return [*BASELINES, *_REGISTERED]


def is_baseline(method: str) -> bool:
    return method in BASELINES or method in _REGISTERED


#: The TrainConfig fields each baseline reads (a sweep makes one run of configs that
#: differ only in fields their method ignores, as for ``SideNetwork.uses``).
_USES = {"full": (), "bitfit": (), "lora": ("rank", "lora_targets", "lora_alpha"),
         "vpt": ("prompt_tokens", "prompt_blocks"), "partial": ("tune_blocks",)}  # fmt: skip


def baseline_uses(method: str) -> tuple[str, ...]:
    return _REGISTERED[method].uses if method in _REGISTERED else _USES[method]


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


def options_of(cfg: Any) -> BaselineOptions:
    return BaselineOptions(**{k: getattr(cfg, k) for k in BaselineOptions.__dataclass_fields__})


def saved_options(train_config: dict[str, Any]) -> SimpleNamespace:
    """What :func:`build_baseline` reads (the options and ``rank``) from a run's saved
    train config (an adapter's), validated as :class:`BaselineOptions`; missing keys
    (older runs) take their defaults."""
    known = BaselineOptions.__dataclass_fields__
    opts = BaselineOptions(**{k: v for k, v in train_config.items() if k in known})
    return SimpleNamespace(**asdict(opts), rank=train_config["rank"])


def _blocks_arg(net: nn.Module, k: int | None, flag: str) -> int:
    depth = len(net.blocks)
    k = depth if k is None else k
    if not 1 <= k <= depth:
        raise ValueError(f"{flag} {k} is out of range: the backbone has {depth} blocks")
    return k


def trainable_names(method: str, net: nn.Module, cfg: Any) -> list[str]:
    """Backbone parameters (by name) the method trains; LoRA and prompts add their own."""
    opts = options_of(cfg)
    names = [n for n, _ in net.named_parameters()]
    if method in _REGISTERED:
        return _REGISTERED[method].trainable(net, cfg)
    if method == "full":
        return names
    if method == "bitfit":
        return [n for n in names if n.endswith("bias")]
    if method == "partial":
        depth = len(net.blocks)
        first = depth - _blocks_arg(net, opts.tune_blocks, "--tune-blocks")
        keep = tuple(f"blocks.{i}." for i in range(first, depth))
        return [n for n in names if n.startswith(keep)]
    return []  # lora, vpt: the backbone stays frozen


def _lora_layers(net: nn.Module, targets: str) -> Iterator[nn.Linear]:
    pattern = lora_regex(targets)
    for name, m in net.named_modules():
        if isinstance(m, nn.Linear) and re.fullmatch(pattern, name):
            yield m


def count_baseline(method: str, net: nn.Module, cfg: Any) -> int:
    """Learned parameters (head excluded, as in the paper) of ``method`` on ``net`` (a
    pruned architecture, possibly on the meta device): nothing is built or trained."""
    opts = options_of(cfg)
    params = dict(net.named_parameters())
    own = sum(params[n].numel() for n in trainable_names(method, net, cfg))
    if method in _REGISTERED:
        own += _REGISTERED[method].added_params(net, cfg)
    if method == "lora":
        own += sum(
            cfg.rank * (m.in_features + m.out_features)
            for m in _lora_layers(net, opts.lora_targets)
        )
    if method == "vpt":
        own += (
            opts.prompt_tokens
            * _blocks_arg(net, opts.prompt_blocks, "--prompt-blocks")
            * int(net.embed_dim)
        )
    return own


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
    if not is_baseline(method):
        raise ValueError(f"unknown live baseline {method!r}; choose one of {list_baselines()}")
    opts = options_of(cfg)
    net = prune_for_head(copy.deepcopy(net)).requires_grad_(False)
    torch.manual_seed(seed)
    head = ClassifierHead.from_config(head_config)
    for name in trainable_names(method, net, cfg):
        net.get_parameter(name).requires_grad_(True)
    prompts = peft_model = None
    if method == "lora":
        peft_model = _add_lora(net, cfg.rank, opts)
    elif method == "vpt":
        prompts = _prompts(net, opts)
    elif method in _REGISTERED and _REGISTERED[method].attach is not None:
        _REGISTERED[method].attach(net, cfg)
    return LiveBaseline(method, net, head, prompts, peft_model)


def _add_lora(net: nn.Module, rank: int, opts: BaselineOptions) -> Any:
    """peft LoRA in place (B = 0: the output starts unchanged); returns the PeftModel."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("the lora baseline needs peft: pip install peft") from None
    config = LoraConfig(
        r=rank,
        lora_alpha=opts.lora_alpha or rank,
        lora_dropout=0.0,
        target_modules=lora_regex(opts.lora_targets),
        bias="none",
    )
    return get_peft_model(net, config)


def _prompts(net: nn.Module, opts: BaselineOptions) -> nn.Parameter:
    """(K, N, D) prompt tokens, VPT's uniform init over the patch embedding's fan-in."""
    for attr in ("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "blocks"):
        if not hasattr(net, attr):
            raise ValueError(
                f"vpt needs a timm VisionTransformer (this {type(net).__name__} "
                f"lacks {attr}); use another baseline for it"
            )
    k = _blocks_arg(net, opts.prompt_blocks, "--prompt-blocks")
    dim = int(net.embed_dim)
    proj = net.patch_embed.proj
    fan_in = proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1]
    bound = math.sqrt(6.0 / float(fan_in + dim))
    return nn.Parameter(torch.empty(k, opts.prompt_tokens, dim).uniform_(-bound, bound))
