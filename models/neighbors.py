"""Neighbour lists for a :class:`ipi_ncforces.models.base.Batch`, via vesin-torch.

vesin finds the pairs (i, j, cell shift S) without gradients; the edge vectors
``r_ij = x_j - x_i + S @ cell`` are then rebuilt in torch so that autograd flows to
positions and cell (forces and virial).

:class:`NeighborCache` adds a Verlet skin: a list is rebuilt only when an atom has
moved more than about half the skin, which saves the search between MD steps. It also
serves models whose cutoff changes from call to call (cutoffs are rounded up to
buckets) and holds a bounded number of lists, so its memory stays flat on long runs.
"""

from __future__ import annotations

import math
from collections import OrderedDict
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
    """Verlet neighbour lists kept between calls; each call returns exactly the pairs a
    fresh :func:`build_edges` would (same pairs, possibly in another order).

    A list is built with radius ``R = C + skin_ang`` (A), where ``C`` is the requested
    cutoff rounded UP to a multiple of ``bucket_ang`` (default ``skin_ang / 2``). It
    serves a later request for cutoff ``c <= R`` while the cells and species are
    unchanged and no atom has moved more than ``(R - c) / 2`` since the build: two atoms
    close their distance by at most twice the largest displacement, so a pair outside
    ``R`` at build time cannot be inside ``c`` yet. Each call then keeps only the pairs
    inside ``c``. Positions are used as given (i-PI sends unwrapped coordinates; a wrapped
    atom jumps by a lattice vector and simply triggers a rebuild).

    Why buckets: models whose cutoff depends on the positions (q-TIP4P/F asks for the
    real-space cutoff plus twice the largest O-site distance) request a slightly
    different cutoff on every call. Keyed by the exact cutoff, every call stored a new
    list and none was ever reused (0.8 MB per call for 64 waters, see
    .notes/long-runs.md). With buckets a rebuild replaces the list of its own bucket,
    and at most ``max_lists`` lists (least recently used dropped first) are kept.

    Use it directly (``cache.edges(batch, cutoff)``) or activate it for every
    :func:`build_edges` call inside a block, so models need no change::

        cache = NeighborCache(skin_ang=0.5)
        with cache.active():
            out = model(batch, heads)

    ``builds`` and ``reuses`` count what happened, ``len(cache)`` is the number of lists
    held (for tests and timing reports).
    """

    def __init__(self, skin_ang: float = 0.5, *, bucket_ang: float | None = None, max_lists: int = 4):
        if skin_ang <= 0:
            raise ValueError(f"neighbour-list skin must be > 0 A, got {skin_ang}")
        bucket_ang = 0.5 * skin_ang if bucket_ang is None else float(bucket_ang)
        if bucket_ang <= 0:
            raise ValueError(f"neighbour-list cutoff bucket must be > 0 A, got {bucket_ang}")
        if max_lists < 1:
            raise ValueError(f"the neighbour cache must hold at least 1 list, got {max_lists}")
        self.skin_ang = float(skin_ang)
        self.bucket_ang = bucket_ang
        self.max_lists = int(max_lists)
        self.builds = 0
        self.reuses = 0
        # bucket index k (list covers cutoffs up to k * bucket_ang + skin_ang) ->
        # (list radius A, reference positions (B,N,3), reference cells (B,3,3), species, edges);
        # ordered from least to most recently used
        self._lists: OrderedDict[int, tuple[float, torch.Tensor, torch.Tensor, torch.Tensor, Edges]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lists)

    def clear(self) -> None:
        self._lists.clear()

    def _bucket(self, cutoff: float) -> int:
        # the small tolerance keeps a cutoff that is a multiple of the bucket (3.0 / 0.25)
        # in its own bucket despite rounding
        return max(1, math.ceil(cutoff / self.bucket_ang - 1e-9))

    def _valid(self, batch: Batch, cutoff: float) -> tuple[int, Edges] | None:
        """(bucket, candidate edges) of a held list that still covers ``cutoff``; None if none."""
        positions = batch.positions.detach()
        cells = batch.cells.detach()
        # smallest list radius first: fewest candidate pairs to filter
        for key, (radius, ref_pos, ref_cells, ref_species, edges) in sorted(
            self._lists.items(), key=lambda item: item[1][0]
        ):
            if radius <= cutoff:
                continue
            if (
                positions.shape != ref_pos.shape
                or positions.dtype != ref_pos.dtype
                or positions.device != ref_pos.device
                or not torch.equal(batch.species, ref_species)
                or not torch.equal(cells, ref_cells)
            ):
                continue
            largest_sq = ((positions - ref_pos) ** 2).sum(dim=-1).max()
            if float(largest_sq) <= (0.5 * (radius - cutoff)) ** 2:
                return key, edges
        return None

    def edges(self, batch: Batch, cutoff: float) -> Edges:
        """Pairs closer than ``cutoff`` (A), from a held list when one still covers it."""
        cutoff = float(cutoff)
        found = self._valid(batch, cutoff)
        if found is None:
            key = self._bucket(cutoff)
            radius = key * self.bucket_ang + self.skin_ang
            candidates = _build_edges(batch, radius)
            self._lists.pop(key, None)  # a stale list of this bucket is replaced, not kept
            self._lists[key] = (
                radius,
                batch.positions.detach().clone(),
                batch.cells.detach().clone(),
                batch.species.clone(),
                candidates,
            )
            while len(self._lists) > self.max_lists:
                self._lists.popitem(last=False)
            self.builds += 1
        else:
            key, candidates = found
            self._lists.move_to_end(key)
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
