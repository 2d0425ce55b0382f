"""Adapter files: save -> load round trip, atomic writes, clear errors, fingerprint checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import losa_cache.adapter as A
from losa_cache.adapter import (
    ADAPTER_JSON,
    ADAPTER_WEIGHTS,
    FORMAT_VERSION,
    AdapterError,
    check_fingerprint,
    load_adapter,
    save_adapter,
)
from losa_cache.side import SideConfig, SideNetwork, create_side

FP = {
    "model": "losa_micro_vit",
    "weights_sha256": "ab" * 32,
    "weights_source": "random-init:seed=0",
    "input_size": [3, 32, 32],
    "interpolation": "bicubic",
    "crop_pct": 1.0,
    "crop_mode": "center",
    "mean": [0.4914, 0.4822, 0.4465],
    "std": [0.247, 0.2435, 0.2616],
}
CLASSES = [f"c{i}" for i in range(5)]


def trained_side(seed: int = 0, **overrides) -> tuple[SideNetwork, SideConfig]:
    """A losa side network with every weight perturbed (a stand-in for a trained one)."""
    config = SideConfig(
        **{
            "num_layers": 4,
            "dim": 16,
            "tokens": 5,
            "num_classes": 5,
            "rank": 2,
            "layers": "all",
            **overrides,
        }
    )
    model = create_side(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    return model.eval(), config


def features(config: SideConfig, batch: int = 3) -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return {
        i: torch.randn(batch, config.tokens, config.dim, generator=gen)
        for i in range(config.num_layers)
    }


def meta(**overrides) -> dict:
    return {
        "fingerprint": FP,
        "classes": CLASSES,
        "task": "shapes",
        "train_config": {"steps": 10, "lr": 0.05},
        "metrics": {"test_acc": 0.5},
        **overrides,
    }


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, SideNetwork, SideConfig]:
    model, config = trained_side()
    return save_adapter(tmp_path / "ad", model, config, meta()), model, config


def test_round_trip_gives_identical_logits(saved) -> None:
    path, model, config = saved
    adapter = load_adapter(path)
    feats = features(config)
    assert not adapter.model.training
    assert adapter.config == config
    assert torch.equal(adapter.model(feats), model(feats))
    assert adapter.classes == CLASSES and adapter.fingerprint == FP
    assert adapter.layers == list(model.required_layers) == [0, 1, 2, 3]
    assert adapter.task == "shapes"


def test_json_contents_sorted_and_complete(saved) -> None:
    path, model, config = saved
    text = (path / ADAPTER_JSON).read_text()
    record = json.loads(text)
    assert text == json.dumps(record, indent=2, sort_keys=True) + "\n"
    assert record["format_version"] == FORMAT_VERSION
    assert SideConfig.from_dict(record["side_config"]) == config
    assert record["metrics"] == {"test_acc": 0.5} and record["train_config"]["steps"] == 10
    assert record["head"]["num_classes"] == 5 and record["layers"] == [0, 1, 2, 3]
    assert {"torch", "timm", "losa-cache"} <= set(record["versions"]) and record["created"]
    with safe_open(str(path / ADAPTER_WEIGHTS), "pt") as f:
        assert f.metadata()["losa_cache_format_version"] == str(FORMAT_VERSION)
        assert set(f.keys()) == set(model.state_dict())


def test_linear_probe_round_trip(tmp_path: Path) -> None:
    model, config = trained_side(method="linear")
    adapter = load_adapter(save_adapter(tmp_path, model, config, meta()))
    feats = features(config)
    assert adapter.layers == [3]
    assert torch.equal(adapter.model(feats), model(feats))


def test_crash_never_leaves_json_pointing_to_other_weights(saved, monkeypatch) -> None:
    path, _, config = saved
    other, _ = trained_side(seed=1)
    import losa_cache.outdir as O

    real_replace = O.os.replace

    def crash_on_json(src, dst):
        if Path(dst).name == ADAPTER_JSON:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(O.os, "replace", crash_on_json)
    with pytest.raises(OSError, match=f"cannot write .*{ADAPTER_JSON}"):
        save_adapter(path, other, config, meta())
    monkeypatch.undo()
    assert (path / ADAPTER_WEIGHTS).is_file()
    assert not (path / ADAPTER_JSON).exists()  # the new weights landed, no stale json
    assert sorted(p.name for p in path.iterdir()) == [ADAPTER_WEIGHTS]  # no tmp files
    with pytest.raises(FileNotFoundError, match="did not finish"):
        load_adapter(path)


def test_crash_while_writing_weights_keeps_old_adapter(saved, monkeypatch) -> None:
    path, model, config = saved

    def fail(*_args, **_kwargs):
        raise OSError("killed")

    monkeypatch.setattr(A, "_write_weights", fail)
    with pytest.raises(OSError):
        save_adapter(path, trained_side(seed=1)[0], config, meta())
    feats = features(config)
    assert torch.equal(load_adapter(path).model(feats), model(feats))
    assert sorted(p.name for p in path.iterdir()) == [ADAPTER_JSON, ADAPTER_WEIGHTS]


def test_load_errors_are_clear(saved, tmp_path: Path) -> None:
    path, _, _ = saved
    with pytest.raises(FileNotFoundError, match="no adapter directory"):
        load_adapter(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"holds no adapter\.json"):
        load_adapter(tmp_path)
    (path / ADAPTER_JSON).write_text("{not json")
    with pytest.raises(AdapterError, match="unreadable"):
        load_adapter(path)


def test_missing_or_swapped_weights_refused(saved, tmp_path: Path) -> None:
    path, _, config = saved
    other = save_adapter(tmp_path / "other", trained_side(seed=3)[0], config, meta())
    (path / ADAPTER_WEIGHTS).write_bytes((other / ADAPTER_WEIGHTS).read_bytes())
    with pytest.raises(AdapterError, match="different saves"):
        load_adapter(path)
    (path / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match=r"adapter\.safetensors is missing"):
        load_adapter(path)


def test_weights_config_mismatch_refused(saved) -> None:
    path, _, _ = saved
    record = json.loads((path / ADAPTER_JSON).read_text())
    record["side_config"]["rank"] = 3
    (path / ADAPTER_JSON).write_text(json.dumps(record))
    with pytest.raises(AdapterError, match="do not fit the side config"):
        load_adapter(path)


def test_save_validates_meta(tmp_path: Path) -> None:
    model, config = trained_side()
    with pytest.raises(ValueError, match="fingerprint"):
        save_adapter(tmp_path, model, config, {"classes": CLASSES})
    with pytest.raises(ValueError, match="3 class names"):
        save_adapter(tmp_path, model, config, meta(classes=["a", "b", "c"]))
    assert not any(tmp_path.iterdir())


def test_fingerprint_ignores_source_lists_every_difference() -> None:
    check_fingerprint(
        FP,
        {
            **FP,
            "weights_source": "checkpoint:/x.pth",
            "input_size": (3, 32, 32),
            "mean": (0.4914, 0.4822, 0.4465),
        },
    )
    other = {**FP, "weights_sha256": "cd" * 32, "crop_pct": 0.875}
    with pytest.raises(ValueError) as err:
        check_fingerprint(FP, other)
    msg = str(err.value)
    assert "weights_sha256" in msg and "crop_pct" in msg and "model:" not in msg
    assert "Use the backbone the adapter was trained on" in msg


def test_fingerprint_of_other_random_seed_refused() -> None:
    from losa_cache.backbone import create_backbone

    fp0 = create_backbone("vit_micro", random_init=True, seed=0).fingerprint()
    fp1 = create_backbone("vit_micro", random_init=True, seed=1).fingerprint()
    check_fingerprint(fp0, fp0)
    with pytest.raises(ValueError, match="weights_sha256: adapter"):
        check_fingerprint(fp0, fp1)
