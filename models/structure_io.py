"""Structure files shared by every part of the project: i-PI xyz in and out, and the one
reader of structures (:func:`read_structure`) that every command uses.

i-PI's xyz carries the cell as ``CELL(abcABC)`` plus units in the comment line; the
files written here also carry an extxyz ``Lattice=`` on the same line, so i-PI and
``ase.io.read`` both get the cell. Lengths in Angstrom.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np


def write_ipi_xyz(atoms, path: str | Path) -> Path:
    """Write ``atoms`` in i-PI's xyz format (cell abcABC in the comment line, Angstrom)."""
    return write_ipi_xyz_frames([atoms], path)


def write_ipi_xyz_frames(frames, path: str | Path) -> Path:
    """Write several ase.Atoms one after another in i-PI's xyz format (Angstrom)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(_ipi_xyz_frame(atoms) for atoms in frames))
    return path


def _ipi_xyz_frame(atoms) -> str:
    """One i-PI xyz frame: count, comment with CELL(abcABC) and an extxyz Lattice=, atoms."""
    from ase.geometry import cellpar_to_cell

    a, b, c, alpha, beta, gamma = atoms.cell.cellpar()
    # i-PI parses CELL(abcABC) and the units; ASE's extxyz reader parses Lattice/pbc from the
    # same line (i-PI's cell convention: a along x, b in the xy plane, as ASE's Lattice here)
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
    return "\n".join(lines) + "\n"


def read_structure(path: str | Path, index: int | str | slice = 0):
    """ase.Atoms (or a list of them for a slice or a string such as ``":"`` / ``":5"``)
    from a structure or trajectory file, lengths in Angstrom.

    An i-PI xyz (a ``CELL(abcABC)``/``CELL{H}`` comment line, as i-PI writes its
    trajectories, with or without an extxyz ``Lattice=``) is read with i-PI's own parser
    and units (``positions{atomic_unit}`` or ``{angstrom}``, ``cell{...}``; none stated
    means atomic units, as in i-PI), periodic in the stated cell, with i-PI's step
    counter in ``atoms.info["step"]`` where the comment has one. Anything else (extxyz,
    cif, pdb, ...) goes to ``ase.io.read(path, index)`` unchanged. ``index`` follows
    ``ase.io.read``. FileNotFoundError / ValueError on a missing or unreadable file.
    """
    import ase.io
    from ase.io.formats import string2index

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"structure file '{path}' does not exist")
    with open(path) as handle:
        count, comment = handle.readline(), handle.readline()
    if count.strip().isdigit() and "CELL" in comment:
        selector = string2index(index) if isinstance(index, str) else index
        with open(path) as handle:
            frames = _ipi_xyz_frames(path, handle)
            if isinstance(selector, int) and selector >= 0:
                frame = next(itertools.islice(frames, selector, None), None)
                if frame is None:
                    raise IndexError(f"'{path}' has no frame {selector}")
                return frame
            if isinstance(selector, slice) and all(v is None or v >= 0 for v in (selector.start, selector.stop)):
                return list(itertools.islice(frames, selector.start, selector.stop, selector.step))
            return list(frames)[selector]
    return ase.io.read(path, index=index)


def replica_starts(path: str | Path, n: int, directory: str | Path) -> list[Path]:
    """Start structure of each of ``n`` replicas: frame k mod F of a file with F frames,
    written to ``directory/start-<k>.xyz`` (i-PI xyz) when F > 1; else ``path`` for all.

    Replicas that start from different equilibrated frames share no structural memory,
    so the spread between them is an honest error bar."""
    frames = read_structure(path, ":")
    if len(frames) == 1:
        return [Path(path).resolve()] * n
    starts = []
    for k in range(n):
        target = Path(directory) / f"start-{k:02d}.xyz"
        write_ipi_xyz(frames[k % len(frames)], target)  # rewritten every time: never a stale frame
        starts.append(target.resolve())
    return starts


def _ipi_xyz_frames(path: Path, handle):
    """ase.Atoms per frame of an open i-PI xyz file, converted to Angstrom with i-PI's units."""
    import ase
    from ipi.utils.io import iter_file_raw
    from ipi.utils.io.io_units import auto_units
    from ipi.utils.units import unit_to_internal, unit_to_user

    for raw in iter_file_raw("xyz", handle):
        dimension, units, cell_units = auto_units(raw["comment"])
        if dimension not in ("length", "undefined"):
            raise ValueError(f"'{path}' is an i-PI trajectory of {dimension} values, not of positions")
        to_ang = unit_to_user("length", "angstrom", unit_to_internal("length", units, 1.0))
        cell_to_ang = unit_to_user("length", "angstrom", unit_to_internal("length", cell_units, 1.0))
        # i-PI's h matrix holds the lattice vectors as columns; ASE wants rows
        cell = np.asarray(raw["cell"], dtype=float).reshape(3, 3).T * cell_to_ang
        cell[np.abs(cell) < 1e-9] = 0.0  # cos(90 deg) round-off of the abcABC conversion
        positions = np.asarray(raw["data"], dtype=float).reshape(-1, 3) * to_ang
        atoms = ase.Atoms(symbols=list(raw["names"]), positions=positions, cell=cell, pbc=True)
        step = re.search(r"Step:\s*(\d+)", raw["comment"])
        if step:
            atoms.info["step"] = int(step.group(1))  # i-PI's step counter, as ipi's read_trajectory
        yield atoms
