"""Start structures of liquid water: a lattice of randomly oriented q-TIP4P/F monomers at a
given density, relaxed (FIRE) and equilibrated (ASE Langevin) with a model.

``ipi-nc reference-data --start-structure inputs/water64.xyz --molecules 64`` writes the
shipped start structures with :func:`make_start_structure` (i-PI xyz, atoms O H H per
molecule); tests build small boxes with :func:`lattice_water_box`. Lengths in A,
densities in g/cm^3, temperatures in K, times in ps.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from ipi_ncforces.models.structure_io import write_ipi_xyz
from ipi_ncforces.models.units import ASE_TIME_PER_FS, AVOGADRO_PER_MOL, WATER_MOLAR_MASS_G_PER_MOL

DEFAULT_DENSITY_G_CM3 = 0.997


def box_length_ang(n_molecules: int, density_g_cm3: float = DEFAULT_DENSITY_G_CM3) -> float:
    """Edge (A) of the cubic box holding ``n_molecules`` waters at ``density_g_cm3``."""
    volume_cm3 = n_molecules * WATER_MOLAR_MASS_G_PER_MOL / AVOGADRO_PER_MOL / density_g_cm3
    return (volume_cm3 * 1e24) ** (1.0 / 3.0)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly distributed 3x3 rotation (from a random unit quaternion)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def water_monomer_ang() -> np.ndarray:
    """(3, 3) O, H, H positions (A) of the q-TIP4P/F equilibrium monomer, O at the origin."""
    from ipi_ncforces.models.qtip4pf import R_EQ_ANG, THETA_EQ_DEG

    half = math.radians(THETA_EQ_DEG) / 2
    x, z = R_EQ_ANG * math.sin(half), R_EQ_ANG * math.cos(half)
    return np.array([[0.0, 0.0, 0.0], [x, 0.0, z], [-x, 0.0, z]])


def lattice_water_box(n_molecules: int, density_g_cm3: float = DEFAULT_DENSITY_G_CM3, seed: int = 0):
    """ase.Atoms: ``n_molecules`` randomly oriented monomers on random sites of a cubic grid,
    periodic cubic box at ``density_g_cm3``; atoms ordered O H H."""
    import ase

    rng = np.random.default_rng(seed)
    length = box_length_ang(n_molecules, density_g_cm3)
    n_side = math.ceil(n_molecules ** (1.0 / 3.0) - 1e-9)
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    chosen = grid[rng.choice(len(grid), size=n_molecules, replace=False)]
    monomer = water_monomer_ang()
    centre = monomer.mean(axis=0)
    positions = [(monomer - centre) @ _random_rotation(rng).T + (site + 0.5) * length / n_side for site in chosen]
    return ase.Atoms("OHH" * n_molecules, positions=np.concatenate(positions), cell=[length] * 3, pbc=True)


def set_temperature(atoms, temperature_k: float, seed: int = 0) -> None:
    """Maxwell-Boltzmann momenta at ``temperature_k`` (ASE >= 3.29 name, older fallback)."""
    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ASE < 3.29
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    thermalize_momenta(atoms, temperature_K=temperature_k, rng=np.random.default_rng(seed))


def equilibrate(atoms, model, temperature_k: float, time_ps: float, seed: int = 0, log=print):
    """Relax (FIRE) then run ASE Langevin NVT (dt 0.5 fs, friction 0.01/fs) with ``model``."""
    from ase.md.langevin import Langevin
    from ase.optimize import FIRE

    from ipi_ncforces.models.ase_calculator import ModelCalculator

    atoms = atoms.copy()
    atoms.calc = ModelCalculator(model)
    FIRE(atoms, logfile=None).run(fmax=0.5, steps=300)
    set_temperature(atoms, temperature_k, seed)
    dt_fs = 0.5
    dyn = Langevin(atoms, timestep=dt_fs * ASE_TIME_PER_FS, temperature_K=temperature_k,
                   friction=0.01 / ASE_TIME_PER_FS, fixcm=False, rng=np.random.default_rng(seed + 1))
    n_steps = int(round(time_ps * 1000 / dt_fs))
    report = max(1, n_steps // 10)
    start = time.perf_counter()
    for done in range(0, n_steps, report):
        dyn.run(min(report, n_steps - done))
        log(
            f"  equilibration {(done + min(report, n_steps - done)) * dt_fs / 1000:.2f}/{time_ps:.2f} ps: "
            f"T = {atoms.get_temperature():6.1f} K, E_pot = {atoms.get_potential_energy():9.4f} eV "
            f"({time.perf_counter() - start:.0f} s)"
        )
    atoms.calc = None
    return atoms


def make_start_structure(
    out: str | Path, n_molecules: int, seed: int = 0, time_ps: float = 10.0, temperature_k: float = 300.0,
    density_g_cm3: float = DEFAULT_DENSITY_G_CM3, log=print,
) -> Path:
    """Build, equilibrate with q-TIP4P/F and write an i-PI xyz start structure."""
    from ipi_ncforces.models.qtip4pf import QTIP4PF

    atoms = lattice_water_box(n_molecules, density_g_cm3, seed)
    log(f"start structure: {n_molecules} H2O in a {atoms.cell.lengths()[0]:.4f} A cubic box "
        f"({density_g_cm3} g/cm^3), {time_ps} ps at {temperature_k} K")
    atoms = equilibrate(atoms, QTIP4PF(), temperature_k, time_ps, seed=seed, log=log)
    atoms.wrap()
    # wrapping may split molecules across the box: harmless (q-TIP4P/F uses minimum-image
    # O-H vectors) but keep them whole for viewers: move H next to their O
    from ase.geometry import find_mic

    pos = atoms.positions.reshape(-1, 3, 3)
    for k in (1, 2):
        pos[:, k] = pos[:, 0] + find_mic(pos[:, k] - pos[:, 0], atoms.cell, pbc=True)[0]
    atoms.positions = pos.reshape(-1, 3)
    return write_ipi_xyz(atoms, out)
