"""Checkpoints: weights in safetensors, metadata as JSON in the same file's header.

A checkpoint is one ``.safetensors`` file. Its header metadata holds
``{"format": "equiformer-calc", "format_version": "1", "metadata": "<JSON>"}`` where the JSON has
the architecture config (elements, cutoff, irreps ...), units, training provenance and metrics.
Loading never unpickles anything. Short names (``"emt-small"``) resolve to files under the
project's ``checkpoints/`` folder (or ``$EQUIFORMER_CALC_CHECKPOINTS``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .io import atomic_path, file_kind, file_sha256
from .model import CheckpointInfo, Equiformer, EquiformerConfig

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "FORMAT",
    "FORMAT_VERSION",
    "DEFAULT_CHECKPOINT",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "read_metadata",
    "resolve_checkpoint",
    "available_checkpoints",
    "checkpoint_dirs",
]

FORMAT = "equiformer-calc"
FORMAT_VERSION = 1
#: the shipped checkpoint that ``EquiformerCalculator()`` loads
DEFAULT_CHECKPOINT = "pbe-distilled-small"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found, read or understood; the message says which and why."""


def checkpoint_dirs() -> list[Path]:
    """Folders searched for named checkpoints: $EQUIFORMER_CALC_CHECKPOINTS, then the shipped ones.

    The shipped ones are ``equiformer_calc/checkpoints`` (package data, in a wheel or a normal install;
    in the source tree a link to the top-level ``checkpoints/`` folder).
    """
    dirs = []
    env = os.environ.get("EQUIFORMER_CALC_CHECKPOINTS")
    if env:
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parent / "checkpoints")
    return dirs


def available_checkpoints() -> dict[str, Path]:
    """Shipped names -> files."""
    found: dict[str, Path] = {}
    for d in checkpoint_dirs():
        if d.is_dir():
            for f in sorted(d.glob("*.safetensors")):
                if not f.name.endswith(".committee.safetensors"):  # a checkpoint's committee, not a model
                    found.setdefault(f.stem, f)
    return found


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A path to an existing file, or a registered short name -> its path."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    names = available_checkpoints()
    if str(name_or_path) in names:
        return names[str(name_or_path)]
    if path.suffix or os.sep in str(name_or_path):
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    raise CheckpointError(
        f"unknown checkpoint {str(name_or_path)!r}; shipped checkpoints: {sorted(names) or 'none'}"
    )


def save_checkpoint(model: Equiformer, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (weights + config + ``metadata``) to ``path`` atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {
        "config": model.config.to_dict(),
        "units": {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom", "stress": "eV/Angstrom^3"},
        "num_parameters": model.num_parameters(),
        **(metadata or {}),
    }
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "metadata": json.dumps(meta)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def read_metadata(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without loading its weights."""
    from safetensors import safe_open

    path = resolve_checkpoint(name_or_path)
    kind, looks = file_kind(path)
    if kind != "safetensors":
        hint = (" (a torch.save file: a checkpoint of the reference Equiformer code converts with "
                "equiformer-calc convert-reference)" if kind in ("zip", "pickle") else "")
        raise CheckpointError(f"{path} is not an equiformer-calc checkpoint: it looks like {looks}{hint}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({exc})") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not an {FORMAT} checkpoint")
    try:
        version = int(header.get("format_version", "-1"))
    except ValueError:
        version = -1
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {header.get('format_version')!r}; "
            f"this equiformer-calc reads version {FORMAT_VERSION}"
        )
    try:
        return json.loads(header["metadata"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} has corrupted metadata ({exc})") from None


def load_checkpoint(name_or_path: str | os.PathLike, device: str | torch.device = "cpu") -> Equiformer:
    """Rebuild the model stored in a checkpoint (a path or a shipped name). ``model.checkpoint``
    is its :class:`CheckpointInfo` (name, path, sha256 of the file, metadata); ``model.metadata``
    the metadata."""
    from safetensors.torch import load

    path = resolve_checkpoint(name_or_path)
    meta = read_metadata(path)
    try:
        config = EquiformerConfig.from_dict(meta["config"])
        model = Equiformer(config=config)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid architecture config ({exc})") from None
    try:
        data = path.read_bytes()
        tensors = load(data)
    except Exception as exc:
        raise CheckpointError(f"{path}: could not read the weights ({exc})") from None
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{path}: weights do not match the architecture ({exc})") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the architecture (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    model.checkpoint = CheckpointInfo(
        name=path.stem, path=str(path), sha256=file_sha256(path), metadata=meta
    )
    return model.to(device)


def load_model(
    model_or_checkpoint: Equiformer | str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[Equiformer, str | None]:
    """``(model, checkpoint path or None)`` of a model given as an :class:`Equiformer` or as a
    checkpoint (a path or a shipped name): the one place that accepts either. A model passed in is
    returned as is (a :class:`~equiformer_calc.predictor.Predictor` built on it works on its own
    copy, so nothing here changes the caller's module)."""
    if isinstance(model_or_checkpoint, Equiformer):
        info = model_or_checkpoint.checkpoint
        return model_or_checkpoint, None if info is None else info.path
    if not isinstance(model_or_checkpoint, (str, os.PathLike)):
        raise TypeError(f"expected an Equiformer model, a checkpoint path or a shipped name, got "
                        f"{type(model_or_checkpoint).__name__}")
    model = load_checkpoint(model_or_checkpoint, device=device)
    assert model.checkpoint is not None
    return model, model.checkpoint.path
