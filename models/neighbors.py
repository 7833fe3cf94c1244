"""Neighbour lists for a :class:`models.base.Batch`, via vesin-torch.

vesin finds the pairs (i, j, cell shift S) without gradients; the edge vectors
``r_ij = x_j - x_i + S @ cell`` are then rebuilt in torch so that autograd flows to
positions and cell (forces and virial).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vesin.torch import NeighborList

from models.base import Batch


@dataclass
class Edges:
    """Directed edges over the B*N flattened atoms of a batch (full list: i->j and j->i).

    centers, neighbors: (E,) int64 flat atom indices (structure b, atom a -> b*N + a).
    shifts: (E, 3) integer cell shifts (float, same dtype as positions).
    structure: (E,) int64 structure index of each edge.
    """

    centers: torch.Tensor
    neighbors: torch.Tensor
    shifts: torch.Tensor
    structure: torch.Tensor

    def vectors(self, batch: Batch) -> torch.Tensor:
        """(E, 3) Angstrom, x_neighbor - x_center + shift @ cell; differentiable."""
        flat = batch.positions.reshape(-1, 3)
        cell_of_edge = batch.cells[self.structure]
        offsets = torch.einsum("ek,ekl->el", self.shifts, cell_of_edge)
        return flat[self.neighbors] - flat[self.centers] + offsets


def build_edges(batch: Batch, cutoff: float) -> Edges:
    """All pairs closer than ``cutoff`` (A), structure by structure (no gradients)."""
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
    )
