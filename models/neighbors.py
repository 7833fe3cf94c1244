"""Neighbour lists for a :class:`ipi_ncforces.models.base.Batch`, via vesin-torch.

vesin finds the pairs (i, j, cell shift S) without gradients; the edge vectors
``r_ij = x_j - x_i + S @ cell`` are then rebuilt in torch so that autograd flows to
positions and cell (forces and virial).

:class:`NeighborCache` adds a Verlet skin: the list is rebuilt only when an atom has
moved more than half the skin, which saves the search between MD steps.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator

import torch
from vesin_torch import NeighborList

from ipi_ncforces.models.base import Batch


@dataclass
class Edges:
    """Directed edges over the B*N flattened atoms of a batch (full list: i->j and j->i).

    centers, neighbors: (E,) int64 flat atom indices (structure b, atom a -> b*N + a).
    shifts: (E, 3) integer cell shifts (float, same dtype as positions).
    structure: (E,) int64 structure index of each edge.
    counts: optional (B,) int64 number of edges of each structure when the edges are
      grouped by structure in order (lets :meth:`vectors` skip a per-edge cell gather).
    """

    centers: torch.Tensor
    neighbors: torch.Tensor
    shifts: torch.Tensor
    structure: torch.Tensor
    counts: torch.Tensor | None = None

    def vectors(self, batch: Batch) -> torch.Tensor:
        """(E, 3) Angstrom, x_neighbor - x_center + shift @ cell; differentiable."""
        flat = batch.positions.reshape(-1, 3)
        difference = flat.index_select(0, self.neighbors) - flat.index_select(0, self.centers)
        return difference + self._offsets(batch.cells)

    def _offsets(self, cells: torch.Tensor) -> torch.Tensor:
        # a (E,3,3) gather of cells is the slow part of this function: avoid it when the
        # edges are known to be grouped by structure (always true for lists made here)
        if cells.shape[0] == 1:
            return self.shifts @ cells[0]
        if self.counts is not None:
            parts = torch.split(self.shifts, self.counts.tolist())
            return torch.cat([part @ cells[b] for b, part in enumerate(parts)])
        return torch.einsum("ek,ekl->el", self.shifts, cells[self.structure])


def build_edges(batch: Batch, cutoff: float) -> Edges:
    """All pairs closer than ``cutoff`` (A), structure by structure (no gradients).

    Inside ``with cache.active():`` (a :class:`NeighborCache`) the pairs come from that
    Verlet list instead; the result is the same set of edges.
    """
    cache = _ACTIVE_CACHE.get()
    if cache is not None:
        return cache.edges(batch, cutoff)
    return _build_edges(batch, cutoff)


def _build_edges(batch: Batch, cutoff: float) -> Edges:
    calculator = NeighborList(cutoff=float(cutoff), full_list=True)
    n_atoms = batch.n_atoms
    periodic = batch.periodic()
    centers, neighbors, shifts, structure = [], [], [], []
    positions = batch.positions.detach()
    cells = batch.cells.detach()
    for b in range(batch.n_structures):
        pbc = bool(periodic[b])
        box = cells[b] if pbc else torch.zeros_like(cells[b])
        i, j, s = calculator.compute(points=positions[b], box=box, periodic=pbc, quantities="ijS")
        centers.append(i.to(torch.long) + b * n_atoms)
        neighbors.append(j.to(torch.long) + b * n_atoms)
        shifts.append(s.to(positions.dtype))
        structure.append(torch.full_like(i, b, dtype=torch.long))
    return Edges(
        centers=torch.cat(centers),
        neighbors=torch.cat(neighbors),
        shifts=torch.cat(shifts),
        structure=torch.cat(structure),
        counts=torch.tensor([len(i) for i in centers], dtype=torch.long),
    )


class NeighborCache:
    """Verlet neighbour list: edges built with ``cutoff + skin_ang`` and reused while
    no atom has moved more than ``skin_ang / 2`` (A) since the last build and the cells
    are unchanged; each call returns only the pairs inside ``cutoff``.

    Two atoms can close their distance by at most twice the largest displacement, so a
    pair outside ``cutoff + skin`` at build time cannot be inside ``cutoff`` before the
    rebuild criterion fires: the result equals :func:`build_edges` exactly (same pairs,
    possibly in another order). Positions are used as given (i-PI sends unwrapped
    coordinates; a wrapped atom jumps by a lattice vector and simply triggers a rebuild).

    Use it directly (``cache.edges(batch, cutoff)``) or activate it for every
    :func:`build_edges` call inside a block, so models need no change::

        cache = NeighborCache(skin_ang=0.5)
        with cache.active():
            out = model(batch, heads)

    ``builds`` and ``reuses`` count what happened (for tests and timing reports).
    """

    def __init__(self, skin_ang: float = 0.5):
        if skin_ang <= 0:
            raise ValueError(f"neighbour-list skin must be > 0 A, got {skin_ang}")
        self.skin_ang = float(skin_ang)
        self.builds = 0
        self.reuses = 0
        # cutoff (A) -> (reference positions (B,N,3), reference cells (B,3,3), species, edges)
        self._lists: dict[float, tuple[torch.Tensor, torch.Tensor, torch.Tensor, Edges]] = {}

    def clear(self) -> None:
        self._lists.clear()

    def _valid(self, batch: Batch, cutoff: float) -> Edges | None:
        entry = self._lists.get(cutoff)
        if entry is None:
            return None
        ref_pos, ref_cells, ref_species, edges = entry
        positions = batch.positions.detach()
        if (
            positions.shape != ref_pos.shape
            or positions.dtype != ref_pos.dtype
            or positions.device != ref_pos.device
            or not torch.equal(batch.species, ref_species)
            or not torch.equal(batch.cells.detach(), ref_cells)
        ):
            return None
        largest_sq = ((positions - ref_pos) ** 2).sum(dim=-1).max()
        if float(largest_sq) > (0.5 * self.skin_ang) ** 2:
            return None
        return edges

    def edges(self, batch: Batch, cutoff: float) -> Edges:
        """Pairs closer than ``cutoff`` (A), from the cached list when still valid."""
        cutoff = float(cutoff)
        candidates = self._valid(batch, cutoff)
        if candidates is None:
            candidates = _build_edges(batch, cutoff + self.skin_ang)
            self._lists[cutoff] = (
                batch.positions.detach().clone(),
                batch.cells.detach().clone(),
                batch.species.clone(),
                candidates,
            )
            self.builds += 1
        else:
            self.reuses += 1
        with torch.no_grad():
            distance_sq = (candidates.vectors(batch).detach() ** 2).sum(dim=1)
            inside = distance_sq < cutoff * cutoff
            keep = torch.nonzero(inside).squeeze(1)
            counts = None
            if candidates.counts is not None:
                per_structure = torch.split(inside, candidates.counts.tolist())
                counts = torch.stack([m.sum() for m in per_structure]).cpu() if per_structure else None
        return Edges(
            centers=candidates.centers.index_select(0, keep),
            neighbors=candidates.neighbors.index_select(0, keep),
            shifts=candidates.shifts.index_select(0, keep),
            structure=candidates.structure.index_select(0, keep),
            counts=counts,
        )

    @contextmanager
    def active(self) -> Iterator["NeighborCache"]:
        """Route every :func:`build_edges` call in this block (this thread/context) here."""
        token = _ACTIVE_CACHE.set(self)
        try:
            yield self
        finally:
            _ACTIVE_CACHE.reset(token)


_ACTIVE_CACHE: ContextVar[NeighborCache | None] = ContextVar("ipi_ncforces_neighbor_cache", default=None)
