"""Jacobian asymmetry and closed-path work: zero for conservative forces, not for direct ones."""

from __future__ import annotations

import pytest
import torch

from ipi_ncforces.models.base import Batch, evaluate
from ipi_ncforces.models.jacobian import (
    asymmetry_lambda,
    bin_pair_asymmetry,
    bond_stretch_pattern,
    closed_path_work_ev,
    deformation_loop_path,
    force_jacobian,
    pair_asymmetry,
    rotation_path,
)
from ipi_ncforces.models.pair_toy import PairToyModel


@pytest.fixture
def small_batch(jittered_water_box):
    """Builder ``(seed=0, periodic=True) -> Batch`` of one jittered 8-water box."""
    return lambda seed=0, periodic=True: Batch.from_ase([jittered_water_box(seed=seed, periodic=periodic)])


def toy() -> PairToyModel:
    return PairToyModel(cutoff=4.0, eps_ev=0.5, sigma_ang=0.8, asymmetry=0.2).double()


def test_jacobian_of_conservative_forces_is_minus_a_symmetric_hessian(small_batch, tiny_model):
    # float64 autograd Hessians are symmetric to round-off (~1e-15 relative): 1e-6 is loose
    batch = small_batch()
    for model in (toy(), tiny_model("C", seed=1), tiny_model("M", seed=2)):
        jacobian = force_jacobian(model, batch, "conservative")
        assert jacobian.shape == (72, 72)
        assert asymmetry_lambda(jacobian) < 1e-6


def test_jacobian_rows_match_finite_differences_of_direct_forces(small_batch, tiny_model):
    model = tiny_model("NC", seed=3)
    batch = small_batch(1)
    jacobian = force_jacobian(model, batch, "direct")
    h = 1e-5
    plus, minus = batch.positions.clone(), batch.positions.clone()
    plus[0, 4, 1] += h
    minus[0, 4, 1] -= h

    def forces(p):
        return evaluate(model, Batch(batch.species, p, batch.cells), conservative=False, direct=True).direct_forces[0]

    column = ((forces(plus) - forces(minus)) / (2 * h)).reshape(-1)
    # central differences, h = 1e-5 A: error ~h^2 |F'''| << 1e-6 eV/A^2
    torch.testing.assert_close(jacobian[:, 3 * 4 + 1], column, rtol=0, atol=1e-6)


def test_direct_heads_have_an_antisymmetric_jacobian_part(small_batch, tiny_model):
    batch = small_batch()
    toy_lambda = asymmetry_lambda(force_jacobian(toy(), batch, "direct"))
    nc_lambda = asymmetry_lambda(force_jacobian(tiny_model("NC", seed=4), batch, "direct"))
    # the toy scales hetero-species pair forces by 1 +- 0.2: a few per cent asymmetry,
    # many orders of magnitude above the 1e-6 round-off floor of the conservative case
    assert 1e-3 < toy_lambda < 0.5
    assert nc_lambda > 1e-3


def test_pair_resolved_lambda(small_batch):
    batch = small_batch()
    conservative = pair_asymmetry(force_jacobian(toy(), batch, "conservative"), batch, 1e-12)
    direct = pair_asymmetry(force_jacobian(toy(), batch, "direct"), batch, 1e-12)
    assert conservative.lambda_ij.max() < 1e-6
    assert direct.lambda_ij.max() > 1e-3 and (direct.lambda_ij <= 1 + 1e-12).all()
    # interacting pairs are within the cutoff (4 A) in the minimum image
    assert direct.distance_ang.max() < 4.0 + 1e-9
    # the toy's asymmetry lives on O-H pairs only: same-species pairs stay symmetric
    z = batch.species
    same = z[direct.i] == z[direct.j]
    assert direct.lambda_ij[same].max() < 1e-6 and direct.lambda_ij[~same].min() > 1e-3
    centres, means, counts = bin_pair_asymmetry(direct, 0.5)
    assert int(counts.sum()) == direct.lambda_ij.numel() and centres.shape == means.shape


def test_closed_path_work_vanishes_only_for_conservative_forces(small_batch, tiny_model):
    batch = small_batch(2)
    positions = batch.positions[0]
    molecule = [0, 1, 2]  # O, H, H of the first water
    rotation = rotation_path(positions, molecule, axis=(0.3, 1.0, -0.2), n_points=48)
    # move the O along one bond and the H along the other: hetero pair, both moving
    u = bond_stretch_pattern(positions, 1, 0)
    w = bond_stretch_pattern(positions, 0, 2)
    loop = deformation_loop_path(positions, u, w, amplitude_ang=0.1, n_points=48)
    # The periodic trapezoid rule is spectrally accurate for smooth loops (|W| ~ 1e-15 eV
    # on the deformation loop), but pairs crossing the cosine cutoff (C1 only) on the
    # rotation put kinks in F(t), making it second order: measured |W| <= 3e-7 eV for
    # 48..400 points. Direct-head work on these paths is 1e-4 to 1e-3 eV.
    for model in (toy(), tiny_model("C", seed=5)):
        assert abs(closed_path_work_ev(model, batch, rotation, "conservative")) < 2e-6
        assert abs(closed_path_work_ev(model, batch, loop, "conservative")) < 1e-10
    assert abs(closed_path_work_ev(toy(), batch, loop, "direct")) > 1e-4
    # an untrained head with forces of liquid-water size (scale 10 eV/A) does ~1e-4 eV
    nc = tiny_model("NC", seed=6, scale_ev=10.0)
    assert abs(closed_path_work_ev(nc, batch, rotation, "direct")) > 2e-5


def test_rotation_path_is_closed_and_rigid(small_batch):
    positions = small_batch().positions[0]
    path = rotation_path(positions, [3, 4, 5], n_points=16)
    torch.testing.assert_close(path.positions[0], positions)
    d = path.positions[:, 3:6, None] - path.positions[:, None, 3:6]
    torch.testing.assert_close(d.norm(dim=-1), d[:1].norm(dim=-1).expand_as(d.norm(dim=-1)))
    # tangents are the derivative: compare with a finite difference in the angle
    step = 2 * torch.pi / 16
    torch.testing.assert_close((path.positions[1] - path.positions[0]) / step, path.tangents[0], atol=0.2, rtol=0)
