"""Build a :class:`ForceEvaluator` from user-facing options (files, device, dtype).

Shared by the socket driver CLI and the PES class so both accept the same options and
fail with the same one-line messages.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ipi_ncforces.ipi_driver.evaluator import HEADS_FOR_MODE, MODES, ForceEvaluator
from ipi_ncforces.models.io import load_model

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class SetupError(ValueError):
    """Bad user option; the message is one line that names the option or file."""


def default_dtype(device: str) -> str:
    """float32 on GPUs (speed), float64 on CPU (exactness; CPU cost is similar)."""
    return "float32" if device.startswith("cuda") else "float64"


def default_skin_ang(device: str) -> float:
    """Verlet skin (A) of the neighbour-list cache. On CPU the cached list was measured
    faster (toy model, 192 atoms: 7.1 -> 5.9 ms direct, 11.6 -> 7.1 ms conservative per
    request); on CUDA it is unmeasured and its host syncs may not pay, so it is off."""
    return 0.0 if str(device).startswith("cuda") else 0.5


def read_species(structure_path: str | Path) -> np.ndarray:
    """Atomic numbers, in file order, of the first frame of an ASE-readable file
    (i-PI's own xyz/pdb with units in the comment line reads fine: only species are used)."""
    import ase.io

    path = Path(structure_path)
    if not path.is_file():
        raise SetupError(f"structure file '{path}' does not exist (--structure / template)")
    try:
        atoms = ase.io.read(path, index=0)
    except Exception as exc:
        raise SetupError(f"cannot read structure file '{path}': {exc}".splitlines()[0]) from None
    return np.asarray(atoms.numbers)


def build_evaluator(
    *,
    model_path: str | Path,
    structure_path: str | Path,
    mode: str,
    device: str = "cpu",
    dtype: str | None = None,
    remove_net_force: bool = False,
    extras_other_head: bool = False,
    neighbor_skin_ang: float | None = None,
) -> ForceEvaluator:
    """Load model and species, check they fit the mode; SetupError otherwise.

    neighbor_skin_ang: Verlet skin (A) of the neighbour-list cache; None = :func:`default_skin_ang`.
    """
    if mode not in MODES:
        raise SetupError(f"unknown mode '{mode}' (--mode): choose from {', '.join(MODES)}")
    dtype = dtype or default_dtype(device)
    if dtype not in DTYPES:
        raise SetupError(f"unknown dtype '{dtype}' (--dtype): choose float32 or float64")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SetupError(f"device '{device}' requested (--device) but torch sees no CUDA GPU here")
    species = read_species(structure_path)
    try:
        model = load_model(model_path, require_heads=HEADS_FOR_MODE[mode], device=device, dtype=DTYPES[dtype])
        return ForceEvaluator(
            model,
            species,
            mode,
            remove_net_force=remove_net_force,
            extras_other_head=extras_other_head,
            neighbor_skin_ang=default_skin_ang(device) if neighbor_skin_ang is None else neighbor_skin_ang,
        )
    except ValueError as exc:
        raise SetupError(f"{exc} [model '{model_path}', structure '{structure_path}']") from None
