"""Shared helpers for the inputs/runner tests: a small water box and a toy model file."""

from __future__ import annotations

from pathlib import Path

import ase
import numpy as np

from ipi_ncforces.models.structure_io import write_ipi_xyz


def write_water_box(path: Path, n_side: int = 2, spacing_ang: float = 3.1, seed: int = 0) -> Path:
    """n_side**3 randomly oriented H2O on a cubic grid (spacing 3.1 A ~ 1 g/cm3), written
    in i-PI's xyz format (cell in the comment line)."""
    rng = np.random.default_rng(seed)
    mol = np.array([[0.0, 0.0, 0.0], [0.757, 0.586, 0.0], [-0.757, 0.586, 0.0]])
    symbols, positions = [], []
    for i in range(n_side):
        for j in range(n_side):
            for k in range(n_side):
                q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
                centre = spacing_ang * (np.array([i, j, k]) + 0.5)
                positions += list(centre + mol @ q.T)
                symbols += ["O", "H", "H"]
    box = spacing_ang * n_side
    return write_ipi_xyz(ase.Atoms(symbols, positions=positions, cell=[box] * 3, pbc=True), path)


def write_toy_model(path: Path) -> Path:
    """PairToyModel (energy + non-conservative direct head) saved to ``path``."""
    from ipi_ncforces.models.io import save_model
    from ipi_ncforces.models.pair_toy import PairToyModel

    return save_model(PairToyModel(species=(1, 8), cutoff=3.0), path)
