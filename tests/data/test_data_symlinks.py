"""imagefolder with symlinked folders: loops add nothing and end, real links still count."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from losa_cache.data import get_dataset

if TYPE_CHECKING:
    from tests.data.conftest import WriteImage


def _rows(root: Path) -> list[tuple[str, int]]:
    ds = get_dataset(f"imagefolder:{root}")
    return [(ds.classes[s.label], s.source) for s in ds.samples]


def test_a_loop_back_to_the_class_folder_adds_no_rows(
    tmp_path: Path, write_image: WriteImage
) -> None:
    root = tmp_path / "pets"
    write_image(root / "cat" / "1.png")
    write_image(root / "cat" / "sub" / "2.png")
    write_image(root / "dog" / "1.png")
    (root / "cat" / "sub" / "loop").symlink_to("..", target_is_directory=True)
    with pytest.warns(UserWarning, match=r"cat/sub/loop leads to .*cat.*counted once"):
        rows = _rows(root)
    assert rows == [("cat", "cat/1.png"), ("cat", "cat/sub/2.png"), ("dog", "dog/1.png")]


def test_two_loops_end_quickly(tmp_path: Path, write_image: WriteImage) -> None:
    """os.walk(followlinks=True) never finishes here; run it in a child we can time out."""
    root = tmp_path / "pets"
    for rel in ["cat/a/1.png", "cat/b/2.png", "dog/3.png"]:
        write_image(root / rel)
    (root / "cat" / "a" / "up").symlink_to("..", target_is_directory=True)
    (root / "cat" / "b" / "side").symlink_to("../a", target_is_directory=True)
    (root / "cat" / "a" / "back").symlink_to("../b", target_is_directory=True)
    code = (
        "import warnings; warnings.simplefilter('ignore')\n"
        "from losa_cache.data import get_dataset\n"
        f"print(sorted(s.source for s in get_dataset('imagefolder:{root}').samples))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == str(["cat/a/1.png", "cat/b/2.png", "dog/3.png"])


def test_a_link_into_another_class_does_not_relabel_it(
    tmp_path: Path, write_image: WriteImage
) -> None:
    root = tmp_path / "pets"
    write_image(root / "cat" / "1.png")
    write_image(root / "dog" / "1.png")
    (root / "cat" / "dogs").symlink_to(root / "dog", target_is_directory=True)
    (root / "cat" / "everything").symlink_to(root, target_is_directory=True)
    with pytest.warns(UserWarning, match="counted once"):
        rows = _rows(root)
    assert rows == [("cat", "cat/1.png"), ("dog", "dog/1.png")]


def test_linked_folders_that_are_not_loops_still_count(
    tmp_path: Path, write_image: WriteImage
) -> None:
    elsewhere = tmp_path / "elsewhere"
    write_image(elsewhere / "more_cats" / "x.png")
    write_image(elsewhere / "birds" / "b.png")
    write_image(elsewhere / "birds" / "deep" / "c.png")
    root = tmp_path / "pets"
    write_image(root / "cat" / "1.png")
    (root / "cat" / "extra").symlink_to(elsewhere / "more_cats", target_is_directory=True)
    (root / "bird").symlink_to(elsewhere / "birds", target_is_directory=True)
    (root / "cat" / "dangling").symlink_to(tmp_path / "gone", target_is_directory=True)
    assert _rows(root) == [
        ("bird", "bird/b.png"),
        ("bird", "bird/deep/c.png"),
        ("cat", "cat/1.png"),
        ("cat", "cat/extra/x.png"),
    ]
    assert get_dataset(f"imagefolder:{root}").load(3).size == (8, 6)


def test_two_links_to_one_folder_count_it_once(tmp_path: Path, write_image: WriteImage) -> None:
    shared = tmp_path / "shared"
    write_image(shared / "s.png")
    root = tmp_path / "pets"
    write_image(root / "cat" / "1.png")
    (root / "cat" / "a").symlink_to(shared, target_is_directory=True)
    (root / "cat" / "b").symlink_to(shared, target_is_directory=True)
    with pytest.warns(UserWarning, match=r"cat/b leads to .*cat/a"):
        rows = _rows(root)
    assert rows == [("cat", "cat/1.png"), ("cat", "cat/a/s.png")]
