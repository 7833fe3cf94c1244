"""Long runs keep flat memory: the neighbour cache holds a bounded number of lists even
for a model whose cutoff changes on every call (the q-TIP4P/F reference), and its
answers stay exactly those of a fresh neighbour search.

Before the fix the cache was keyed by the exact cutoff: every q-TIP4P/F call stored a
new list (0.1 MB per call for the 8 waters here, 0.7-0.8 MB for 64) and none was reused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ipi_ncforces.ipi_driver.evaluator import ForceEvaluator
from ipi_ncforces.models.units import ANGSTROM_PER_BOHR
from ipi_ncforces.models.base import Batch
from ipi_ncforces.models.neighbors import NeighborCache, build_edges
from ipi_ncforces.models.qtip4pf import QTIP4PF
from ipi_ncforces.models.water_box import lattice_water_box

CALLS = 1500
SKIN_ANG = 0.5


def _rss_mb() -> float:
    """Resident set size of this process (MB), from /proc/self/status."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    pytest.skip("no VmRSS in /proc/self/status (not Linux)")


def _pairs(edges) -> set[tuple[int, int, tuple[int, ...]]]:
    shifts = edges.shifts.round().to(torch.long).tolist()
    return set(zip(edges.centers.tolist(), edges.neighbors.tolist(), map(tuple, shifts)))


def _md_like_positions(base_ang: np.ndarray, call: int, rng: np.random.Generator, directions: np.ndarray) -> np.ndarray:
    """Whole molecules swing 0.3 A back and forth along ``directions`` (one unit vector per
    atom, the same for O, H, H of a molecule; period 300 calls: several list rebuilds) and
    every atom gets fresh 0.01 A jitter, so the O-H distances, and with them q-TIP4P/F's
    list cutoff, change on every call."""
    swing = 0.3 * np.sin(2.0 * np.pi * call / 300.0)
    return base_ang + swing * directions + rng.normal(scale=0.01, size=base_ang.shape)


def test_varying_cutoffs_reuse_a_bounded_number_of_exact_lists():
    """Cutoffs that differ on every call (as q-TIP4P/F asks) are served from at most
    ``max_lists`` lists, mostly reused, and each answer equals a fresh search."""
    atoms = lattice_water_box(8, seed=3)
    batch = Batch.from_ase([atoms])
    cache = NeighborCache(skin_ang=0.4, max_lists=3)
    rng = np.random.default_rng(0)
    for call in range(200):
        cutoff = 3.0 + 0.6 * rng.random()  # spans 3 buckets of 0.2 A
        step = torch.as_tensor(rng.normal(scale=0.004, size=batch.positions.shape))
        batch = Batch(batch.species, batch.positions + step, batch.cells)
        assert _pairs(cache.edges(batch, cutoff)) == _pairs(build_edges(batch, cutoff))
        assert len(cache) <= 3
    assert cache.builds + cache.reuses == 200
    assert cache.reuses > 150, (cache.builds, cache.reuses)


def test_stale_list_of_a_bucket_is_replaced_not_kept():
    """A rebuild for the same bucket replaces the old list (no growth with rebuilds)."""
    batch = Batch.from_ase([lattice_water_box(8, seed=4)])
    cache = NeighborCache(skin_ang=0.4)
    for k in range(5):
        moved = Batch(batch.species, batch.positions + 0.5 * k, batch.cells)  # > skin/2: rebuild
        cache.edges(moved, 3.05 + 0.01 * k)
    assert cache.builds == 5
    assert len(cache) == 1


class _RecordingCache(NeighborCache):
    """A NeighborCache that remembers which cutoffs (A) it was asked for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requested: set[float] = set()

    def edges(self, batch, cutoff):
        self.requested.add(float(cutoff))
        return super().edges(batch, cutoff)


def test_reference_potential_memory_stays_flat_over_1500_calls():
    """1,500 ForceEvaluator calls of q-TIP4P/F (8 waters, Ewald; its list cutoff changes on
    every call) with the driver's default CPU skin: the cache holds at most its bound of
    lists and is actually reused, RSS grows by less than 40 MB (the unbounded cache grew
    148 MB over these calls), and forces equal those of an evaluator without a cache."""
    torch.set_num_threads(1)
    atoms = lattice_water_box(8, seed=5)  # 8 molecules, 24 atoms, periodic
    model = QTIP4PF()
    cached = ForceEvaluator(model, atoms.numbers, "conservative", neighbor_skin_ang=SKIN_ANG)
    cache = _RecordingCache(SKIN_ANG)
    cached.neighbor_cache = cache
    fresh = ForceEvaluator(model, atoms.numbers, "conservative", neighbor_skin_ang=0.0)
    cell_bohr = atoms.cell.array.T / ANGSTROM_PER_BOHR  # i-PI: lattice vectors as columns
    base = atoms.positions.copy()
    rng = np.random.default_rng(7)
    per_molecule = rng.normal(size=(len(atoms) // 3, 1, 3))
    directions = np.broadcast_to(per_molecule / np.linalg.norm(per_molecule, axis=-1, keepdims=True), (len(atoms) // 3, 3, 3))
    directions = directions.reshape(-1, 3)
    rss_after_warmup = 0.0
    for call in range(CALLS):
        positions_bohr = _md_like_positions(base, call, rng, directions) / ANGSTROM_PER_BOHR
        ((energy, forces, _, _),) = cached([cell_bohr], [positions_bohr])
        assert len(cache) <= cache.max_lists
        if call == 100:
            rss_after_warmup = _rss_mb()
        if call % 250 == 0:
            ((energy_ref, forces_ref, _, _),) = fresh([cell_bohr], [positions_bohr])
            assert energy == pytest.approx(energy_ref, rel=0, abs=1e-12)
            np.testing.assert_allclose(forces, forces_ref, rtol=0, atol=1e-10)
    growth_mb = _rss_mb() - rss_after_warmup
    assert len(cache.requested) > CALLS // 2, "the test must exercise a cutoff that changes between calls"
    assert cache.builds + cache.reuses == CALLS
    assert cache.reuses > 0.8 * CALLS, (cache.builds, cache.reuses)
    assert growth_mb < 40.0, f"RSS grew {growth_mb:.1f} MB over {CALLS - 100} calls"


def _served_backend(kind: str, tiny_model, tmp_path):
    """(model or backend for ForceEvaluator, skin A): a tiny DualHead in our format, or the
    same network exported to a metatomic (TorchScript) file and loaded from it."""
    model = tiny_model("M")
    if kind == "ours":
        return model, SKIN_ANG
    pytest.importorskip("metatomic.torch")
    from ipi_ncforces.models.loader import load_backend
    from ipi_ncforces.models.metatomic_export import to_atomistic

    path = tmp_path / "tiny-m-metatomic.pt"
    to_atomistic(model, dtype=torch.float64).save(str(path))
    return load_backend(path, neighbor_skin_ang=SKIN_ANG), 0.0  # metatomic: vesin keeps its own lists


@pytest.mark.parametrize("kind", ["ours", "metatomic"])
def test_ml_model_memory_stays_flat_over_1500_calls(kind, tiny_model, tmp_path):
    """The same 1,500-call check for an ML model (fixed cutoff) in both file formats the
    driver serves: RSS grows by less than 40 MB after warm-up; our cache holds one list."""
    torch.set_num_threads(1)
    atoms = lattice_water_box(8, seed=6)
    served, skin = _served_backend(kind, tiny_model, tmp_path)
    evaluator = ForceEvaluator(served, atoms.numbers, "conservative", neighbor_skin_ang=skin)
    cell_bohr = atoms.cell.array.T / ANGSTROM_PER_BOHR
    base = atoms.positions.copy()
    rng = np.random.default_rng(8)
    directions = np.repeat(rng.normal(size=(len(atoms) // 3, 1, 3)), 3, axis=1).reshape(-1, 3)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    rss_after_warmup = 0.0
    for call in range(CALLS):
        positions_bohr = _md_like_positions(base, call, rng, directions) / ANGSTROM_PER_BOHR
        ((_, forces, _, _),) = evaluator([cell_bohr], [positions_bohr])
        if call == 100:
            rss_after_warmup = _rss_mb()
    growth_mb = _rss_mb() - rss_after_warmup
    assert np.all(np.isfinite(forces))
    if evaluator.neighbor_cache is not None:
        assert len(evaluator.neighbor_cache) == 1
        assert evaluator.neighbor_cache.reuses > 0.8 * CALLS
    assert growth_mb < 40.0, f"RSS grew {growth_mb:.1f} MB over {CALLS - 100} calls ({kind})"
