"""The one interface every data set adapter implements.

An adapter is a deterministic, ordered list of :class:`Sample` rows plus a way to
decode row ``i`` into an RGB PIL image. Row order is the store's row order, so it
must never depend on file-system listing order, time or randomness.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from PIL import Image


class DatasetError(ValueError):
    """A data set spec, layout or list file is wrong (message says how to fix it)."""


class DatasetNotFoundError(DatasetError):
    """The data is not where the spec says (as opposed to being there but malformed)."""


class ImageDecodeError(RuntimeError):
    """One image could not be decoded; carries the source so it can be named and skipped."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot decode image {source!r}: {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class Sample:
    """One row of a data set: where it comes from, its label (-1 = none) and its split."""

    source: str
    label: int
    split: str


@dataclass(repr=False)
class ImageDataset(ABC):
    """An ordered, labelled image collection split into named splits.

    Subclasses are dataclasses too (``repr=False`` keeps the short repr below: the
    generated one would print every row)."""

    spec: str
    samples: list[Sample]
    classes: list[str]
    task: str = "default"
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        sizes = {name: len(rows) for name, rows in self.split_indices().items()}
        return (
            f"{type(self).__name__}(spec={self.spec!r}, rows={len(self)}, "
            f"classes={len(self.classes)}, splits={sizes})"
        )

    @property
    def splits(self) -> list[str]:
        """Split names in first-appearance order (derived splits last)."""
        return list(self.split_indices())

    def split_indices(self) -> dict[str, list[int]]:
        """Rows of each split. Splits may overlap (VTAB's ``train800val200``): a row is
        stored once and named by every split that holds it. Adapters with derived splits
        override this and extend the base mapping."""
        out: dict[str, list[int]] = {}
        for i, s in enumerate(self.samples):
            out.setdefault(s.split, []).append(i)
        return out

    @abstractmethod
    def load(self, index: int) -> Image.Image:
        """Decode row ``index`` as an RGB image; raise :class:`ImageDecodeError` if impossible."""
