"""q-TIP4P/F exported as an energy-only metatomic model gives the native QTIP4PF numbers.

The exported file (float64, ``ipi-nc export``) is served by our metatomic backend (with
metatomic's neighbour-list consistency check) and by i-PI 3.3.1's own
``ipi.pes.metatomic.MetatomicDriver``; both compute forces and virial by autograd through
the engine's neighbour list, independently of QTIP4PF's vesin-torch molecule list.
Tolerances from the issue: energy 1e-8 eV/atom, forces 1e-6 eV/A, virial 1e-6 eV.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ipi.utils.units import unit_to_internal, unit_to_user

from ipi_ncforces.inputs import WATER16_XYZ, WATER64_XYZ
from ipi_ncforces.models.base import Batch, evaluate
from ipi_ncforces.models.io import save_model
from ipi_ncforces.models.loader import load_backend
from ipi_ncforces.models.metatomic_export import main as export_main
from ipi_ncforces.models.qtip4pf import QTIP4PF
from ipi_ncforces.models.structure_io import read_structure

ENERGY_TOL_EV_PER_ATOM = 1e-8
FORCE_TOL_EV_ANG = 1e-6
VIRIAL_TOL_EV = 1e-6


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A saved QTIP4PF and its metatomic export (float64, through the CLI entry point)."""
    folder = tmp_path_factory.mktemp("qtip-export")
    source = save_model(QTIP4PF(), folder / "qtip4pf.pt")
    exported = folder / "qtip4pf-mta.pt"
    assert export_main([str(source), str(exported)]) == 0
    return source, exported


def _frames():
    """water16 as shipped, a perturbed water64 frame (periodic), and water16 as a cluster."""
    water16 = read_structure(WATER16_XYZ)
    water64 = read_structure(WATER64_XYZ)
    water64.positions += 0.03 * np.random.default_rng(7).standard_normal(water64.positions.shape)
    cluster = water16.copy()
    cluster.set_cell(np.zeros((3, 3)))
    cluster.pbc = False
    return {"water16": water16, "water64": water64, "water16-cluster": cluster}


def _native(atoms):
    return evaluate(QTIP4PF().to(dtype=torch.float64), Batch.from_ase([atoms]), conservative=True, virial=True)


@pytest.mark.parametrize("frame", ["water16", "water64", "water16-cluster"])
def test_exported_qtip4pf_matches_native_through_our_backend(files, frame):
    atoms = _frames()[frame]
    native = _native(atoms)
    backend = load_backend(files[1], check_consistency=True)
    assert backend.heads == ("energy",) and backend.dtype == torch.float64
    ours = backend.evaluate(Batch.from_ase([atoms]), conservative=True, virial=True)
    n_atoms = len(atoms)
    assert abs(float(ours.energy[0] - native.energy[0])) / n_atoms < ENERGY_TOL_EV_PER_ATOM
    assert float((ours.forces - native.forces).abs().max()) < FORCE_TOL_EV_ANG
    assert float((ours.virial - native.virial).abs().max()) < VIRIAL_TOL_EV
    assert float(native.forces.abs().max()) > 0.1 and float(native.virial.abs().max()) > 0.01  # not trivial


@pytest.mark.parametrize("frame", ["water16", "water64"])
def test_ipi_metatomic_pes_runs_exported_qtip4pf(files, tmp_path, frame):
    """i-PI's MetatomicDriver (atomic units on its side) against native QTIP4PF."""
    from ipi.pes.metatomic import MetatomicDriver

    from ipi_ncforces.models.structure_io import write_ipi_xyz

    atoms = _frames()[frame]
    template = write_ipi_xyz(atoms, tmp_path / f"{frame}.xyz")
    cell_bohr = unit_to_internal("length", "angstrom", atoms.cell.array.T.copy())
    positions_bohr = unit_to_internal("length", "angstrom", atoms.positions.copy())
    energy_ha, forces_ha_bohr, virial_ha, _ = MetatomicDriver(str(template), str(files[1])).compute(
        [cell_bohr], [positions_bohr]
    )[0]
    energy_ev = unit_to_user("energy", "electronvolt", np.asarray(energy_ha))
    forces_ev_ang = unit_to_user("force", "ev/ang", np.asarray(forces_ha_bohr)).reshape(-1, 3)
    virial_ev = unit_to_user("energy", "electronvolt", np.asarray(virial_ha))
    native = _native(atoms)
    assert abs(float(energy_ev) - float(native.energy[0])) / len(atoms) < ENERGY_TOL_EV_PER_ATOM
    assert np.abs(forces_ev_ang - native.forces[0].numpy()).max() < FORCE_TOL_EV_ANG
    assert np.abs(virial_ev - native.virial[0].numpy()).max() < VIRIAL_TOL_EV


def test_exported_qtip4pf_metadata_and_bad_structure(files):
    backend = load_backend(files[1])
    metadata = str(backend.metadata())
    assert "024501" in metadata and "Habershon" in metadata and "ipi-ncforces" in metadata
    caps = backend.capabilities
    assert set(caps.outputs) == {"energy"} and list(caps.atomic_types) == [1, 8] and caps.length_unit == "angstrom"
    atoms = _frames()["water16"]
    swapped = atoms[[1, 0, 2] + list(range(3, len(atoms)))]  # H first: not O H H order
    with pytest.raises(Exception, match="O H H"):
        backend.evaluate(Batch.from_ase([swapped]), conservative=True)
    stretched = atoms.copy()
    stretched.positions[1] += 2.0 * (stretched.positions[1] - stretched.positions[0])  # O-H ~3 A
    with pytest.raises(Exception, match="max_site_reach_ang"):
        backend.evaluate(Batch.from_ase([stretched]), conservative=True)
