"""ModelCalculator: any PotentialModel behind ASE's Calculator interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.calculators.calculator import PropertyNotImplementedError

from ipi_ncforces.models.ase_calculator import ModelCalculator
from ipi_ncforces.models.base import Batch, evaluate
from ipi_ncforces.models.io import save_model
from ipi_ncforces.models.pair_toy import PairToyModel
from ipi_ncforces.models.qtip4pf import QTIP4PF
from ipi_ncforces.models.water_box import set_temperature
from ipi_ncforces.models.structure_io import read_structure

WATER16 = Path(__file__).resolve().parents[1] / "inputs" / "water16.xyz"


@pytest.fixture(scope="module")
def box16():
    return read_structure(WATER16)


def test_conservative_results_match_evaluate_and_stress_is_the_strain_derivative(box16):
    model = QTIP4PF()
    atoms = box16.copy()
    atoms.calc = ModelCalculator(model)
    p = evaluate(model, Batch.from_ase([atoms]))
    assert atoms.get_potential_energy() == pytest.approx(float(p.energy[0]), abs=1e-10)
    assert np.allclose(atoms.get_forces(), p.forces[0].numpy(), atol=1e-10)
    # ASE's own finite-difference stress (d = 1e-6 strain); agreement to 1e-6 eV/A^3
    # (~1e-3 of a typical 1e-3 eV/A^3 liquid stress) covers its truncation error
    from ase.calculators.fd import calculate_numerical_stress

    numerical = calculate_numerical_stress(atoms, eps=1e-6)
    assert np.allclose(atoms.get_stress(), numerical, atol=1e-6)


def test_direct_mode_returns_the_direct_head_without_its_net_force(box16):
    """Direct forces minus their mean by default (as metatomic-ase and i-PI's metatomic PES);
    remove_net_force=False gives the raw head, whose net force is not zero (asymmetry 0.3)."""
    model = PairToyModel(asymmetry=0.3)
    atoms = box16.copy()
    p = evaluate(model, Batch.from_ase([atoms]), conservative=False, direct=True)
    raw = p.direct_forces[0].numpy()
    assert np.linalg.norm(raw.sum(axis=0)) > 1e-3  # the toy's direct head has a net force
    atoms.calc = ModelCalculator(model, forces="direct", remove_net_force=False)
    assert np.allclose(atoms.get_forces(), raw, atol=1e-12)
    atoms.calc = ModelCalculator(model, forces="direct")
    assert np.allclose(atoms.get_forces(), raw - raw.mean(axis=0), atol=1e-12)
    assert np.abs(atoms.get_forces().sum(axis=0)).max() < 1e-10
    cons = ModelCalculator(model, forces="conservative").get_forces(atoms)
    assert np.abs(cons.sum(axis=0)).max() < 1e-10  # conservative: zero by construction, left as it is
    assert np.abs(atoms.get_forces() - cons).max() > 1e-4  # the two modes really differ
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()  # the toy model predicts no direct virial


def test_direct_only_model_has_no_energy_and_refuses_conservative(tmp_path, box16):
    """ASE's convention: a property the model cannot give is not implemented (no 0 eV stand-in)."""
    model = PairToyModel(heads=("direct",))
    atoms = box16.copy()
    atoms.calc = ModelCalculator(model, forces="direct")
    assert atoms.calc.implemented_properties == ["forces"]
    full = PairToyModel()
    p = evaluate(full, Batch.from_ase([atoms]), conservative=False, direct=True)
    raw = p.direct_forces[0].numpy()
    assert np.allclose(atoms.get_forces(), raw - raw.mean(axis=0), atol=1e-12)
    for ask in (atoms.get_potential_energy, atoms.get_total_energy, atoms.get_stress):
        with pytest.raises(PropertyNotImplementedError):
            ask()
    assert "energy" not in atoms.calc.results
    # with an energy head the direct mode reports it (the model's energy, not a stand-in)
    atoms.calc = ModelCalculator(full, forces="direct")
    assert atoms.get_potential_energy() == pytest.approx(float(p.energy[0]), abs=1e-12)
    with pytest.raises(ValueError, match="no 'energy' head"):
        ModelCalculator(model, forces="conservative")
    path = save_model(model, tmp_path / "nc.pt")
    with pytest.raises(ValueError, match="energy"):
        ModelCalculator.from_file(path, forces="conservative")


def test_nve_with_ase_conserves_energy(box16):
    """Velocity Verlet with q-TIP4P/F at dt = 0.25 fs: total energy fluctuates by ~1e-3 eV
    for 48 atoms at 300 K (kinetic energy ~1.8 eV), without drift over 40 steps."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = box16.copy()
    atoms.calc = ModelCalculator(QTIP4PF(), dtype=torch.float64)
    set_temperature(atoms, 300.0, seed=0)
    dyn = VelocityVerlet(atoms, timestep=0.25 * units.fs)
    totals = []
    for _ in range(8):
        dyn.run(5)
        totals.append(atoms.get_total_energy())
    assert np.ptp(totals) < 5e-3


def test_ase_optimizer_runs_on_a_direct_only_model(box16):
    """ASE's optimizers log the energy every step; geop's runner steps on forces alone when the
    calculator has none, instead of failing on PropertyNotImplementedError."""
    from ipi_ncforces.analysis.geop import run_optimizer

    atoms = box16.copy()
    start = atoms.positions.copy()
    trace = run_optimizer(atoms, ModelCalculator(PairToyModel(heads=("direct",)), forces="direct"), "FIRE", 1e-6, 5)
    assert "optimizer_error" not in atoms.info
    assert np.isfinite(trace).all() and len(trace) == 6  # the start and 5 steps
    assert np.abs(atoms.positions - start).max() > 1e-4  # it moved
