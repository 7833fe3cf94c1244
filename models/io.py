"""Saving and loading potentials: one ``.pt`` file carries weights and metadata.

File content (``torch.save`` of a dict): ``format`` (= FORMAT), ``version``,
``model_type`` (a key of MODEL_TYPES), ``config`` (constructor kwargs), ``state_dict``,
``metadata`` (species, cutoff_ang, heads, units, plus whatever training adds: data
hash, MAEs, ...). A driver can thus refuse a structure the model was not made for.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from ipi_ncforces.models.base import PotentialModel

FORMAT = "ipi-ncforces-model"
VERSION = 1
MAKE_ONE = "make a model with 'ipi-nc train' or 'ipi-nc export', or pass a metatomic export ('mtt export')"

# model_type -> "module:Class"; imported lazily so that loading one kind needs no other
MODEL_TYPES: dict[str, str] = {
    "pair_toy": "ipi_ncforces.models.pair_toy:PairToyModel",
    "qtip4pf": "ipi_ncforces.models.qtip4pf:QTIP4PF",
    "dual_head": "ipi_ncforces.models.dualhead:DualHeadPotential",
}


class ModelFileError(ValueError):
    """A model file that cannot serve the request; the message is one line naming the file."""


def _model_class(model_type: str):
    module_name, class_name = MODEL_TYPES[model_type].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def save_model(model: PotentialModel, path: str | Path, metadata: dict | None = None) -> Path:
    """Write ``model`` to ``path`` (weights kept in their dtype, moved to CPU)."""
    path = Path(path)
    meta = {
        "species": list(model.species),
        "cutoff_ang": model.cutoff,
        "heads": list(model.heads),
        "units": {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom", "virial": "eV"},
    }
    meta.update(metadata or {})
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_type": model.model_type,
        "config": model.config(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def load_model(
    path: str | Path,
    *,
    require_heads: tuple[str, ...] = (),
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
) -> PotentialModel:
    """Load a model saved by :func:`save_model`, check it has ``require_heads``.

    Raises ModelFileError (one line, names the file) for a missing or foreign file,
    an unknown model type, or a missing head.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file '{path}' does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a non-torch file
        raise ModelFileError(
            f"'{path}' is not an ipi-ncforces model file and not a metatomic model ({type(exc).__name__}); "
            f"{MAKE_ONE}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(
            f"'{path}' is not an ipi-ncforces model file (no '{FORMAT}' header) and not a metatomic model; {MAKE_ONE}"
        )
    model_type = payload.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ModelFileError(f"'{path}' holds unknown model type '{model_type}' (known: {', '.join(MODEL_TYPES)})")
    model = _model_class(model_type)(**payload["config"])
    model.load_state_dict(payload["state_dict"])
    model.metadata = payload.get("metadata", {})
    missing = [h for h in require_heads if h not in model.heads]
    if missing:
        raise ModelFileError(
            f"model '{path}' has no '{missing[0]}' head (it has: {', '.join(model.heads)}); "
            "pick a mode this model supports"
        )
    return model.to(device=device, dtype=dtype).eval()
