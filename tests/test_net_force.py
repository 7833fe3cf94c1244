"""Net force of direct forces: removed by default in every serving path, kept on request,
and never touched on the conservative side (its sum is zero by construction).

The model is the analytic PairToyModel with asymmetry 0.5: its direct head scales each pair
force by a species-antisymmetric factor, so the direct forces on a water box have a known,
non-zero sum (checked here against the model's raw output)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ipi.utils.units import unit_to_internal, unit_to_user

from ipi_ncforces.ipi_driver.evaluator import ForceEvaluator
from ipi_ncforces.ipi_driver.shared_pass import SharedPass
from ipi_ncforces.models.base import Batch, evaluate
from ipi_ncforces.models.pair_toy import PairToyModel


@pytest.fixture(scope="module")
def request_and_raw(jittered_water_box):
    """(model, species, one i-PI request in Bohr, raw predictions in eV/A)."""
    model = PairToyModel(asymmetry=0.5).double()
    atoms = jittered_water_box(seed=4)
    cells = [unit_to_internal("length", "angstrom", atoms.cell.array.T.copy())]
    positions = [unit_to_internal("length", "angstrom", atoms.positions.reshape(-1).copy())]
    raw = evaluate(model, Batch.from_ase([atoms]), conservative=True, direct=True)
    return model, atoms.numbers, cells, positions, raw


def _forces_ev_ang(replies) -> np.ndarray:
    return unit_to_user("force", "ev/ang", np.asarray(replies[0][1]))


def test_the_toy_direct_head_has_a_net_force(request_and_raw):
    *_, raw = request_and_raw
    assert float(raw.direct_forces[0].sum(dim=0).norm()) > 0.01  # eV/A
    assert float(raw.forces[0].sum(dim=0).norm()) < 1e-12  # conservative: zero by construction


@pytest.mark.parametrize("mode", ["direct", "correction"])
def test_direct_and_correction_forces_lose_their_mean_by_default(request_and_raw, mode):
    model, species, cells, positions, raw = request_and_raw
    expected = (raw.direct_forces if mode == "direct" else raw.forces - raw.direct_forces)[0].numpy()
    served = _forces_ev_ang(ForceEvaluator(model, species, mode)(cells, positions))
    np.testing.assert_allclose(served, expected - expected.mean(axis=0), rtol=0, atol=1e-10)
    assert np.abs(served.sum(axis=0)).max() < 1e-10
    kept = _forces_ev_ang(ForceEvaluator(model, species, mode, remove_net_force=False)(cells, positions))
    np.testing.assert_allclose(kept, expected, rtol=0, atol=1e-10)  # the opt-out serves the raw head


@pytest.mark.parametrize("remove", [True, False])
def test_conservative_forces_are_never_changed(request_and_raw, remove):
    model, species, cells, positions, raw = request_and_raw
    served = _forces_ev_ang(ForceEvaluator(model, species, "conservative", remove_net_force=remove)(cells, positions))
    np.testing.assert_allclose(served, raw.forces[0].numpy(), rtol=0, atol=1e-12)


def test_shared_pass_serves_the_direct_side_without_its_net_force(request_and_raw):
    """The MTS shared pass (one backbone pass, both heads) gives the separate evaluators' replies."""
    model, species, cells, positions, raw = request_and_raw
    cons = ForceEvaluator(model, species, "conservative")
    direct = ForceEvaluator(cons.backend, species, "direct")  # the same loaded model
    shared = SharedPass(cons, direct)
    from_cons = shared.conservative(cells, positions)
    from_direct = shared.direct(cells, positions)
    expected = raw.direct_forces[0].numpy()
    np.testing.assert_allclose(_forces_ev_ang(from_direct), expected - expected.mean(axis=0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(_forces_ev_ang(from_cons), raw.forces[0].numpy(), rtol=0, atol=1e-12)
    assert shared.direct_from_shared == 1


def test_pes_parameter_defaults_to_removal(request_and_raw, tmp_path):
    """Our i-PI PES (``<ffdirect>`` / i-pi-py_driver): remove_net_force true unless set false."""
    from ipi_ncforces.ipi_driver.pes import NCForcesDriver
    from ipi_ncforces.models.io import save_model
    from ipi_ncforces.models.structure_io import write_ipi_xyz

    model, species, cells, positions, raw = request_and_raw
    path = save_model(model, tmp_path / "toy.pt")
    from ase import Atoms

    template = write_ipi_xyz(Atoms(numbers=species, positions=np.zeros((len(species), 3)), cell=[10.0] * 3, pbc=True),
                             tmp_path / "t.xyz")
    expected = raw.direct_forces[0].numpy()
    for parameter, want in ((None, expected - expected.mean(axis=0)), ("false", expected)):
        extra = {} if parameter is None else {"remove_net_force": parameter}
        pes = NCForcesDriver(model=str(path), template=str(template), mode="direct", shared_pass=False, **extra)
        pes.check_parameters()
        _, forces, _, _ = pes.compute(cells[0], positions[0])
        np.testing.assert_allclose(unit_to_user("force", "ev/ang", np.asarray(forces)), want, rtol=0, atol=1e-10)
