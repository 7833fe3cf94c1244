"""Structure files shared by every part of the project: i-PI xyz in and out.

i-PI's xyz carries the cell as ``CELL(abcABC)`` plus units in the comment line; the
files written here also carry an extxyz ``Lattice=`` on the same line, so i-PI and
``ase.io.read`` both get the cell. Lengths in Angstrom.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_ipi_xyz(atoms, path: str | Path) -> Path:
    """Write ``atoms`` in i-PI's xyz format (cell abcABC in the comment line, Angstrom)."""
    path = Path(path)
    a, b, c, alpha, beta, gamma = atoms.cell.cellpar()
    # i-PI parses CELL(abcABC) and the units; ASE's extxyz reader parses Lattice/pbc from the
    # same line (i-PI's cell convention: a along x, b in the xy plane, as ASE's Lattice here)
    from ase.geometry import cellpar_to_cell

    lattice = cellpar_to_cell([a, b, c, alpha, beta, gamma])
    lattice[np.abs(lattice) < 1e-12] = 0.0
    lines = [
        str(len(atoms)),
        f"# CELL(abcABC): {a:.8f} {b:.8f} {c:.8f} {alpha:.5f} {beta:.5f} {gamma:.5f} "
        "positions{angstrom} cell{angstrom} "
        f'Lattice="{" ".join(f"{v:.8f}" for v in lattice.reshape(-1))}" '
        'Properties=species:S:1:pos:R:3 pbc="T T T"',
    ]
    for symbol, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions):
        lines.append(f"{symbol:2s} {x:15.8f} {y:15.8f} {z:15.8f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def read_structure(path: str | Path):
    """ase.Atoms from an i-PI xyz (cell from the ``CELL(abcABC)`` comment) or any ASE file."""
    import ase.io
    from ipi.utils.io import read_file_raw

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"structure file '{path}' does not exist")
    with open(path) as handle:
        first = handle.readline(), handle.readline()
    if "CELL" in first[1]:
        with open(path) as handle:
            raw = read_file_raw("xyz", handle)
        import ase

        cell = np.asarray(raw["cell"]).reshape(3, 3).T.copy()
        cell[np.abs(cell) < 1e-9] = 0.0  # cos(90 deg) round-off of the abcABC conversion
        return ase.Atoms(
            symbols=list(raw["names"]), positions=np.asarray(raw["data"]).reshape(-1, 3), cell=cell, pbc=True
        )
    return ase.io.read(path, index=0)
