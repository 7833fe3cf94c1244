"""The Verlet-skin neighbour cache returns exactly the pairs of a fresh search."""

from __future__ import annotations

import numpy as np
import torch

from ipi_ncforces.models.base import Batch, evaluate
from ipi_ncforces.models.neighbors import NeighborCache, build_edges
from ipi_ncforces.models.pair_toy import PairToyModel
from ipi_ncforces.models.water_box import lattice_water_box


def _pairs(edges) -> set[tuple[int, int, tuple[int, ...]]]:
    shifts = edges.shifts.round().to(torch.long).tolist()
    return set(zip(edges.centers.tolist(), edges.neighbors.tolist(), map(tuple, shifts)))


def _batch(n_structures: int = 2, seed: int = 0) -> Batch:
    frames = [lattice_water_box(8, seed=seed + b) for b in range(n_structures)]
    return Batch.from_ase(frames)


def test_cached_pairs_equal_fresh_search_while_atoms_move():
    """Moving every atom a little at a time, the cache (skin 0.4 A) gives the same pair set
    as vesin from scratch, reusing its list until some atom moved more than skin/2."""
    cutoff, skin = 3.0, 0.4
    batch = _batch()
    cache = NeighborCache(skin_ang=skin)
    rng = np.random.default_rng(1)
    for _ in range(12):
        # 0.05 A random steps: several reuses, then a rebuild after ~0.2 A of drift
        step = torch.as_tensor(rng.normal(scale=0.05, size=batch.positions.shape))
        batch = Batch(batch.species, batch.positions + step, batch.cells)
        assert _pairs(cache.edges(batch, cutoff)) == _pairs(build_edges(batch, cutoff))
    assert cache.builds >= 2 and cache.reuses >= 2


def test_cell_change_forces_rebuild():
    cache = NeighborCache(skin_ang=0.5)
    batch = _batch(1)
    cache.edges(batch, 3.0)
    scaled = Batch(batch.species, batch.positions * 1.01, batch.cells * 1.01)
    assert _pairs(cache.edges(scaled, 3.0)) == _pairs(build_edges(scaled, 3.0))
    assert cache.builds == 2


def test_active_cache_gives_same_forces_through_the_model():
    """A model calling build_edges inside ``cache.active()`` yields identical energies,
    conservative forces and direct forces (float64: equal to 1e-12 eV/A, summation order only)."""
    model = PairToyModel(cutoff=3.0).double()
    batch = _batch()
    reference = evaluate(model, batch, conservative=True, direct=True)
    cache = NeighborCache(skin_ang=0.5)
    with cache.active():
        evaluate(model, batch, conservative=True, direct=True)  # build
        cached = evaluate(model, batch, conservative=True, direct=True)  # reuse
    assert cache.reuses >= 1
    torch.testing.assert_close(cached.energy, reference.energy, rtol=0, atol=1e-12)
    torch.testing.assert_close(cached.forces, reference.forces, rtol=0, atol=1e-12)
    torch.testing.assert_close(cached.virial, reference.virial, rtol=0, atol=1e-12)
    torch.testing.assert_close(cached.direct_forces, reference.direct_forces, rtol=0, atol=1e-12)
    # outside the block the plain search is used again
    build_edges(batch, 3.0)
    assert cache.builds + cache.reuses == 2
