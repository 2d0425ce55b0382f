"""Where a store lives: local paths and fsspec URLs, their storage options, opening the
Zarr group, and I/O failures as one :class:`StoreError` naming the fix.

Below :mod:`~losa_cache.store.store`, :mod:`~losa_cache.store.target` and
:mod:`~losa_cache.store.lease`, which all need these helpers and nothing of each other.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zarr

from losa_cache.oserrors import os_failure
from losa_cache.store.errors import StoreError

__all__ = [
    "STORAGE_OPTIONS_ENV",
    "is_remote",
    "local_path",
    "open_group",
    "parse_storage_options",
    "storage_errors",
    "storage_options_for",
]


#: JSON fsspec storage options used for store URLs when none are passed (e.g. an S3
#: endpoint), so training, sweeps and every command reach the same store without flags.
STORAGE_OPTIONS_ENV = "LOSA_CACHE_STORAGE_OPTIONS"


def is_remote(path: str | Path) -> bool:
    """True for fsspec URLs other than ``file://`` (those have no local lock or path)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def local_path(path: str | Path) -> str:
    """``file://`` URLs as plain paths: zarr's LocalStore writes atomically, fsspec's does not."""
    return str(path).removeprefix("file://")


def storage_options_for(path: str | Path, storage_options: dict | None = None) -> dict | None:
    """The options to open ``path`` with: the given ones, else $LOSA_CACHE_STORAGE_OPTIONS."""
    if not is_remote(path):
        return None
    if storage_options is not None:
        return storage_options
    return parse_storage_options(os.environ.get(STORAGE_OPTIONS_ENV), STORAGE_OPTIONS_ENV)


def parse_storage_options(text: str | None, where: str = "--storage-options") -> dict | None:
    """A JSON object of fsspec options (None for empty); the error names the bad input."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON ({e}): {text[:80]!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f'{where} must be a JSON object, e.g. {{"endpoint_url": "http://..."}}')
    return value


def open_group(
    path: str | Path, mode: str = "r", storage_options: dict | None = None, **kwargs: Any
) -> zarr.Group:
    """Open a Zarr group from a local path or an fsspec URL (``kwargs`` go to zarr)."""
    options = storage_options_for(path, storage_options)
    if options:
        kwargs["storage_options"] = options
    with storage_errors(path):
        return zarr.open_group(local_path(path), mode=mode, **kwargs)


#: errno -> what it means for a store and what to do about it


@contextlib.contextmanager
def storage_errors(path: str | Path, retry: str = "rerun the same command") -> Iterator[None]:
    """Store I/O failures (full or read-only disk, no permission, no cloud credentials) as
    one :class:`StoreError` that names the store and the fix; ``retry`` says how to go on
    once the cause is fixed. Other errors pass through unchanged."""
    try:
        yield
    except StoreError:
        raise
    except OSError as e:
        text = os_failure(e.errno, "store path", retry, kept=False)  # retry says what is kept
        if text is None:
            raise
        where = f" ({e.filename})" if e.filename else ""
        raise StoreError(f"store {path}{where}: {text}") from e
    except Exception as e:
        if not _missing_credentials(e):
            raise
        raise StoreError(
            f"no credentials for {path} ({e}): set them as the cloud SDK expects (e.g. "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE), or pass them in "
            f'--storage-options / ${STORAGE_OPTIONS_ENV}, e.g. \'{{"key": ..., "secret": ...}}\''
        ) from e


def _missing_credentials(e: BaseException) -> bool:
    """botocore's and google-auth's "no credentials" errors (matched by name: both
    packages are optional)."""
    names = {"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"}
    return type(e).__name__ in names
