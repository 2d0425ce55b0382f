"""Every setting that changes the stored bits is part of a store's identity: a resume,
``--extend`` or Dask worker with another value is refused naming it, and the manifest
records the resolved value (``--precision auto`` as the dtype it computed in)."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import pytest
import zarr

from losa_cache.extract import IDENTITY_KINDS, SETTING, ExtractConfig, identity_fields
from losa_cache.store import StoreError, open_store
from losa_cache.store import schema as S


@pytest.fixture
def make(tiny_extract):
    return functools.partial(tiny_extract, dtype="float32", precision="auto", device="cpu")


def test_every_config_field_declares_how_it_bears_on_the_stored_bits() -> None:
    for f in dataclasses.fields(ExtractConfig):
        assert f.metadata.get("identity") in IDENTITY_KINDS, f.name
    assert {f.name for f in identity_fields(SETTING)} >= {"precision", "max_pixels"}


def test_manifest_records_the_resolved_precision(make, tmp_path: Path) -> None:
    s = open_store(make(tmp_path / "a.zarr"))
    assert s.manifest.extract_config["precision"] == "fp32"  # auto on the CPU
    assert s.manifest.identity["settings"]["precision"] == "fp32"


def unfinish(path: str) -> None:
    """What a killed run leaves: some shards without their done marker."""
    group = zarr.open_group(path, mode="r+")
    group[S.DONE][1] = 0


@pytest.mark.parametrize("extend", [False, True])
def test_a_resume_with_another_precision_is_refused(make, tmp_path: Path, extend: bool) -> None:
    path = make(tmp_path / "a.zarr")
    if not extend:
        unfinish(path)
    before = open_store(path).manifest.to_dict()
    with pytest.raises(StoreError, match=r"settings\.precision: store has 'fp32', this run has "
                       "'bf16'"):  # fmt: skip
        make(path, precision="bf16", extend=extend, taps="blocks,embed" if extend else "blocks")
    assert open_store(path).manifest.to_dict() == before, "nothing changed"
    make(path, precision="fp32")  # the same setting, spelled out, resumes
    assert open_store(path).complete


def test_a_resume_with_another_max_pixels_is_refused(make, tmp_path: Path) -> None:
    path = make(tmp_path / "a.zarr")
    unfinish(path)
    with pytest.raises(StoreError, match=r"settings\.max_pixels"):
        make(path, max_pixels=1000)


def forget_settings(path: str) -> None:
    """A store written before settings were recorded."""
    meta = Path(path) / "zarr.json"
    doc = json.loads(meta.read_text())
    del doc["attributes"]["losa_cache"]["identity"]["settings"]
    meta.write_text(json.dumps(doc))


def test_a_store_without_recorded_settings_resumes_with_the_defaults_only(
    make, tmp_path: Path
) -> None:
    path = make(tmp_path / "old.zarr")
    forget_settings(path)
    unfinish(path)
    with pytest.raises(StoreError, match=r'settings\.precision: store has "not recorded'):
        make(path, precision="bf16")
    make(path)  # the defaults: what such a store was made with
    assert open_store(path).complete
