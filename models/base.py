"""The one interface every potential implements, and how forces are derived from it.

A potential is a ``torch.nn.Module`` with up to two heads on one backbone:

* ``"energy"``: total energy per structure (eV). Conservative forces (eV/A) and the
  virial (eV) are obtained here by autograd, ``F = -dE/dr``, ``W = -dE/d(strain)``.
* ``"direct"``: a per-atom force vector predicted directly (eV/A), optionally a
  direct virial (eV). Evaluated without an autograd graph.

Conventions (ASE's): lengths in Angstrom, energies in eV, cells as rows of lattice
vectors, an all-zero cell means "not periodic". Structures in one batch share the
species list (i-PI batches beads/replicas of one system).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ipi_ncforces.models.modes import DIRECT_HEAD, ENERGY_HEAD

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
"""Floating-point precision by name (``--dtype``, metatomic ``capabilities.dtype``)."""


@dataclass
class Batch:
    """B structures with the same N atoms.

    species: (N,) int64 atomic numbers.
    positions: (B, N, 3) Angstrom.
    cells: (B, 3, 3) Angstrom, rows are lattice vectors; zeros for a cluster.
    """

    species: torch.Tensor
    positions: torch.Tensor
    cells: torch.Tensor

    @property
    def n_structures(self) -> int:
        return int(self.positions.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[1])

    def periodic(self) -> torch.Tensor:
        """(B,) bool: True where the cell is not all zeros."""
        return self.cells.abs().sum(dim=(1, 2)) > 0

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Batch":
        return Batch(self.species.to(device=device), self.positions.to(device=device, dtype=dtype),
                     self.cells.to(device=device, dtype=dtype))

    @classmethod
    def from_ase(cls, frames, dtype: torch.dtype = torch.float64) -> "Batch":
        """Batch from a list of ``ase.Atoms`` with identical species (A, rows cell)."""
        species = torch.as_tensor(frames[0].numbers, dtype=torch.long)
        for atoms in frames[1:]:
            if len(atoms) != len(frames[0]) or (atoms.numbers != frames[0].numbers).any():
                raise ValueError("all structures in a Batch must have the same species in the same order")
        positions = torch.stack([torch.as_tensor(a.positions, dtype=dtype) for a in frames])
        cells = torch.stack([torch.as_tensor(a.cell.array if a.pbc.any() else 0 * a.cell.array, dtype=dtype)
                             for a in frames])
        return cls(species=species, positions=positions, cells=cells)


@dataclass
class Prediction:
    """What :func:`evaluate` returns; entries not asked for are ``None``.

    energy: (B,) eV.  forces: (B, N, 3) eV/A, -dE/dr.  virial: (B, 3, 3) eV, -dE/dstrain.
    direct_forces: (B, N, 3) eV/A.  direct_virial: (B, 3, 3) eV or None if the model has none.
    """

    energy: torch.Tensor | None = None
    forces: torch.Tensor | None = None
    virial: torch.Tensor | None = None
    direct_forces: torch.Tensor | None = None
    direct_virial: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)


class PotentialModel(torch.nn.Module):
    """Base class of every model; subclasses implement :meth:`forward` and :meth:`config`.

    ``forward(batch, heads)`` returns a dict with the requested heads from ONE backbone pass:
    ``"energy"`` -> (B,) eV (differentiable w.r.t. positions and cells);
    ``"direct_forces"`` -> (B, N, 3) eV/A; and ``"direct_virial"`` -> (B, 3, 3) eV exactly
    when :attr:`predicts_direct_virial` is True.

    Attributes every model has:
    heads: the heads it can serve, a subset of (ENERGY_HEAD, DIRECT_HEAD).
    species: atomic numbers it knows. cutoff: interaction range (A).
    predicts_direct_virial: whether the direct head also returns ``"direct_virial"`` (eV).
    device, dtype: where its tensors live (properties, follow ``.to()``).
    """

    heads: tuple[str, ...] = ()
    predicts_direct_virial: bool = False
    model_type: ClassVar[str] = "base"

    def __init__(self, species: tuple[int, ...], cutoff: float):
        super().__init__()
        self.species = tuple(int(z) for z in species)
        self.cutoff = float(cutoff)

    @property
    def device(self) -> torch.device:
        """Device of all parameters and buffers (ValueError if they are split over several);
        CPU for a model without tensors (an analytic model runs where its input is)."""
        devices = {t.device for t in (*self.parameters(), *self.buffers())}
        if len(devices) > 1:
            raise ValueError(f"{type(self).__name__} has tensors on several devices: {sorted(map(str, devices))}")
        return devices.pop() if devices else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the parameters (ValueError if they differ), of the floating buffers for a
        model without parameters, float64 for one with neither (an analytic model computes
        in its input's dtype)."""
        dtypes = {t.dtype for t in self.parameters()} or {t.dtype for t in self.buffers() if t.is_floating_point()}
        if len(dtypes) > 1:
            raise ValueError(f"{type(self).__name__} has tensors of several dtypes: {sorted(map(str, dtypes))}")
        return dtypes.pop() if dtypes else torch.float64

    def forward(self, batch: Batch, heads: tuple[str, ...]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def config(self) -> dict:
        """Constructor keyword arguments; ``ipi_ncforces.models.io.save_model`` stores them."""
        raise NotImplementedError

    def check_species(self, species: torch.Tensor) -> None:
        """Raise ValueError naming the species the model does not know."""
        unknown = sorted(set(int(z) for z in species.tolist()) - set(self.species))
        if unknown:
            raise ValueError(f"structure contains atomic numbers {unknown} unknown to this model "
                             f"(knows {list(self.species)})")

    def require_head(self, head: str) -> None:
        if head not in self.heads:
            raise ValueError(f"model has no '{head}' head (it has: {', '.join(self.heads) or 'none'})")


def _strained(batch: Batch) -> tuple[Batch, torch.Tensor, torch.Tensor]:
    """Positions and cells under a symmetric-free displacement gradient (I + strain)."""
    positions = batch.positions.detach().clone().requires_grad_(True)
    strain = torch.zeros(batch.n_structures, 3, 3, dtype=positions.dtype, device=positions.device, requires_grad=True)
    deformation = torch.eye(3, dtype=positions.dtype, device=positions.device) + strain
    strained = Batch(batch.species, torch.bmm(positions, deformation), torch.bmm(batch.cells.detach(), deformation))
    return strained, positions, strain


def evaluate(model: PotentialModel, batch: Batch, *, conservative: bool = True, direct: bool = False,
             virial: bool = True, energy: bool = True, create_graph: bool = False) -> Prediction:
    """Evaluate ``model`` on ``batch``; one backbone pass serves both heads.

    conservative: energy, forces = -dE/dr and (if ``virial``) W = -dE/dstrain.
    direct: direct forces (and direct virial if the model predicts one); when
    ``conservative`` is False this runs under ``torch.inference_mode`` (no graph), and
    ``energy`` chooses whether the energy head, if any, is evaluated too.
    create_graph: keep the graph of the returned energy and forces (e.g. for a loss on them);
      positions are an internal copy, so for dF/dr use :mod:`ipi_ncforces.models.jacobian`.
    """
    if conservative:
        model.require_head(ENERGY_HEAD)
    if direct:
        model.require_head(DIRECT_HEAD)
    heads: list[str] = []
    if conservative or (energy and ENERGY_HEAD in model.heads):
        heads.append(ENERGY_HEAD)
    if direct:
        heads.append(DIRECT_HEAD)

    prediction = Prediction()
    if not conservative:
        with torch.inference_mode():
            out = model(batch, tuple(heads))
        prediction.energy = out.get("energy")
        prediction.direct_forces = out.get("direct_forces")
        prediction.direct_virial = out.get("direct_virial")
        return prediction

    with torch.enable_grad():
        if virial:
            strained, positions, strain = _strained(batch)
            out = model(strained, tuple(heads))
            inputs = [positions, strain]
        else:
            positions = batch.positions.detach().clone().requires_grad_(True)
            out = model(Batch(batch.species, positions, batch.cells), tuple(heads))
            inputs = [positions]
        grads = torch.autograd.grad(out["energy"].sum(), inputs, create_graph=create_graph, retain_graph=create_graph)
    prediction.energy = out["energy"] if create_graph else out["energy"].detach()
    prediction.forces = -grads[0]
    if virial:
        w = -grads[1]
        prediction.virial = 0.5 * (w + w.transpose(1, 2))
    if direct:
        prediction.direct_forces = out["direct_forces"].detach()
        dv = out.get("direct_virial")
        prediction.direct_virial = None if dv is None else dv.detach()
    return prediction
