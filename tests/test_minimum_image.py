"""Minimum image through ase.geometry.find_mic wherever numpy is used, checked against a
brute-force search over the 5^3 nearest cell images, in skewed cells where rounding the
fractional coordinates is not the shortest vector."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from ipi_ncforces.analysis.diffusion import unwrap
from ipi_ncforces.analysis.rdf import rdf
from ipi_ncforces.models.base import Batch
from ipi_ncforces.models.jacobian import minimum_image_distances
from ipi_ncforces.models.water_box import lattice_water_box

SKEWED = np.array([[6.0, 0.0, 0.0], [4.5, 5.0, 0.0], [-4.0, 3.0, 5.5]])  # strongly triclinic (A)


def brute_force_mic(d: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Shortest image of each row of d (A) among n + cell shifts with |n_k| <= 2."""
    shifts = np.array(list(itertools.product(range(-2, 3), repeat=3))) @ cell
    images = d[:, None, :] + shifts[None, :, :]
    best = np.argmin(np.linalg.norm(images, axis=2), axis=1)
    return images[np.arange(len(d)), best]


def test_rounding_fractional_coordinates_is_not_the_minimum_image_here():
    """The premise: in SKEWED the old hand-written rounding misses shorter images."""
    d = np.random.default_rng(0).uniform(-6, 6, (500, 3))
    frac = d @ np.linalg.inv(SKEWED)
    rounded = np.linalg.norm((frac - np.round(frac)) @ SKEWED, axis=1)
    assert (rounded > np.linalg.norm(brute_force_mic(d, SKEWED), axis=1) + 1e-6).any()


def test_jacobian_pair_distances_are_minimum_image():
    rng = np.random.default_rng(1)
    positions = rng.uniform(0, 6, (12, 3))
    batch = Batch(
        species=torch.ones(12, dtype=torch.int64),
        positions=torch.tensor(positions)[None],
        cells=torch.tensor(SKEWED)[None],
    )
    i, j = torch.triu_indices(12, 12, offset=1)
    got = minimum_image_distances(batch, i, j).numpy()
    expected = np.linalg.norm(brute_force_mic(positions[j.numpy()] - positions[i.numpy()], SKEWED), axis=1)
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_unwrap_follows_atoms_across_a_skewed_box():
    """Atoms take steps of < 1 A and are wrapped into the skewed cell every frame;
    unwrap recovers the continuous path exactly."""
    rng = np.random.default_rng(2)
    steps = rng.normal(0.0, 0.4, (60, 5, 3))
    true = np.cumsum(steps, axis=0)
    frac = true @ np.linalg.inv(SKEWED)
    wrapped = (frac - np.floor(frac)) @ SKEWED
    cells = np.broadcast_to(SKEWED, (60, 3, 3))
    out = unwrap(wrapped, cells)
    np.testing.assert_allclose(out - out[0], true - true[0], atol=1e-9)


def test_rdf_pair_distances_match_brute_force():
    """g_OH on a water box in a skewed cell: histogram of brute-force minimum-image distances."""
    atoms = lattice_water_box(8)
    atoms.set_cell(SKEWED * 1.2, scale_atoms=True)  # r_max below half the smallest cell width
    positions, cells = atoms.positions[None], atoms.cell.array[None]
    symbols = atoms.get_chemical_symbols()
    r_max, n_bins = 1.9, 19
    centres, g = rdf(positions, cells, symbols, "O", "H", r_max, n_bins)
    o = [k for k, s in enumerate(symbols) if s == "O"]
    h = [k for k, s in enumerate(symbols) if s == "H"]
    d = (atoms.positions[h][None, :, :] - atoms.positions[o][:, None, :]).reshape(-1, 3)
    counts = np.histogram(np.linalg.norm(brute_force_mic(d, cells[0]), axis=1), np.linspace(0, r_max, n_bins + 1))[0]
    shell = 4.0 / 3.0 * np.pi * np.diff(np.linspace(0, r_max, n_bins + 1) ** 3)
    expected = counts / (shell * len(o) * len(h) / atoms.get_volume())
    np.testing.assert_allclose(g, expected, rtol=1e-12)
    assert g.sum() > 0

