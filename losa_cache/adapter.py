"""Adapters: a trained side network + head saved next to everything needed to use it again.

An adapter directory holds two files::

    adapter.safetensors   side network + head weights; metadata: format and version
    adapter.json          side config, head, classes, layers, backbone fingerprint,
                          task, training config, final metrics, versions, created date,
                          and the sha256 of adapter.safetensors

Both are written aside and renamed into place (:func:`losa_cache.outdir.atomic_write`);
an old ``adapter.json`` is removed before the new weights land, so a crash at any point
never leaves an ``adapter.json`` that points to missing or different weights. Neither
is ever written through a symlink.

Loading reads only files of the adapter's own folder (a weights name with a path, ``..``
or a symlink out of the folder is refused) and requires the recorded sha256: without
it a damaged or swapped file would load unchecked. Weights holding NaN/inf are refused.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from losa_cache.files import sha256_file
from losa_cache.outdir import commit, remove_file, write_aside, write_error
from losa_cache.side import SideConfig, SideNetwork, create_side
from losa_cache.versions import versions

__all__ = [
    "ADAPTER_JSON",
    "ADAPTER_WEIGHTS",
    "FORMAT_VERSION",
    "Adapter",
    "AdapterError",
    "check_fingerprint",
    "fingerprint_differences",
    "load_adapter",
    "save_adapter",
]

ADAPTER_JSON = "adapter.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
FORMAT = "losa-cache-adapter"
FORMAT_VERSION = 1
#: Fingerprint keys that must match for an adapter to be used on a backbone's features.
#: ``weights_source`` is left out: the same weights may live in different files.
MATCH_KEYS = ("model", "weights_sha256")
#: ``meta`` keys save_adapter understands; any others are kept under ``extra``.
META_KEYS = ("fingerprint", "classes", "task", "train_config", "metrics")


class AdapterError(ValueError):
    """An adapter directory is damaged, incomplete or does not fit its own config."""


@dataclass
class Adapter:
    """A loaded adapter: the side network in eval mode plus its description."""

    model: SideNetwork
    config: SideConfig
    meta: dict[str, Any]
    classes: list[str]
    fingerprint: dict[str, Any]
    path: Path | None = None

    @property
    def layers(self) -> list[int]:
        """0-based backbone blocks the side network reads."""
        return list(self.model.required_layers)

    @property
    def task(self) -> str | None:
        return self.meta.get("task")


# ------------------------------------------------------------------------------ save


def save_adapter(
    out_dir: str | Path, model: SideNetwork, config: SideConfig, meta: dict[str, Any]
) -> Path:
    """Write ``adapter.safetensors`` + ``adapter.json`` into ``out_dir`` atomically.

    ``meta`` needs ``fingerprint`` (the backbone's, from the store) and may hold
    ``classes``, ``task``, ``train_config`` and ``metrics``; other keys go under ``extra``.
    Returns the directory.
    """
    _check_model(model, config)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(out, e) from e
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = write_aside(out / ADAPTER_WEIGHTS, lambda tmp: _write_weights(tmp, state, config))
    record_tmp = None
    try:
        record = adapter_record(model, config, meta, sha256_file(weights))
        text = json.dumps(record, indent=2, sort_keys=True) + "\n"
        record_tmp = write_aside(out / ADAPTER_JSON, lambda tmp: tmp.write_text(text))
        # the json is the commit marker: drop the old one before the weights change
        remove_file(out / ADAPTER_JSON)
        commit(weights, out / ADAPTER_WEIGHTS)
        commit(record_tmp, out / ADAPTER_JSON)
    finally:
        for tmp in (weights, record_tmp):
            if tmp is not None:
                tmp.unlink(missing_ok=True)
    return out


def adapter_record(
    model: SideNetwork, config: SideConfig, meta: dict[str, Any], weights_sha256: str
) -> dict[str, Any]:
    """The contents of ``adapter.json`` (keys sorted on write)."""
    if not isinstance(meta.get("fingerprint"), dict):
        raise ValueError(
            "save_adapter: meta['fingerprint'] (the backbone fingerprint of the "
            "store or backbone the adapter was trained on) is required"
        )
    classes = _classes(meta.get("classes"), config.num_classes)
    extra = {k: v for k, v in meta.items() if k not in META_KEYS}
    return _jsonable(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "side_config": config.to_dict(),
            "head": {
                "pool": config.resolved_pool,
                "dim": config.dim,
                "num_classes": config.num_classes,
                "dropout": config.dropout,
            },
            "classes": classes,
            "layers": list(model.required_layers),
            "fingerprint": meta["fingerprint"],
            "task": meta.get("task"),
            "train_config": meta.get("train_config") or {},
            "metrics": meta.get("metrics") or {},
            "extra": extra,
            "versions": versions(),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "weights": {
                "file": ADAPTER_WEIGHTS,
                "sha256": weights_sha256,
                "num_learned_params": model.num_learned_params(),
            },
        }
    )


def _check_model(model: SideNetwork, config: SideConfig) -> None:
    if not isinstance(model, SideNetwork):
        raise TypeError(f"save_adapter needs a SideNetwork, got {type(model).__name__}")
    if model.config != config:
        raise ValueError(
            "save_adapter: config differs from model.config; pass the config "
            "the side network was built from"
        )


def _classes(classes: Any, num_classes: int) -> list[str]:
    if classes is None:
        return [str(i) for i in range(num_classes)]
    classes = [str(c) for c in classes]
    if len(classes) != num_classes:
        raise ValueError(
            f"save_adapter: {len(classes)} class names for a head of {num_classes} classes"
        )
    return classes


def _write_weights(path: Path, state: dict[str, torch.Tensor], config: SideConfig) -> None:
    from safetensors.torch import save_file

    metadata = {
        "format": "pt",
        "losa_cache_format": FORMAT,
        "losa_cache_format_version": str(FORMAT_VERSION),
        "method": config.method,
    }
    save_file(state, str(path), metadata=metadata)


def _jsonable(obj: Any) -> Any:
    """Round-trip through JSON so tuples become lists and odd values fail here, not later."""
    return json.loads(json.dumps(obj, default=str))


# ------------------------------------------------------------------------------ load


def load_adapter(path: str | Path, device: str | torch.device = "cpu") -> Adapter:
    """Read an adapter directory written by :func:`save_adapter`; the model is in eval mode.

    Only the folder's own files are read (a weights name that leaves it is refused), and
    the weights must match the sha256 that ``adapter.json`` records. A live baseline's
    adapter (``train --live --method full|lora|...``) loads as a
    :class:`~losa_cache.baselines.BaselineAdapter`, bound to a backbone by predict."""
    root = Path(path)
    from losa_cache.baselines import is_baseline_adapter, read_baseline_adapter

    if is_baseline_adapter(root):
        return read_baseline_adapter(root)  # type: ignore[return-value]
    record = _read_record(root)
    weights = _weights_file(root, record)
    config = _config(record, root)
    model = _build_model(config, weights, root)
    _check_layers(model, record, root)
    return Adapter(
        model=model.to(device).eval(),
        config=config,
        meta=record,
        classes=list(record["classes"]),
        fingerprint=dict(record["fingerprint"]),
        path=root,
    )


def _weights_file(root: Path, record: dict[str, Any]) -> Path:
    """The weights file ``adapter.json`` names, in ``root``, checked against its sha256."""
    entry = record.get("weights") if isinstance(record.get("weights"), dict) else {}
    weights = _own_file(root, entry.get("file", ADAPTER_WEIGHTS))
    if not weights.is_file():
        raise FileNotFoundError(
            f"adapter {root}: {weights.name} is missing; the adapter is "
            "incomplete (re-run the training that wrote it)"
        )
    expected, actual = entry.get("sha256"), sha256_file(weights)
    if not isinstance(expected, str) or not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise AdapterError(
            f"adapter {root}: {ADAPTER_JSON} records no valid sha256 of {weights.name} "
            f"(got {expected!r}), so its weights cannot be checked; re-save the adapter by "
            "re-running the training that wrote it, or, if you trust this file, add "
            f'"sha256": "{actual}" to the "weights" object of {ADAPTER_JSON}'
        )
    if actual != expected:
        raise AdapterError(
            f"adapter {root}: {weights.name} does not match the sha256 recorded "
            f"in {ADAPTER_JSON}; the files come from different saves"
        )
    return weights


def _own_file(root: Path, name: Any) -> Path:
    """``root/name`` if ``name`` is a plain file name whose real path (symlinks followed)
    is in ``root``: an adapter never reads files outside its own folder."""
    plain = isinstance(name, str) and name not in ("", ".", "..") and not re.search(r"[/\\]", name)
    path = root / name if plain else None
    if path is None or path.resolve().parent != root.resolve():
        raise AdapterError(
            f"adapter {root}: {ADAPTER_JSON} names the file {name!r}, which is not in the "
            f"adapter's folder; an adapter reads only its own files (e.g. {ADAPTER_WEIGHTS!r}): "
            "put the file there and name it without a path"
        )
    return path


def _read_record(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise FileNotFoundError(
            f"no adapter directory at {root} (train one with `losa-cache train --out DIR`)"
        )
    file = _own_file(root, ADAPTER_JSON)
    if not file.is_file():
        raise FileNotFoundError(
            f"{root} holds no {ADAPTER_JSON}: not an adapter, or its save did not finish"
        )
    try:
        record = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterError(f"{file} is unreadable ({e}); the adapter is damaged") from e
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise AdapterError(f"{file} is not a losa-cache adapter file (format != {FORMAT!r})")
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise AdapterError(
            f"{file} has adapter format version {version!r}; this losa-cache "
            f"reads up to {FORMAT_VERSION} (upgrade losa-cache)"
        )
    missing = [k for k in ("side_config", "classes", "fingerprint", "layers") if k not in record]
    if missing:
        raise AdapterError(f"{file} lacks {missing}; the adapter is damaged")
    return record


def _config(record: dict[str, Any], root: Path) -> SideConfig:
    try:
        config = SideConfig.from_dict(record["side_config"])
    except (TypeError, ValueError) as e:
        raise AdapterError(f"adapter {root}: invalid side config: {e}") from e
    if len(record["classes"]) != config.num_classes:
        raise AdapterError(
            f"adapter {root}: {len(record['classes'])} class names but the head "
            f"has {config.num_classes} outputs"
        )
    return config


def _build_model(config: SideConfig, weights: Path, root: Path) -> SideNetwork:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise AdapterError(f"adapter {root}: cannot read {weights.name}: {e}") from e
    bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise AdapterError(
            f"adapter {root}: {weights.name} holds NaN or inf values (in "
            f"{bad[:3]}); the adapter is damaged or its training diverged: "
            "retrain it"
        )
    model = create_side(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # missing/unexpected keys, shape mismatches
        raise AdapterError(
            f"adapter {root}: weights do not fit the side config "
            f"({config.method}, rank {config.rank}, layers "
            f"{list(config.layers)}): {e}"
        ) from e
    return model


def _check_layers(model: SideNetwork, record: dict[str, Any], root: Path) -> None:
    if list(model.required_layers) != list(record["layers"]):
        raise AdapterError(
            f"adapter {root}: {ADAPTER_JSON} lists layers {record['layers']} but "
            f"the side config reads {list(model.required_layers)}"
        )


# ------------------------------------------------------------------------------ fingerprint


def fingerprint_differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """One line per fingerprint key (model, weights, preprocessing) whose values differ."""
    from losa_cache.backbone import PREPROCESS_KEYS  # imports timm: not on the training path

    out = []
    for key in (*MATCH_KEYS, *PREPROCESS_KEYS):
        a, b = expected.get(key), actual.get(key)
        if not _same(a, b):
            out.append(f"{key}: adapter {a!r} != {b!r}")
    return out


def check_fingerprint(
    adapter_fp: dict[str, Any], backbone_fp: dict[str, Any], what: str = "the backbone given"
) -> None:
    """Refuse features from a backbone other than the one the adapter was trained on."""
    diffs = fingerprint_differences(adapter_fp, backbone_fp)
    if not diffs:
        return
    source = adapter_fp.get("weights_source", "unknown")
    raise ValueError(
        f"this adapter was trained on a different backbone than {what}; "
        f"differences: {'; '.join(diffs)}. Use the backbone the adapter was trained on: "
        f"model {adapter_fp.get('model')!r} with the weights it recorded (source: {source}, "
        f"sha256 {str(adapter_fp.get('weights_sha256'))[:12]}...) and its preprocessing"
    )


def _same(a: Any, b: Any) -> bool:
    """Equal after JSON normalisation (tuple == list), floats to 1e-6 relative."""
    a, b = _jsonable(a), _jsonable(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a == b
