"""The one interface every data set adapter implements.

An adapter is a deterministic, ordered list of :class:`Sample` rows plus a way to
decode row ``i`` into an RGB PIL image. Row order is the store's row order, so it
must never depend on file-system listing order, time or randomness.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np
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


class SampleTable(Sequence[Sample]):
    """An immutable list of :class:`Sample` held in a few numpy arrays.

    iNat2021 has 2.7M rows: as a list of dataclasses that is ~0.5 GB pickled into every
    decoding worker and seconds to (un)pickle; here it is the bytes of its paths plus
    9 bytes a row, pickled as numpy arrays.
    """

    def __init__(self, samples: Iterable[Sample]) -> None:
        samples = list(samples)
        encoded = [s.source.encode("utf-8", "surrogateescape") for s in samples]
        total = sum(len(e) for e in encoded)
        self._offsets = np.zeros(len(samples) + 1, np.uint32 if total < 2**32 else np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self._chars = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        self._labels = np.array([s.label for s in samples], dtype=np.int32)
        names = list(dict.fromkeys(s.split for s in samples))
        code = {name: i for i, name in enumerate(names)}
        self._splits = np.array(
            [code[s.split] for s in samples], dtype=np.uint8 if len(names) < 256 else np.int32
        )
        self._names = names

    def __len__(self) -> int:
        return len(self._labels)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = range(len(self))[index]  # IndexError and negative indices as a list does
        raw = self._chars[int(self._offsets[i]) : int(self._offsets[i + 1])].tobytes()
        return Sample(
            raw.decode("utf-8", "surrogateescape"),
            int(self._labels[i]),
            self._names[self._splits[i]],
        )

    def require_utf8(self, where: str) -> None:
        """Every source must be UTF-8 text: stores, JSON and terminals take nothing else (a
        file name from another system's encoding reaches Python as lone surrogates). Folder
        adapters leave such files out with a warning; this refuses any that still come."""
        data = self._chars.tobytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as err:
            row = int(np.searchsorted(self._offsets, err.start, side="right")) - 1
            name = self[row].source.encode("utf-8", "surrogateescape")
            raise DatasetError(
                f"{where}: row {row}'s file name {name.decode('utf-8', 'backslashreplace')!r} "
                "is not valid UTF-8, so it cannot be recorded; rename the file (or fix its entry)"
            ) from None

    def split_rows(self) -> dict[str, list[int]]:
        """Rows of each split, splits in first-appearance order."""
        return {
            name: np.flatnonzero(self._splits == code).tolist()
            for code, name in enumerate(self._names)
        }

    @property
    def labels(self) -> np.ndarray:
        """Every row's label (-1 = none), int32, read-only."""
        view = self._labels.view()
        view.flags.writeable = False
        return view

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SampleTable({len(self)} rows, splits={self._names})"


@dataclass(repr=False)
class ImageDataset(ABC):
    """An ordered, labelled image collection split into named splits.

    Subclasses are dataclasses too (``repr=False`` keeps the short repr below: the
    generated one would print every row)."""

    spec: str
    samples: Sequence[Sample]  # stored as a SampleTable
    classes: list[str]
    task: str = "default"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.samples, SampleTable):
            self.samples = SampleTable(self.samples)
        self.samples.require_utf8(self.spec)

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
        return self.table.split_rows()

    @property
    def table(self) -> SampleTable:
        """The rows as a :class:`SampleTable` (labels as one array)."""
        if not isinstance(self.samples, SampleTable):  # assigned after construction
            self.samples = SampleTable(self.samples)
        return self.samples

    @abstractmethod
    def load(self, index: int) -> Image.Image:
        """Decode row ``index`` as an RGB image; raise :class:`ImageDecodeError` if impossible."""


def warn_if_one_class(used: Collection[str], where: str) -> None:
    """Warn when every labelled row has the same class (``used``: the classes that occur).

    A classifier learns nothing from one class; rows without a label do not count, so a
    set of images to predict on stays silent.
    """
    if len(used) == 1:
        warnings.warn(
            f"{where}: every labelled image has class {next(iter(used))!r}, so training on it "
            "cannot learn anything; check that the labels (or class folders) are all there",
            UserWarning,
            stacklevel=3,
        )
