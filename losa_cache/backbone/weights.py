"""Where backbone weights come from, and the fingerprint that ties features to them.

Sources: a local checkpoint file (.npz big_vision/AugReg through timm's own loader,
.pth/.pt/.bin state dicts, .safetensors), timm's pretrained weights from the *local*
HF cache (never downloaded here), the embedded demo weights, or an explicit random
init. Extraction from random weights is never silent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from losa_cache.backbone.demo import DEMO_MODEL, DEMO_WEIGHTS


class WeightsError(ValueError):
    """Weights could not be resolved or loaded; the message says what to pass instead."""


def weights_source(
    model_name: str, checkpoint: str | None, pretrained: bool, random_init: bool
) -> str:
    """Pick exactly one weight source, refusing ambiguous or missing choices."""
    chosen = [
        s
        for s, on in [
            ("checkpoint", checkpoint),
            ("pretrained", pretrained),
            ("random-init", random_init),
        ]
        if on
    ]
    if len(chosen) > 1:
        raise WeightsError(f"choose one weight source, got {' and '.join(chosen)}")
    if chosen:
        return chosen[0]
    if model_name.split(".")[0] == DEMO_MODEL:
        return "embedded"
    raise WeightsError(
        f"no weights given for {model_name}: pass --checkpoint FILE (.npz/.pth/.bin/.safetensors), "
        "--pretrained (timm weights already in the local HF cache), or --random-init to extract "
        "from random weights on purpose"
    )


def load_weights(net: nn.Module, model_name: str, source: str, checkpoint: str | None) -> None:
    """Load weights into ``net`` in place from the chosen source."""
    if source == "checkpoint":
        assert checkpoint is not None
        load_checkpoint(net, checkpoint)
    elif source == "pretrained":
        _load_pretrained(net, model_name)
    elif source == "embedded":
        ref = resources.files("losa_cache.assets").joinpath(DEMO_WEIGHTS)
        if not ref.is_file():
            raise WeightsError(
                f"the embedded demo weights ({DEMO_WEIGHTS}) are missing from the package: "
                "rebuild them with `python -m losa_cache.pipelines.train_demo_backbone`"
            )
        with resources.as_file(ref) as path:
            load_checkpoint(net, str(path))


def load_checkpoint(net: nn.Module, path: str) -> None:
    """Load a checkpoint file by extension; missing backbone keys are an error."""
    file = Path(path)
    if file.is_dir():
        raise WeightsError(f"checkpoint {path!r} is a folder: pass the weights file inside it")
    if not file.is_file():
        raise WeightsError(f"checkpoint {path!r} does not exist")
    if file.suffix.lower() == ".npz":
        _load_npz(net, file)
        return
    load_state(net, read_state(path), str(file))


def read_state(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a .pth/.pt/.bin/.ckpt or .safetensors checkpoint (not .npz)."""
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix == ".safetensors":
        return _safetensors_state(file)
    if suffix in {".pth", ".pt", ".bin", ".ckpt"}:
        return _torch_state(file)
    raise WeightsError(
        f"checkpoint {path!r}: unknown extension {suffix!r}; "
        "use .npz, .pth/.pt/.bin or .safetensors"
    )


def _unreadable(file: Path, kind: str, err: Exception) -> WeightsError:
    """The one wording for a checkpoint file that is damaged, cut short or not that format."""
    return WeightsError(
        f"checkpoint {str(file)!r} ({file.stat().st_size:,} bytes) is not a readable {kind} "
        f"file ({type(err).__name__}: {err}); it is damaged, incomplete or another format: "
        "download or save it again"
    )


def _safetensors_state(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as e:  # SafetensorError (bad header, short file), OSError, ...
        raise _unreadable(file, ".safetensors", e) from e


def _torch_state(file: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zip, ...
        raise _unreadable(file, "torch.load", e) from e
    for key in ("state_dict", "model", "module", "model_ema"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise WeightsError(f"checkpoint {str(file)!r} holds no state dict")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_state(net: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        state = checkpoint_filter_fn(state, net)  # timm's key/pos-embed conversions
    except Exception as e:
        raise WeightsError(f"checkpoint {where!r} does not fit this architecture: {e}") from e
    head = {k for k in net.state_dict() if k.startswith("head.")}
    state = {k: v for k, v in state.items() if not k.startswith("head.") or _same_shape(net, k, v)}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise WeightsError(f"checkpoint {where!r} does not fit this architecture: {e}") from e
    missing = [k for k in missing if k not in head]
    if missing or unexpected:
        raise WeightsError(
            f"checkpoint {where!r} does not match the architecture: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {list(unexpected)[:5]}; "
            "is --model the architecture these weights were trained with?"
        )


def _same_shape(net: nn.Module, key: str, value: torch.Tensor) -> bool:
    ref = net.state_dict().get(key)
    return ref is not None and ref.shape == value.shape


def _load_npz(net: nn.Module, file: Path) -> None:
    from timm.models.vision_transformer import _load_weights

    try:  # read every array once: a cut-short archive fails here, not as an "architecture"
        with np.load(file) as npz:
            for name in npz.files:
                npz[name]
    except Exception as e:
        raise _unreadable(file, ".npz", e) from e
    try:
        _load_weights(net, str(file))
    except Exception as e:
        raise WeightsError(
            f"checkpoint {str(file)!r} is not a big_vision/AugReg .npz for this architecture: {e}"
        ) from e


def _load_pretrained(net: nn.Module, model_name: str) -> None:
    """timm pretrained weights from the local cache only: nothing is downloaded."""
    import timm

    if "." not in model_name:
        tags = timm.list_pretrained(f"{model_name}.*")
        raise WeightsError(
            f"--pretrained needs a tagged timm name; {model_name} has tags: {tags[:8] or 'none'}"
        )
    try:
        with _hub_offline():
            src = timm.create_model(model_name, pretrained=True)
    except Exception as e:
        raise WeightsError(
            f"pretrained weights for {model_name} are not in the local timm/Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and nothing is downloaded at "
            f"run time: copy them there, or pass --checkpoint FILE ({type(e).__name__}: {e})"
        ) from e
    load_state(net, src.state_dict(), f"pretrained:{model_name}")


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Force huggingface_hub offline (its env flag is read at import, so patch the constant)."""
    import huggingface_hub.constants as hf

    old = hf.HF_HUB_OFFLINE
    hf.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf.HF_HUB_OFFLINE = old


def weights_sha256(net: nn.Module) -> str:
    """sha256 over the backbone's tensors (head excluded), independent of file format.

    Keys are hashed in sorted order with dtype and shape, so the same weights loaded from
    .npz, .pth or .safetensors give the same fingerprint.
    """
    h = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        if key.startswith("head."):
            continue
        t = value.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
