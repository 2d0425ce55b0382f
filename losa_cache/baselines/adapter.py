"""A live baseline's adapter, read back onto a backbone: ``predict --adapter RUN`` for them.

A baseline's adapter (written by :meth:`LiveBaseline.save_adapter`) holds only what it
trained: the tensors in ``adapter.safetensors`` (head included; lora: also peft's own
``save_pretrained`` folder ``peft/``), never the frozen rest of the backbone. So it is
used *with* a backbone: :meth:`BaselineAdapter.bind` rebuilds the baseline on it (the
same :func:`build_baseline` the run used), loads the trained tensors (lora's through
peft's loader, from ``peft/``), and checks that every trained tensor landed.

    adapter = load_adapter("runs/lora")            # a BaselineAdapter for this format
    adapter.bind(create_backbone("vit_b", ...))    # predict_images does this
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from losa_cache.baselines.methods import (
    ADAPTER_FORMAT,
    IMAGES,
    PEFT_DIR,
    build_baseline,
    saved_options,
)
from losa_cache.files import sha256_file
from losa_cache.side import SideConfig

__all__ = [
    "BaselineAdapter",
    "copy_baseline_adapter",
    "is_baseline_adapter",
    "read_baseline_adapter",
]

WEIGHTS = "adapter.safetensors"


def is_baseline_adapter(root: str | Path) -> bool:
    """Whether ``root/adapter.json`` is a live baseline's (cheap: reads the json only)."""
    file = Path(root) / "adapter.json"
    try:
        return json.loads(file.read_text()).get("format") == ADAPTER_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


@dataclass
class BaselineAdapter:
    """A live baseline's trained tensors and description; :meth:`bind` makes its model.

    Duck-types :class:`losa_cache.adapter.Adapter` where predict needs it (``config``,
    ``classes``, ``fingerprint``, ``layers``, ``model`` once bound); ``reads_images``
    tells predict to hand it images instead of block outputs.
    """

    method: str
    config: SideConfig  # its head's (the linear probe's config on b_L)
    meta: dict[str, Any]
    classes: list[str]
    fingerprint: dict[str, Any]
    path: Path
    state: dict[str, torch.Tensor] = field(repr=False)
    model: Any = None
    reads_images = True

    @property
    def layers(self) -> list[int]:
        return [IMAGES]

    @property
    def task(self) -> str | None:
        return self.meta.get("task")

    def bind(self, backbone: Any) -> Any:
        """Rebuild the baseline on ``backbone`` (a :class:`~losa_cache.backbone.Backbone`)
        with the trained tensors; returns the model (eval mode, on the backbone's device)."""
        saved = self.meta["train_config"]  # read here, not as a TrainConfig: train is above
        model = build_baseline(
            self.method, backbone.model, self.config, saved_options(saved), saved["seed"]
        )
        learned = model.learned_state()
        if self.method == "lora":  # peft's own format: the LoRA tensors come from peft/
            _load_peft(model, self.path / PEFT_DIR)
            learned = {k: v for k, v in learned.items() if "lora_" not in k}
        missing = sorted(set(learned) - set(self.state))
        unknown = sorted(set(self.state) - set(model.learned_state()))
        if missing or unknown:
            raise ValueError(
                f"adapter {self.path}: its tensors do not fit a {self.method} "
                f"baseline on this backbone (missing {missing[:3]}, unexpected "
                f"{unknown[:3]}); predict with the backbone it was trained on"
            )
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name in learned:
                params[name].copy_(self.state[name])
        if self.method == "lora":
            _check_peft(model, self.state, self.path)
        device = next(backbone.model.parameters()).device
        self.model = model.to(device).eval()
        return self.model

    def image_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (B, 3, H, W) -> (B, C) float32 logits on the CPU (bound)."""
        if self.model is None:
            raise RuntimeError("bind(backbone) the adapter first (predict_images does)")
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            return self.model({IMAGES: x.to(device)}).float().cpu()


def _load_peft(model: Any, folder: Path) -> None:
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"lora adapter: no peft folder {folder} (adapter_config.json); "
            "the adapter is incomplete: re-run the training that wrote it"
        )
    result = set_peft_model_state_dict(model.peft_model, load_peft_weights(str(folder)))
    if getattr(result, "unexpected_keys", None):
        raise ValueError(
            f"lora adapter {folder}: peft weights {result.unexpected_keys[:3]} fit "
            "no layer of this backbone; predict with the backbone it was trained on"
        )


def _check_peft(model: Any, state: dict[str, torch.Tensor], root: Path) -> None:
    """peft's folder and our safetensors are two saves of the same LoRA tensors."""
    mine = model.learned_state()
    differ = [k for k, v in state.items() if "lora_" in k and not torch.equal(mine[k], v)]
    if differ:
        raise ValueError(
            f"adapter {root}: {PEFT_DIR}/ and {WEIGHTS} hold different LoRA "
            f"tensors ({differ[:2]}): the files come from different saves"
        )


def read_baseline_adapter(root: str | Path) -> BaselineAdapter:
    """Read a live baseline's adapter folder (weights checked against their sha256)."""
    from safetensors.torch import load_file

    root = Path(root)
    record = json.loads((root / "adapter.json").read_text())
    weights = root / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(
            f"adapter {root}: {WEIGHTS} is missing; the adapter is "
            "incomplete (re-run the training that wrote it)"
        )
    expected = record.get("weights", {}).get("sha256")
    if expected is not None and expected != sha256_file(weights):
        raise ValueError(
            f"adapter {root}: {WEIGHTS} does not match the sha256 recorded in "
            "adapter.json; the files come from different saves"
        )
    config = SideConfig.from_dict(record["side_config"])
    return BaselineAdapter(
        method=record["method"],
        config=config,
        meta=record,
        classes=[str(c) for c in record["classes"]],
        fingerprint=dict(record["fingerprint"]),
        path=root,
        state=load_file(str(weights)),
    )


def copy_baseline_adapter(src: str | Path, dst: str | Path) -> Path:
    """Copy a baseline's adapter files (adapter.json last: the commit marker) to ``dst``."""
    from losa_cache.outdir import atomic_write, remove_file

    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    remove_file(dst / "adapter.json")
    atomic_write(dst / WEIGHTS, lambda tmp: shutil.copy2(src / WEIGHTS, tmp))
    if (src / PEFT_DIR).is_dir():
        shutil.copytree(src / PEFT_DIR, dst / PEFT_DIR, dirs_exist_ok=True)
    atomic_write(dst / "adapter.json", lambda tmp: shutil.copy2(src / "adapter.json", tmp))
    return dst
