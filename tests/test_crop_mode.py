"""--crop-mode: squash resizes the whole image (no crop), is recorded in the store's
fingerprint (a resume with another mode is refused), and predict rebuilds it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from timm.data.transforms import str_to_interp_mode
from torchvision import transforms
from typer.testing import CliRunner

from losa_cache.adapter import save_adapter
from losa_cache.backbone import create_backbone
from losa_cache.backbone.crop import check_crop_mode
from losa_cache.cli.predict_cmds import predict
from losa_cache.extract import ExtractConfig, extract
from losa_cache.side import SideConfig, create_side
from losa_cache.store import StoreError, open_store


@pytest.fixture(scope="module")
def wide_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """imagefolder with 48x24 images whose left and right halves differ: a centre crop
    loses them, a squash keeps them."""
    root = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 4)):
        for i in range(n):
            a = rng.integers(0, 255, size=(24, 48, 3)).astype(np.uint8)
            path = root / split / f"c{i % 2}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(path)
    return root


def _extract(root: Path, store: Path, mode: str | None) -> None:
    extract(
        ExtractConfig(
            model="vit_micro",
            random_init=True,
            dataset=f"imagefolder:{root}",
            store=str(store),
            dtype="float32",
            workers=0,
            crop_mode=mode,
        ),
        progress=False,
    )


@pytest.fixture(scope="module")
def squash_store(wide_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("s") / "squash.zarr"
    _extract(wide_images, path, "squash")
    return path


def test_squash_features_are_the_whole_image_resized(wide_images: Path, squash_store: Path) -> None:
    store = open_store(str(squash_store))
    assert store.fingerprint["crop_mode"] == "squash" and store.fingerprint["crop_pct"] == 1.0
    b = create_backbone("vit_micro", random_init=True)
    p = b.preprocess
    squash = transforms.Compose(
        [
            transforms.Resize((32, 32), interpolation=str_to_interp_mode(p["interpolation"])),
            transforms.ToTensor(),
            transforms.Normalize(p["mean"], p["std"]),
        ]
    )
    row = 0
    image = Image.open(wide_images / str(store.sources[row])).convert("RGB")
    last = b.depth - 1
    want = b.intermediates(squash(image)[None], [last])[0][0]
    got = torch.from_numpy(np.asarray(store.features(last).read_torch(np.array([row]))[0]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    centre = b.intermediates(b.transform()(image)[None], [last])[0][0]  # timm's default
    assert not torch.allclose(centre, want, atol=1e-3)


def test_resume_with_other_mode_refused(wide_images: Path, squash_store: Path) -> None:
    before = sorted(p.name for p in squash_store.iterdir())
    with pytest.raises(StoreError, match="crop_mode"):
        _extract(wide_images, squash_store, "center")
    assert sorted(p.name for p in squash_store.iterdir()) == before  # nothing touched
    _extract(wide_images, squash_store, "squash")  # the same mode resumes (nothing to do)


def test_bad_mode_and_cropping_squash_refused() -> None:
    with pytest.raises(ValueError, match="unknown crop mode 'border'"):
        check_crop_mode("border")
    with pytest.raises(ValueError, match="drop --crop-pct"):
        ExtractConfig(
            model="vit_micro", dataset="demo", store="x", crop_mode="squash", crop_pct=0.875
        )


def test_predict_applies_the_adapters_crop_mode(
    wide_images: Path, squash_store: Path, tmp_path: Path
) -> None:
    store = open_store(str(squash_store))
    config = SideConfig(num_layers=4, dim=32, tokens=17, num_classes=2, rank=2, layers=[3])
    torch.manual_seed(0)
    model = create_side(config)
    with torch.no_grad():
        for q in model.parameters():
            q.add_(0.3 * torch.randn(q.shape))
    meta = {
        "fingerprint": store.fingerprint,
        "classes": store.classes(),
        "task": store.default_task,
    }
    adapter = save_adapter(tmp_path / "a", model, config, meta)
    rows = store.split_rows("test")
    with torch.no_grad():
        cached = model({3: store.features(3).read_torch(rows)}).softmax(-1)
    app = typer.Typer()
    app.command("predict")(predict)
    app.command("x")(lambda: None)
    files = [str(wide_images / str(store.sources[r])) for r in rows]
    out = CliRunner().invoke(
        app,
        ["predict", "--adapter", str(adapter), "--random-init", "--top-k", "2", "--json", *files],
    )
    assert out.exit_code == 0, out.output
    got = {r["path"]: r for r in json.loads(out.stdout)}
    for f, probs in zip(files, cached, strict=True):
        top = got[f]
        assert top["labels"][0] == int(probs.argmax())
        assert top["probs"][0] == pytest.approx(float(probs.max()), abs=1e-5)
