"""``SideConfig``: everything needed to build a side network + head, JSON round-trippable.

The config describes both the backbone's cached features (``num_layers``, ``dim``,
``tokens``, ``prefix_tokens``, ``frames``) and the side network (``method``, ``rank``,
``layers``, ...). It is saved into checkpoints and adapter files via :meth:`to_json`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from importlib import metadata
from itertools import pairwise
from typing import Any

from losa_cache.methods import option_fields
from losa_cache.side.layers import parse_layers
from losa_cache.side.registry import get_side_class, list_sides

__all__ = ["POOLS", "VERSION_KEY", "SideConfig", "library_version"]

POOLS = ("auto", "cls", "mean")
VERSION_KEY = "losa_cache_version"


def library_version() -> str:
    """The installed losa-cache version, for stamping saved configs."""
    import losa_cache

    version = getattr(losa_cache, "__version__", None)
    if version:
        return str(version)
    try:
        return metadata.version("losa-cache")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _own_options(method: str) -> list[Any]:
    """The option fields ``method`` keeps beside the base fields (rank, layers ... are
    base fields)."""
    cls = get_side_class(method)
    base = {f.name for f in fields(SideConfig)}
    return [f for f in fields(cls.options) if f.name not in base] if cls.options else []


@dataclass(frozen=True, init=False)
class SideConfig:
    """A side network on cached block outputs b_1..b_L of shape (B, T, D) each."""

    num_layers: int = field(metadata={"help": "Backbone depth L (number of transformer blocks)."})
    dim: int = field(metadata={"help": "Backbone width D (channels per token)."})
    tokens: int = field(
        metadata={"help": "Tokens T per block output, prefix (CLS/register) tokens included."}
    )
    num_classes: int = field(metadata={"help": "Classes of the linear classifier head."})
    method: str = field(
        default="losa", metadata={"help": "Registered side network: see list_sides()."}
    )
    rank: int = field(default=64, metadata={"help": "Low-rank bottleneck r of Eq. 4."})
    layers: tuple[int, ...] | str = field(
        default="all",
        metadata={
            "help": "0-based backbone blocks the side network reads, increasing, or a spec "
            "string for parse_layers ('all', 'last:N', 'evenly:N', '3,6,-1'). losa needs the "
            "last block; linear ignores this field."
        },
    )
    prefix_tokens: int = field(
        default=1, metadata={"help": "Leading non-patch tokens (CLS + registers) in T."}
    )
    frames: int = field(
        default=1,
        metadata={
            "help": "1 for images; >1 for video: tokens after the prefix are frames x spatial "
            "(frame-major) and token mixing is spatial + temporal (Eq. 6)."
        },
    )
    pool: str = field(
        default="auto",
        metadata={
            "help": "Head pooling: 'cls' (first prefix token), 'mean' (mean of non-prefix "
            "tokens) or 'auto' ('cls' for images with a prefix token, else 'mean')."
        },
    )
    dropout: float = field(
        default=0.0, metadata={"help": "Dropout before the head's linear layer, in [0, 1)."}
    )
    options: tuple[tuple[str, Any], ...] = field(
        default=(),
        metadata={
            "help": "The method's own settings (its options dataclass: LoSA's start, "
            "MIST's width ...) as sorted (name, value) pairs; read as "
            "attributes (config.width), given as keywords."
        },
    )

    def __init__(
        self, num_layers: int, dim: int, tokens: int, num_classes: int, **settings: Any
    ) -> None:
        """The base fields by name; any other keyword is an option of the method (one a
        registered side network declares): the method's are kept, at their defaults when
        not given, another method's are dropped (TrainConfig passes every method's)."""
        given = {
            "num_layers": num_layers,
            "dim": dim,
            "tokens": tokens,
            "num_classes": num_classes,
            **settings,
        }
        own = dict(given.pop("options", ()))
        for f in fields(SideConfig):
            if f.name != "options":
                value = given.pop(f.name) if f.name in given else f.default
                object.__setattr__(self, f.name, value)
        known = set(option_fields(live=False))
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(
                f"unknown SideConfig keys {unknown}; known keys: "
                f"{sorted({f.name for f in fields(SideConfig)} | known)}"
            )
        if self.method not in list_sides():
            raise ValueError(f"unknown method {self.method!r}; choose one of {list_sides()}")
        values = {
            f.name: own.get(f.name, given.get(f.name, f.default)) for f in _own_options(self.method)
        }
        object.__setattr__(self, "options", tuple(sorted(values.items())))
        self.__post_init__()

    def __getattr__(self, name: str) -> Any:
        """The method's options as attributes (only reached when no field matches)."""
        if not name.startswith("__"):
            for key, value in self.__dict__.get("options", ()):
                if key == name:
                    return value
        raise AttributeError(
            f"{type(self).__name__} of method "
            f"{self.__dict__.get('method')!r} has no setting {name!r}"
        )

    def __post_init__(self) -> None:
        self._coerce_layers()
        self._check_sizes()
        self._check_layers()
        self._check_choices()
        get_side_class(self.method).check_config(self)
        get_side_class(self.method).check_size(self)

    # ---------------------------------------------------------------- validation

    def _coerce_layers(self) -> None:
        """Resolve a spec string, or a JSON list, into a tuple of ints."""
        layers = self.layers
        if isinstance(layers, str):
            layers = parse_layers(layers, self._positive("num_layers"))
        elif isinstance(layers, Sequence):
            layers = tuple(int(i) for i in layers)
        else:
            raise ValueError(f"layers must be a tuple of ints or a spec string, got {layers!r}")
        object.__setattr__(self, "layers", layers)

    def _positive(self, name: str) -> int:
        value = getattr(self, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        return value

    def _check_sizes(self) -> None:
        for name in ("num_layers", "dim", "tokens", "num_classes", "frames"):
            self._positive(name)
        if not isinstance(self.prefix_tokens, int) or not 0 <= self.prefix_tokens < self.tokens:
            raise ValueError(
                f"prefix_tokens must be an integer in 0..tokens-1 ({self.tokens - 1}), "
                f"got {self.prefix_tokens!r}"
            )
        patches = self.tokens - self.prefix_tokens
        if patches % self.frames:
            raise ValueError(
                f"frames={self.frames} does not divide the {patches} non-prefix tokens "
                f"(tokens={self.tokens}, prefix_tokens={self.prefix_tokens})"
            )

    def _check_layers(self) -> None:
        layers = self.layers
        bad = [i for i in layers if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(
                f"layers {bad} out of range: valid 0-based block indices are "
                f"0..{self.num_layers - 1} (use parse_layers for negative indices)"
            )
        if any(a >= b for a, b in pairwise(layers)):
            raise ValueError(f"layers must be strictly increasing, got {layers}")

    def _check_choices(self) -> None:
        if self.method not in list_sides():
            raise ValueError(f"unknown method {self.method!r}; choose one of {list_sides()}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.pool == "cls" and self.prefix_tokens == 0:
            raise ValueError("pool='cls' needs prefix_tokens >= 1; use 'mean' or 'auto'")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    # ---------------------------------------------------------------- derived

    @property
    def last_layer(self) -> int:
        """0-based index of the backbone's last block, b_L."""
        return self.num_layers - 1

    @property
    def required_layers(self) -> tuple[int, ...]:
        """Blocks the side network reads: a function of the config, no network built."""
        return get_side_class(self.method).blocks(self)

    @property
    def spatial_tokens(self) -> int:
        """Non-prefix tokens per frame (all non-prefix tokens for images)."""
        return (self.tokens - self.prefix_tokens) // self.frames

    @property
    def resolved_pool(self) -> str:
        """'cls' or 'mean': 'auto' is 'cls' for images with a prefix token, else 'mean'.

        Video uses 'mean' because token mixing leaves prefix tokens untouched in video
        mode (see losa.py), so the CLS token would never see the side network's mixing.
        """
        if self.pool != "auto":
            return self.pool
        return "cls" if self.prefix_tokens > 0 and self.frames == 1 else "mean"

    # ---------------------------------------------------------------- JSON

    def to_dict(self) -> dict[str, Any]:
        """Plain flat dict (sorted keys, layers as a list, the method's options beside the
        base fields), stamped with the library version."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "options"}
        data |= dict(self.options)
        data["layers"] = list(self.layers)
        data[VERSION_KEY] = library_version()
        return dict(sorted(data.items()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SideConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, the version stamp is ignored."""
        return cls(**{k: v for k, v in data.items() if k != VERSION_KEY})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, text: str) -> SideConfig:
        return cls.from_dict(json.loads(text))
