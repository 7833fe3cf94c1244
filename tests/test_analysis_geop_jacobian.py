"""Optimizer convergence and Jacobian asymmetry on force fields with known answers:
a quadratic well (conservative: every optimizer converges, lambda = 0, no closed-path
work) and a rotational field F = c z x r (never converges, lambda = 1)."""

from __future__ import annotations

import json
import math

import ase
import numpy as np
import pytest
import torch
from ase.calculators.calculator import Calculator, all_changes

from ipi_ncforces.analysis import geop
from ipi_ncforces.analysis.jacobian import jacobian_of
from ipi_ncforces.models.base import DIRECT_HEAD, ENERGY_HEAD, PotentialModel


class FieldCalculator(Calculator):
    """F = -k r + c z x r (eV/A) for r in A; energy 0.5 k r^2 (eV) = the conservative part."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, k_ev_a2: float, c_ev_a2: float):
        super().__init__()
        self.k, self.c = k_ev_a2, c_ev_a2

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        r = self.atoms.positions
        rot = np.stack([-r[:, 1], r[:, 0], np.zeros(len(r))], axis=1)
        self.results = {"energy": 0.5 * self.k * float((r ** 2).sum()), "forces": -self.k * r + self.c * rot}


def test_quadratic_converges_rotational_never():
    """Quadratic well: 100% success for LBFGS and FIRE; pure rotation (no minimum reachable
    by following F, |F| = c |r_xy| never drops): 0%."""
    atoms = ase.Atoms("OHH", positions=np.zeros((3, 3)))
    study = geop.geop_study(atoms, lambda mode: FieldCalculator(1.0, 0.0 if mode == "conservative" else 1.0),
                            ["LBFGS", "FIRE"], ["conservative", "direct"], n_starts=3, sigma_a=0.5,
                            fmax_ev_a=1e-5, max_steps=200, seed=1)
    rates = {(c["optimizer"], c["forces"]): c["success_rate"] for c in study["cases"]}
    assert rates[("LBFGS", "conservative")] == rates[("FIRE", "conservative")] == 1.0
    pure = geop.geop_study(atoms, lambda mode: FieldCalculator(0.0, 1.0), ["LBFGS", "FIRE"], ["direct"],
                           n_starts=2, sigma_a=0.5, fmax_ev_a=1e-5, max_steps=60, seed=2)
    assert all(c["success_rate"] == 0.0 for c in pure["cases"])
    assert all(c["median_min_fmax_ev_a"] > 1e-3 for c in pure["cases"])  # a force floor, not convergence


def test_geop_report_from_ase_log_and_study_files(tmp_path):
    """An ASE optimizer log is parsed (step, energy, fmax) and judged against the threshold."""
    from ase.optimize import LBFGS

    rng = np.random.default_rng(0)
    atoms = ase.Atoms("OHH", positions=rng.normal(0, 0.5, (3, 3)))
    atoms.calc = FieldCalculator(2.0, 0.0)
    log = tmp_path / "lbfgs.log"
    LBFGS(atoms, logfile=str(log)).run(fmax=1e-4, steps=100)
    parsed = geop.read_ase_log(log)
    assert parsed["optimizer"] == "LBFGS" and parsed["fmax_ev_a"][-1] < 1e-4
    data = geop.analyze_outputs([str(log)], tmp_path / "out", fmax_ev_a=1e-4, max_steps=1000)
    assert data["runs"][0]["converged"]
    strict = geop.analyze_outputs([str(log)], tmp_path / "out", fmax_ev_a=1e-4, max_steps=3)  # too few steps
    assert not strict["runs"][0]["converged"]
    study = geop.geop_study(atoms, lambda mode: FieldCalculator(1.0, 0.0), ["FIRE"], ["conservative"],
                            n_starts=2, fmax_ev_a=1e-4, max_steps=300)
    written = geop.write_study(study, tmp_path / "out")
    assert "| FIRE | conservative | 2 | 100 ± 0 |" in written["markdown"]
    assert json.loads((tmp_path / "out" / "geop-study.json").read_text())["cases"][0]["success_rate"] == 1.0
    assert (tmp_path / "out" / "geop-study.png").stat().st_size > 0


class FieldModel(PotentialModel):
    """The same field as a PotentialModel: energy head 0.5 k r^2, direct head -k r + c z x r."""

    model_type = "test_field"

    def __init__(self, k_ev_a2: float, c_ev_a2: float):
        super().__init__(species=(1, 8), cutoff=5.0)
        self.heads = (ENERGY_HEAD, DIRECT_HEAD)
        self.k, self.c = k_ev_a2, c_ev_a2

    def forward(self, batch, heads):
        r = batch.positions
        out = {}
        if ENERGY_HEAD in heads:
            out["energy"] = 0.5 * self.k * (r ** 2).sum(dim=(1, 2))
        if DIRECT_HEAD in heads:
            rot = torch.stack([-r[..., 1], r[..., 0], torch.zeros_like(r[..., 0])], dim=-1)
            out["direct_forces"] = -self.k * r + self.c * rot
        return out


@pytest.mark.parametrize("k,c", [(1.0, 0.0), (1.0, 0.5), (0.0, 1.0)])
def test_lambda_and_closed_path_work_of_known_fields(k, c):
    """J = -k I + c R (R the xy rotation generator): lambda = sqrt(2) c / sqrt(3 k^2 + 2 c^2) per atom;
    rotating the molecule once about z through its centroid, the direct force does work
    2 pi c sum_i rho_i . r_i (rho = xy offset from the centroid); the conservative head gives 0 and 0."""
    rng = np.random.default_rng(3)
    atoms = ase.Atoms("OHH", positions=rng.normal(0, 1.0, (3, 3)), cell=np.zeros((3, 3)), pbc=False)
    res = jacobian_of(FieldModel(k, c), atoms)
    expected = math.sqrt(2) * c / math.sqrt(3 * k ** 2 + 2 * c ** 2)
    assert res["direct"]["lambda"] == pytest.approx(expected, abs=1e-12)
    if k > 0:
        assert res["conservative"]["lambda"] == pytest.approx(0.0, abs=1e-12)
        assert res["conservative"]["work_mev"]["rotation"] == pytest.approx(0.0, abs=1e-6)
    # rotation about z through the centroid: oint (c z x r) . dr = 2 pi c sum_i rho_i . (rho_i + centroid_xy)
    rel = atoms.positions - atoms.positions.mean(axis=0)
    w_rot_ev = 2 * math.pi * c * float((rel[:, :2] * atoms.positions[:, :2]).sum())
    assert res["direct"]["work_mev"]["rotation"] == pytest.approx(1000 * w_rot_ev, rel=1e-6, abs=1e-6)
