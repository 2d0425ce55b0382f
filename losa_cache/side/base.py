"""``SideNetwork``: the interface every registered side network implements.

A side network reads cached block outputs ``features[i]`` (0-based block index ->
(B, T, D) tensor of any float dtype), refines them into one (B, T, D) map
(:meth:`forward_features`) and classifies it with a :class:`ClassifierHead`.

Besides block outputs it may read store taps, declared by :meth:`SideNetwork.taps` and
keyed in ``features`` by name (:mod:`losa_cache.train.keys`; every feed, store or live,
yields these keys):

* ``"embed"``: z0, the tokens entering block 0;
* ``"sum:k"``: MIST's G_k = z0 + outputs of blocks 0..k-1 (k 1-based, as the paper);
* ``"attn:i"``, ``"mlp:i"``: the attention / MLP branch of block i (0-based, as blocks),
  after layer scale and before the residual add.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from losa_cache.checks import flag, range_error
from losa_cache.side.head import ClassifierHead

if TYPE_CHECKING:
    from losa_cache.side.config import SideConfig

__all__ = ["MAX_SIDE_PARAMS", "SideNetwork", "compute_dtype", "require_at_most", "wider_than"]


#: Most learned parameters a side network may have: 2**31 is 8 GiB of fp32 weights and
#: ~32 GiB with their gradients and optimizer state (LoSA at r = D on ViT-g: 0.16e9; the
#: side transformer at h = D on ViT-g: 1.1e9).
MAX_SIDE_PARAMS = 2**31


def require_at_most(name: str, value: int, bound: int, why: str) -> None:
    """Refuse a side-network size above what the backbone gives it room for (a one-line
    error naming the bound and ``why``): the model-dependent bounds of ``check_config``."""
    error = range_error(flag(name), value, integer=True, high=(bound, why))
    if error is not None:
        raise ValueError(error)


def wider_than(name: str, value: int, dims: dict[str, int], default: int) -> None:
    """Refuse a width/rank above every backbone dimension it factorises (``dims``: what ->
    size) and above its ``default`` (always allowed, so defaults run on tiny backbones)."""
    sizes = ", ".join(f"{what} {n}" for what, n in dims.items())
    require_at_most(name, value, max(*dims.values(), default),
                    f"the backbone's {sizes} or the default {default}: beyond those it adds "
                    "parameters, not capacity")  # fmt: skip


def compute_dtype(x: Tensor, module_dtype: torch.dtype) -> torch.dtype:
    """The dtype features enter the side network in: autocast's (bf16) when it is on for
    their device, so an fp16/bf16 batch is cast once to bf16 (never through an fp32
    copy) and the residual stream runs in it; else the module's."""
    kind = x.device.type
    if kind not in ("cpu", "cuda"):  # meta (counting FLOPs without weights): no autocast
        return module_dtype
    if module_dtype == torch.float32 and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return module_dtype


class SideNetwork(nn.Module):
    """Base class: a head plus method-specific side layers (everything not under ``head.``)."""

    #: the method's own settings: a dataclass whose fields (help, range) are the SideConfig
    #: fields it reads beyond the backbone's and the head's, validated in its __post_init__
    options: ClassVar[type | None] = None
    #: those fields' names (a sweep makes one run of configs that differ only in fields
    #: their method ignores)
    uses: ClassVar[tuple[str, ...]] = ()
    #: the options that set its size (named when :meth:`check_size` refuses one)
    sizes: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.uses = tuple(f.name for f in fields(cls.options)) if cls.options else ()

    def __init__(self, config: SideConfig) -> None:
        super().__init__()
        self.config = config
        self.head = ClassifierHead.from_config(config)

    # ------------------------------------------------------------ per-method hooks

    @classmethod
    def check_config(cls, config: SideConfig) -> None:
        """Method-specific validation, called from ``SideConfig.__post_init__``: the
        method's options (their ranges), then what needs the backbone (override)."""
        if cls.options is not None:
            cls.options(**{name: getattr(config, name) for name in cls.uses})

    @classmethod
    def check_size(cls, config: SideConfig) -> None:
        """The network's learned parameters (counted, none built) must fit in memory: a
        size option far beyond the backbone would run the machine out of memory."""
        n = cls.count_learned_params(config)
        if n > MAX_SIDE_PARAMS:
            uses = " or ".join(flag(u) for u in cls.sizes)
            raise ValueError(
                f"{config.method} would have {n:,} learned parameters, over the limit of "
                f"{MAX_SIDE_PARAMS:,} (2**31: ~32 GiB to train with gradients and optimizer "
                f"state); use a smaller {uses or 'network'}"
            )

    @classmethod
    def count_learned_params(cls, config: SideConfig) -> int:
        """Learned side parameters (head excluded), computed without instantiating."""
        raise NotImplementedError

    @classmethod
    def blocks(cls, config: SideConfig) -> tuple[int, ...]:
        """Sorted 0-based block indices a network of ``config`` reads (none built)."""
        raise NotImplementedError

    @classmethod
    def taps(cls, config: SideConfig) -> tuple[str, ...]:
        """Store taps :meth:`forward` reads besides the blocks, as feed keys (``embed``,
        ``sum:k``, ``attn:i``, ``mlp:i``; see the module docstring), none built; none by
        default."""
        return ()

    @property
    def required_layers(self) -> tuple[int, ...]:
        """Sorted 0-based block indices that :meth:`forward` reads."""
        return type(self).blocks(self.config)

    def forward_features(self, features: Mapping[int | str, Tensor]) -> Tensor:
        """Block outputs -> refined (B, T, D) tokens for the head."""
        raise NotImplementedError

    # ------------------------------------------------------------ shared

    def forward(self, features: Mapping[int | str, Tensor]) -> Tensor:
        """Block outputs {index: (B, T, D)} and taps {name: (B, T, D)} -> (B, C) logits."""
        return self.head(self.forward_features(features))

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: inputs are cast to it."""
        return self.head.dtype

    def block(
        self,
        features: Mapping[int, Tensor],
        index: int,
        layout: Callable[[Tensor, torch.dtype], Tensor] | None = None,
    ) -> Tensor:
        """``features[index]`` checked against the config and cast to the compute dtype
        (by ``layout(x, dtype)`` where given: a cast that also lays the copy out)."""
        if index not in features:
            raise KeyError(
                f"block {index} missing from features (got {sorted(features)}); "
                f"this side network reads blocks {self.required_layers}"
            )
        x = features[index]
        expected = (self.config.tokens, self.config.dim)
        if x.ndim != 3 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"block {index} has shape {tuple(x.shape)}; expected (B, {expected[0]}, "
                f"{expected[1]}) = (B, tokens, dim) from the config"
            )
        dtype = compute_dtype(x, self.dtype)
        return x.to(dtype) if layout is None else layout(x, dtype)  # (B, T, D)

    def side_parameters(self) -> Iterator[nn.Parameter]:
        """Learned side-network parameters (the paper's count); excludes the head."""
        for name, param in self.named_parameters():
            if not name.startswith("head."):
                yield param

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.head.parameters()

    def num_learned_params(self) -> int:
        """Instantiated count of :meth:`side_parameters` (head excluded)."""
        return sum(p.numel() for p in self.side_parameters())
