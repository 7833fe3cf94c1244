"""Test-set errors of any loaded model (our files or metatomic), against labelled frames.

Frames carry the reference energy (eV) and forces (eV/A) as ASE results, as the extxyz of
``ipi-nc reference-data`` does. The names and units are those of
models/data/water-models.json: ``energy_mev_per_atom``, ``forces_conservative_mev_per_ang``,
``forces_direct_mev_per_ang`` (direct forces as the model predicts them, before any
mean-force removal).
"""

from __future__ import annotations

import numpy as np
import torch

from ipi_ncforces.models.backend import ModelBackend
from ipi_ncforces.models.modes import DIRECT_HEAD, ENERGY_HEAD
from ipi_ncforces.models.base import Batch


def mean_absolute_errors(backend: ModelBackend, frames: list, batch_size: int = 4) -> dict[str, float]:
    """MAEs of every head ``backend`` has over ``frames`` (meV/atom for the energy, meV/A
    per force component)."""
    sums = {"energy": 0.0, "conservative": 0.0, "direct": 0.0}
    n_atoms = n_components = 0
    for start in range(0, len(frames), batch_size):
        chunk = frames[start:start + batch_size]
        batch = Batch.from_ase(chunk, dtype=backend.dtype).to(backend.device)
        prediction = backend.evaluate(
            batch, conservative=ENERGY_HEAD in backend.heads, direct=DIRECT_HEAD in backend.heads, virial=False,
        )
        energy_ref_ev = np.array([a.get_potential_energy() for a in chunk])
        forces_ref = np.stack([a.get_forces() for a in chunk])
        if prediction.energy is not None and ENERGY_HEAD in backend.heads:
            sums["energy"] += float(np.abs(_np(prediction.energy) - energy_ref_ev).sum())
        if prediction.forces is not None:
            sums["conservative"] += float(np.abs(_np(prediction.forces) - forces_ref).sum())
        if prediction.direct_forces is not None:
            sums["direct"] += float(np.abs(_np(prediction.direct_forces) - forces_ref).sum())
        n_atoms += sum(len(a) for a in chunk)
        n_components += forces_ref.size
    maes = {}
    if ENERGY_HEAD in backend.heads:
        maes["energy_mev_per_atom"] = 1000.0 * sums["energy"] / n_atoms
        maes["forces_conservative_mev_per_ang"] = 1000.0 * sums["conservative"] / n_components
    if DIRECT_HEAD in backend.heads:
        maes["forces_direct_mev_per_ang"] = 1000.0 * sums["direct"] / n_components
    return maes


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()
