"""Video data sets in their real layouts (clips written with PyAV), sampling and bad videos."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from losa_cache.data import DatasetError, TorchImages, get_dataset
from losa_cache.data.video import ClipSampling, VideoDecodeError, clip_views
from tests.video._videos import frame_value, write_audio_only, write_video

pytestmark = pytest.mark.filterwarnings("ignore:.*every labelled image has class:UserWarning")


def _frame_ids(frames: list[Image.Image]) -> list[int]:
    """Which source frame each decoded frame is (frames are flat greys 20*k, lossy)."""
    return [round(float(np.asarray(f).mean()) / 20) for f in frames]


def test_sampling_centre_start_short_and_views() -> None:
    s = ClipSampling(frames=4, stride=2)
    assert s.span == 7
    assert s.indices(11) == [2, 4, 6, 8]  # centred: 2 frames of room each side
    assert ClipSampling(4, 2, "start").indices(11) == [0, 2, 4, 6]
    assert s.indices(4) == [0, 2, 3, 3]  # shorter than the clip: last frame repeated
    assert s.view_starts(11, 3) == [0, 2, 4] and s.view_starts(11, 1) == [2]
    with pytest.raises(ValueError, match="--frames"):
        ClipSampling(frames=0)
    with pytest.raises(ValueError, match="clip protocol"):
        ClipSampling(clip="random")


def test_videofolder_rows_labels_and_frames(video_tree: Path) -> None:
    ds = get_dataset(f"videofolder:{video_tree}", sampling=ClipSampling(frames=3, stride=2))
    assert ds.classes == ["jump", "run"]
    assert [s.source for s in ds.samples] == [
        "train/jump/v0.mp4", "train/jump/v1.mp4", "train/run/v0.mp4", "train/run/v1.mp4",
        "val/jump/v0.mp4", "val/run/v0.mp4",
    ]  # fmt: skip
    assert ds.split_indices() == {"train": [0, 1, 2, 3], "val": [4, 5]}
    frames = ds.load(2)  # train/run/v0: 9 frames, centre clip of span 5 -> 2, 4, 6
    assert len(frames) == 3 and frames[0].size == (32, 32) and frames[0].mode == "RGB"
    assert _frame_ids(frames) == [2, 4, 6]
    short = get_dataset(f"videofolder:{video_tree}", sampling=ClipSampling(frames=5, stride=2))
    assert _frame_ids(short.load(0)) == [0, 2, 4, 5, 5]  # 6 frames < span 9: last repeated


def test_framefolder_in_natural_frame_order(tmp_path: Path) -> None:
    root = tmp_path / "frames"
    for name, n in (("a", 12), ("b", 3)):
        clip = root / name / f"clip_{name}"
        clip.mkdir(parents=True)
        for k in range(n):
            Image.new("RGB", (32, 32), (frame_value(k),) * 3).save(clip / f"frame_{k}.png")
    (root / "a" / "clip_empty").mkdir()
    ds = get_dataset(f"framefolder:{root}", sampling=ClipSampling(frames=3, stride=4))
    assert [s.source for s in ds.samples] == ["a/clip_a", "a/clip_empty", "b/clip_b"]
    got = [int(np.asarray(f)[0, 0, 0]) for f in ds.load(0)]
    assert got == [frame_value(k) for k in (1, 5, 9)]  # frame_10 sorts after frame_9
    with pytest.raises(VideoDecodeError, match=r"clip_empty.*0 frames"):
        ds.load(1)


def _kinetics(root: Path, per_label: bool = False) -> Path:
    rows = [
        ("abseiling", "aaa", 5, 15, "train"),
        ("zumba", "bbb", 0, 10, "train"),
        ("abseiling", "gone", 1, 11, "train"),
        ("zumba", "ccc", 30, 40, "validate"),
    ]
    for stem in ("train", "validate"):
        with (root / f"{stem}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            w.writerows([r for r in rows if r[4] == stem])
    for label, vid, start, end, split in rows:
        if vid != "gone":
            folder = root / split / label if per_label else root / split
            write_video(folder / f"{vid}_{start:06d}_{end:06d}.mp4", frames=4)
    with (root / "test.csv").open("w", newline="") as f:
        f.write("youtube_id,time_start,time_end,split\nddd,0,10,test\n")
    write_video(root / "test" / "ddd_000000_000010.mp4", frames=4)
    return root


@pytest.mark.parametrize("per_label", [False, True])
def test_kinetics_csv_layout(tmp_path: Path, per_label: bool) -> None:
    root = _kinetics(tmp_path, per_label)
    with pytest.warns(UserWarning, match="1 clips.*train/gone_000001_000011.mp4"):
        ds = get_dataset(f"kinetics:{root}", sampling=ClipSampling(frames=2, stride=1))
    assert ds.classes == ["abseiling", "zumba"]
    names = [Path(s.source).name for s in ds.samples]
    assert names == ["aaa_000005_000015.mp4", "bbb_000000_000010.mp4",
                     "ccc_000030_000040.mp4", "ddd_000000_000010.mp4"]  # fmt: skip
    assert [s.label for s in ds.samples] == [0, 1, 1, -1]
    assert list(ds.split_indices()) == ["train", "val", "test"]
    assert len(ds.load(2)) == 2


def test_kinetics_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no Kinetics CSV"):
        get_dataset(f"kinetics:{tmp_path}")
    (tmp_path / "train.csv").write_text("label,youtube_id\nx,aaa\n")
    with pytest.raises(DatasetError, match="time_start"):
        get_dataset(f"kinetics:{tmp_path}")


def test_list_of_videos_and_mixed_lists(tmp_path: Path) -> None:
    write_video(tmp_path / "a.mp4", frames=5)
    write_video(tmp_path / "b.mp4", frames=5)
    (tmp_path / "videos.txt").write_text("a.mp4 0\nb.mp4 1 val\n")
    ds = get_dataset(f"list:{tmp_path / 'videos.txt'}", sampling=ClipSampling(2, 1))
    assert len(ds.load(1)) == 2 and ds.split_indices() == {"train": [0], "val": [1]}
    Image.new("RGB", (8, 8)).save(tmp_path / "c.png")
    (tmp_path / "mixed.txt").write_text("a.mp4 0\nc.png 1\n")
    with pytest.raises(DatasetError, match="mixes video files"):
        get_dataset(f"list:{tmp_path / 'mixed.txt'}")
    with pytest.raises(DatasetError, match="image data set"):
        get_dataset("demo", sampling=ClipSampling(2, 1))


def bad_videos(folder: Path) -> dict[str, str]:
    """One bad file of each kind under ``folder`` -> the words its error must contain."""
    good = write_video(folder / "good.mp4", frames=6).read_bytes()
    (folder / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (folder / "corrupt.mp4").write_bytes(b"\x00\x01not a video" * 20)
    (folder / "empty.mp4").write_bytes(b"")
    write_audio_only(folder / "audio.mp4")
    mkv = write_video(folder / "tmp.mkv", frames=6)  # an unknown codec id, same length
    (folder / "codec.mkv").write_bytes(
        mkv.read_bytes().replace(b"V_MPEG4/ISO/ASP", b"V_LOSA/UNKNOWN!")
    )
    mkv.unlink()
    return {"truncated.mp4": "cut short", "corrupt.mp4": "InvalidData",
            "empty.mp4": "0 bytes", "audio.mp4": "no video stream",
            "codec.mkv": "no decoder"}  # fmt: skip


def test_bad_videos_are_named_items_not_crashes(tmp_path: Path) -> None:
    expected = bad_videos(tmp_path / "data" / "cls")
    ds = get_dataset(f"videofolder:{tmp_path / 'data'}", sampling=ClipSampling(4, 1))
    items = TorchImages(ds, _to_tensor, list(range(len(ds))))
    for k, sample in enumerate(ds.samples):
        x, row, ok, error = items[k]
        assert x.shape == (3, 4, 32, 32) and row == k
        name = Path(sample.source).name
        if name == "good.mp4":
            assert ok and error == ""
        else:
            assert not ok and name in error and expected[name] in error, error
            assert not x.any()


def test_frames_over_max_pixels_are_refused(tmp_path: Path) -> None:
    write_video(tmp_path / "v" / "c" / "a.mp4", frames=3)
    ds = get_dataset(f"videofolder:{tmp_path / 'v'}", max_pixels=1000)
    with pytest.raises(VideoDecodeError, match=r"over the limit of 1,000.*--max-pixels"):
        ds.load(0)


def _to_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im.resize((32, 32)), dtype=np.float32)).permute(2, 0, 1)


def test_clip_views_cover_time_and_space(tmp_path: Path) -> None:
    write_video(tmp_path / "v" / "c" / "wide.mp4", frames=11)
    ds = get_dataset(f"videofolder:{tmp_path / 'v'}", sampling=ClipSampling(frames=2, stride=2))

    def wide(im: Image.Image) -> torch.Tensor:  # 32 x 48, channel 1 = the column index
        x = torch.from_numpy(np.asarray(im.resize((48, 32)), dtype=np.float32)).permute(2, 0, 1)
        x[1] = torch.arange(48.0)
        return x

    views = clip_views(ds.frames_of(0), ds.sampling, wide, temporal_clips=3, spatial_crops=3)
    assert views.shape == (9, 3, 2, 32, 32)
    starts = [round(float(views[3 * t, 0, 0].mean()) / 20) for t in range(3)]
    assert starts == [0, 4, 8]  # room 11 - 3 = 8, spread over 3 views
    assert [int(views[k, 1, 0, 0, 0]) for k in range(3)] == [0, 8, 16]  # left, centre, right


def test_missing_pyav_is_one_clear_error(video_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "av", None)  # `import av` fails
    with pytest.raises(DatasetError, match=r"losa-cache\[video\]"):
        get_dataset(f"videofolder:{video_tree}")
