"""The one file opener (data/opener.py): only regular files, never past a size bound, never
a blocking open; names that are not UTF-8 are left out and named; labels stay in range.

Every case here hung, blew up memory or failed a whole extraction before (issue 26, items
12, 14, 15, 16): a FIFO named ``p.jpg`` blocked ``open()`` forever, ``/dev/zero`` was read
until memory ran out, a 3 GB sparse ``huge.jpg`` was read whole, a name with a byte that is
not UTF-8 failed the store's identity hash, a label of 10**30 overflowed the int32 labels.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from losa_cache.data import DatasetError, ImageDecodeError, get_dataset, open_rgb
from losa_cache.data.files import MAX_CLASS_INDEX, LabelLine, unique_label_lines
from losa_cache.data.opener import FileRefused, open_regular, printable, read_regular
from tests.data.conftest import WriteImage, write_lines

BAD_NAME = os.fsdecode(b"bad\xff.jpg")  # the name a Latin-1 system wrote, as Python sees it


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """A blocking open fails the test after 20 s instead of hanging the suite."""

    def stop(*_: object) -> None:
        raise TimeoutError("a read blocked: the opener must never wait on a FIFO")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "p.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageDecodeError, match=r"not a regular file \(a FIFO/pipe\)"):
        open_rgb(fifo)
    with pytest.raises(FileRefused, match="FIFO"):
        open_regular(fifo, None).close()


def test_devices_and_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match=r"a character device"):
        open_rgb("/dev/zero")
    with pytest.raises(ImageDecodeError, match="a folder, not a file"):
        open_rgb(tmp_path)
    with pytest.raises(ImageDecodeError, match="file not found"):
        open_rgb(tmp_path / "absent.png")


def test_a_sparse_giant_is_refused_by_its_size_unread(tmp_path: Path) -> None:
    huge = tmp_path / "huge.jpg"
    with huge.open("wb") as f:
        f.truncate(3 * 2**30)  # 3 GB, no blocks: only a read would cost memory
    with pytest.raises(ImageDecodeError, match=r"3,221,225,472 bytes is over the limit of "
                       r"268,435,456; pass a larger --max-file-bytes"):  # fmt: skip
        open_rgb(huge)


def test_the_bound_is_exact_and_the_image_unchanged(
    tmp_path: Path, write_image: WriteImage
) -> None:
    path = write_image(tmp_path / "a.png", size=(16, 12))
    size = path.stat().st_size
    with pytest.raises(ImageDecodeError, match=f"over the limit of {size - 1:,}"):
        open_rgb(path, max_bytes=size - 1)
    exact = np.asarray(open_rgb(path, max_bytes=size))
    assert np.array_equal(exact, np.asarray(open_rgb(path)))


def test_a_file_longer_than_its_reported_size_is_cut_at_the_bound() -> None:
    """/proc files report size 0; reads still stop one byte past the bound."""
    status = Path("/proc/self/status")
    if not status.is_file():
        pytest.skip("no /proc here")
    assert len(read_regular(status, 1 << 20)) > 16
    with pytest.raises(FileRefused, match="over the limit of 16 bytes"):
        read_regular(status, 16)


def test_a_list_file_that_is_a_fifo_is_one_line(tmp_path: Path) -> None:
    fifo = tmp_path / "list.txt"
    os.mkfifo(fifo)
    with pytest.raises(DatasetError, match=r"not a regular file \(a FIFO/pipe\)"):
        get_dataset(f"list:{fifo}")


def test_extract_options_reach_the_rows(tmp_path: Path, write_image: WriteImage) -> None:
    """``max_file_bytes`` given to get_dataset bounds every row's read."""
    big = write_image(tmp_path / "pets" / "cat" / "big.png", size=(64, 64))
    write_image(tmp_path / "pets" / "dog" / "d.png")
    ds = get_dataset(f"imagefolder:{tmp_path / 'pets'}", max_file_bytes=big.stat().st_size - 1)
    with pytest.raises(ImageDecodeError, match="--max-file-bytes"):
        ds.load(0)
    assert ds.load(1).size == (8, 6)


def test_video_files_go_through_the_opener(tmp_path: Path) -> None:
    pytest.importorskip("av")
    from losa_cache.data.video import VideoDecodeError, open_video

    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    with pytest.raises(VideoDecodeError, match="FIFO"):
        open_video(fifo)
    sparse = tmp_path / "long.mp4"
    with sparse.open("wb") as f:
        f.truncate(2**20)
    with pytest.raises(VideoDecodeError, match="--max-file-bytes"):
        open_video(sparse, max_bytes=2**20 - 1)


def test_non_utf8_names_are_left_out_and_named(tmp_path: Path, write_image: WriteImage) -> None:
    root = tmp_path / "pets"
    write_image(root / "cat" / "a.png")
    write_image(root / "cat" / BAD_NAME)
    write_image(root / "dog" / "b.png")
    write_image(root / os.fsdecode(b"f\xe9lin") / "c.png")  # a class folder too
    with pytest.warns(UserWarning) as caught:
        ds = get_dataset(f"imagefolder:{root}")
    text = " ".join(str(w.message) for w in caught)
    assert "bad\\xff.jpg" in text and "f\\xe9lin" in text and "not valid UTF-8" in text
    assert [s.source for s in ds.samples] == ["cat/a.png", "dog/b.png"]
    assert ds.classes == ["cat", "dog"]


def test_printable_keeps_utf8_and_escapes_the_rest() -> None:
    assert printable("caf\u00e9/a.png") == "caf\u00e9/a.png"
    assert printable(BAD_NAME) == "bad\\xff.jpg"
    printable(BAD_NAME).encode("utf-8")  # any output takes it


@pytest.mark.parametrize("label", ["10" + "0" * 30, str(2**31)])
def test_a_huge_list_label_is_one_line(tmp_path: Path, label: str) -> None:
    file = write_lines(tmp_path / "list.txt", ["a.png 0", f"b.png {label}"])
    with pytest.raises(DatasetError, match=r"list\.txt:2: label .* is over the largest label"):
        get_dataset(f"list:{file}")


def test_a_task_label_beyond_any_class_count_is_refused() -> None:
    ok = LabelLine("a.png", str(MAX_CLASS_INDEX), "t.txt:1")
    assert unique_label_lines([ok]) == [ok]
    with pytest.raises(DatasetError, match=r"t\.txt:2: label 1000000000000000000000000000000 "):
        unique_label_lines([ok, LabelLine("b.png", str(10**30), "t.txt:2")])


def test_any_adapter_giving_a_non_utf8_source_is_refused_by_name() -> None:
    """The backstop every adapter passes (base.ImageDataset): a source no store can record
    is one line naming its row, never "surrogates not allowed" deep in the store write."""
    from losa_cache.data.base import Sample
    from losa_cache.data.listfile import ListFileDataset

    rows = [Sample("a.png", 0, "train"), Sample(BAD_NAME, 0, "train")]
    with pytest.raises(DatasetError, match=r"row 1's file name 'bad\\\\xff\.jpg' is not valid"):
        ListFileDataset(spec="list:x", samples=rows, classes=["0"])
