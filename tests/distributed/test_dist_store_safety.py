"""Object stores get the local rules: a prefix holding someone else's objects is never
written into, a bucket root works (its lease lives inside it), a store there resumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import fsspec
import pytest

from losa_cache.extract import ExtractConfig, extract
from losa_cache.store import StoreError, open_store

MICRO = dict(model="vit_micro", random_init=True, workers=0, dataset="demo", limit=4)


def bucket(s3: dict, name: str) -> str:
    o = s3["options"]
    boto3.client(
        "s3",
        endpoint_url=o["endpoint_url"],
        aws_access_key_id=o["key"],
        aws_secret_access_key=o["secret"],
        region_name="us-east-1",
    ).create_bucket(Bucket=name)
    return f"s3://{name}"


def test_prefix_with_foreign_objects_is_refused_and_kept(s3: dict[str, Any]) -> None:
    url, options = f"s3://{s3['bucket']}/photos", s3["options"]
    fs = fsspec.filesystem("s3", **options)
    fs.pipe_file(f"{s3['bucket']}/photos/holiday.jpg", b"jpeg bytes")
    with pytest.raises(StoreError, match=r"photos is not empty .*holiday\.jpg"):
        extract(ExtractConfig(store=url, **MICRO), progress=False, storage_options=options)
    fs.invalidate_cache()
    assert fs.ls(f"{s3['bucket']}/photos", detail=False) == [f"{s3['bucket']}/photos/holiday.jpg"]
    assert fs.cat_file(f"{s3['bucket']}/photos/holiday.jpg") == b"jpeg bytes"


def test_store_at_a_bucket_root_is_created_and_resumed(s3: dict[str, Any]) -> None:
    url, options = bucket(s3, "root-store"), s3["options"]
    first = extract(ExtractConfig(store=url, **MICRO), progress=False, storage_options=options)
    assert not first.resumed and open_store(url, options).complete
    again = extract(ExtractConfig(store=url, **MICRO), progress=False, storage_options=options)
    assert again.resumed and again.shards_written == 0


def test_cluster_run_into_a_folder_of_notes_is_refused_before_any_cluster_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from losa_cache import distributed as D

    def no_cluster(*_a: object) -> None:
        raise AssertionError("a cluster was started for a refused store")

    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("keep me\n")
    monkeypatch.setattr(D, "connect", no_cluster)
    with pytest.raises(StoreError, match=r"notes is not empty .*todo\.txt"):
        D.extract_distributed(ExtractConfig(store=str(folder), **MICRO), cluster="local:1")
    assert [p.name for p in folder.iterdir()] == ["todo.txt"]
    assert (folder / "todo.txt").read_text() == "keep me\n"
