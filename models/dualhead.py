"""A small dual-head message-passing potential: one backbone, energy and direct-force heads.

Backbone (local, cutoff ``cutoff`` A, neighbours from :func:`ipi_ncforces.models.neighbors.build_edges`):

* atoms start from a learned species embedding ``h_i`` (``width`` channels);
* each edge carries a Bessel radial basis ``sin(n pi r / rc) / r`` times a smooth cosine
  cutoff, so every feature goes to zero (with zero slope) at ``rc``;
* each of ``layers`` interaction blocks sums neighbour messages into a scalar part
  ``s_i = sum_j (W_s rbf_ij) * h_j`` and a vector part
  ``v_i = sum_j (W_v rbf_ij) * h_j  r_hat_ij`` (``vector_width`` channels x 3). The update uses only
  invariants, ``[s_i, |v_i|^2]``, so ``h_i`` is rotation invariant and still sees bond
  angles (``|v_i|^2`` is a sum over neighbour pairs of ``cos theta_jik``).

Heads:

* ``"energy"``: ``E = sum_i (scale * MLP(h_i) + offset[Z_i])`` in eV; forces, virial
  by autograd in :func:`ipi_ncforces.models.base.evaluate` (conservative).
* ``"direct"``: ``F_i = scale * sum_j w_ij r_hat_ij`` in eV/A with invariant edge
  weights ``w_ij = c . [silu(A h_i + B h_j + P rbf_ij) * (G rbf_ij)]``: a sum of bond vectors
  with invariant coefficients, hence rotation-equivariant by construction, but
  ``w_ij != w_ji`` in general, so neither Newton's third law nor curl-freeness holds.
  The direct virial is ``W = -1/2 sum_edges r_ij (x) f_ij`` (symmetrized, eV), which is
  the exact virial whenever the pair forces happen to be antisymmetric.

Variants: C = heads ("energy",), NC = ("direct",), M = ("energy", "direct").
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ipi_ncforces.models.base import DIRECT_HEAD, ENERGY_HEAD, Batch, PotentialModel
from ipi_ncforces.models.neighbors import build_edges

VARIANT_HEADS: dict[str, tuple[str, ...]] = {
    "C": (ENERGY_HEAD,),
    "NC": (DIRECT_HEAD,),
    "M": (ENERGY_HEAD, DIRECT_HEAD),
}


def cosine_cutoff(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    """0.5 (cos(pi r / rc) + 1) for r < rc, else 0 (dimensionless)."""
    fc = 0.5 * (torch.cos(math.pi * r / cutoff) + 1.0)
    return torch.where(r < cutoff, fc, torch.zeros_like(fc))


class BesselBasis(nn.Module):
    """``sqrt(2/rc) sin(n pi r / rc) / r``, n = 1..n_rbf, times the cosine cutoff (r in A)."""

    def __init__(self, cutoff: float, n_rbf: int):
        super().__init__()
        self.cutoff = float(cutoff)
        self.register_buffer("n_pi", math.pi * torch.arange(1, n_rbf + 1, dtype=torch.float64) / cutoff)

    def forward(self, r: torch.Tensor, fc: torch.Tensor) -> torch.Tensor:
        r = r.unsqueeze(1)
        return math.sqrt(2.0 / self.cutoff) * torch.sin(self.n_pi.to(r.dtype) * r) / r * fc.unsqueeze(1)


class Interaction(nn.Module):
    """One message-passing block: scalar + vector neighbour sums, invariant residual update.

    width: scalar channels. vector_width: vector channels (fewer: they cost 3x per edge).
    """

    def __init__(self, width: int, vector_width: int, n_rbf: int):
        super().__init__()
        self.width, self.vector_width = width, vector_width
        self.filters = nn.Linear(n_rbf, width + vector_width, bias=False)
        self.pre = nn.Linear(width, width + vector_width)
        self.mix = nn.Linear(vector_width, vector_width, bias=False)
        self.update = nn.Sequential(nn.Linear(width + vector_width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(
        self, h: torch.Tensor, rbf: torch.Tensor, unit: torch.Tensor, centers: torch.Tensor,
        neighbors: torch.Tensor, norm: float,
    ) -> torch.Tensor:
        messages = self.filters(rbf) * self.pre(h)[neighbors]
        m_s, m_v = messages.split([self.width, self.vector_width], dim=1)
        n = h.shape[0]
        s = torch.zeros(n, self.width, dtype=h.dtype, device=h.device).index_add(0, centers, m_s)
        vec_msg = m_v.unsqueeze(2) * unit.unsqueeze(1)
        v = torch.zeros(n, self.vector_width, 3, dtype=h.dtype, device=h.device).index_add(0, centers, vec_msg)
        v = self.mix(v.transpose(1, 2))
        invariants = torch.cat([s * norm, (v * v).sum(dim=1) * norm * norm], dim=1)
        return h + self.update(invariants)


class DualHeadPotential(PotentialModel):
    """Message-passing potential with an energy head and/or a direct-force head.

    species: atomic numbers it knows. cutoff: A. width: scalar feature channels.
    vector_width: vector feature channels. layers: interaction blocks. n_rbf: radial
    basis functions. variant: "C", "NC" or "M".
    energy_offsets_ev: per-species energy (eV/atom, in ``species`` order) added to E.
    scale_ev: output scale (eV per atom for energies, eV/A for forces).
    avg_neighbors: typical neighbour count; message sums are divided by its square root.
    """

    model_type = "dual_head"
    predicts_direct_virial = True

    def __init__(self, species: tuple[int, ...] = (1, 8), cutoff: float = 5.0, width: int = 32, layers: int = 2,
                 n_rbf: int = 16, vector_width: int = 8, variant: str = "M",
                 energy_offsets_ev: list[float] | None = None, scale_ev: float = 1.0, avg_neighbors: float = 30.0):
        super().__init__(species=species, cutoff=cutoff)
        if variant not in VARIANT_HEADS:
            raise ValueError(f"variant must be one of {', '.join(VARIANT_HEADS)}, not '{variant}'")
        self.variant = variant
        self.heads = VARIANT_HEADS[variant]
        self.predicts_direct_virial = DIRECT_HEAD in self.heads
        self.width, self.n_layers, self.n_rbf = int(width), int(layers), int(n_rbf)
        self.vector_width = int(vector_width)
        self.scale_ev = float(scale_ev)
        self.avg_neighbors = float(avg_neighbors)
        n_species = len(self.species)
        offsets = [0.0] * n_species if energy_offsets_ev is None else [float(x) for x in energy_offsets_ev]
        if len(offsets) != n_species:
            raise ValueError(f"energy_offsets_ev needs {n_species} values (one per species), got {len(offsets)}")
        self.energy_offsets_ev = offsets
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.float64), persistent=False)
        lookup = torch.full((max(self.species) + 1,), -1, dtype=torch.long)
        lookup[list(self.species)] = torch.arange(n_species)
        self.register_buffer("species_index", lookup, persistent=False)

        self.embedding = nn.Embedding(n_species, self.width)
        self.rbf = BesselBasis(self.cutoff, self.n_rbf)
        self.interactions = nn.ModuleList(Interaction(self.width, self.vector_width, self.n_rbf) for _ in range(self.n_layers))
        if ENERGY_HEAD in self.heads:
            self.energy_mlp = nn.Sequential(nn.Linear(self.width, self.width), nn.SiLU(), nn.Linear(self.width, 1))
        if DIRECT_HEAD in self.heads:
            self.direct_center = nn.Linear(self.width, self.width)
            self.direct_neighbor = nn.Linear(self.width, self.width, bias=False)
            self.direct_radial = nn.Linear(self.n_rbf, self.width, bias=False)
            self.direct_gate = nn.Linear(self.n_rbf, self.width, bias=False)
            self.direct_out = nn.Linear(self.width, 1, bias=False)

    def config(self) -> dict:
        return {"species": list(self.species), "cutoff": self.cutoff, "width": self.width, "layers": self.n_layers,
                "n_rbf": self.n_rbf, "vector_width": self.vector_width, "variant": self.variant,
                "energy_offsets_ev": list(self.energy_offsets_ev), "scale_ev": self.scale_ev,
                "avg_neighbors": self.avg_neighbors}

    def forward(self, batch: Batch, heads: tuple[str, ...]) -> dict[str, torch.Tensor]:
        self.check_species(batch.species)
        for head in heads:
            self.require_head(head)
        n_struct, n_atoms = batch.n_structures, batch.n_atoms
        edges = build_edges(batch, self.cutoff)
        vectors = edges.vectors(batch)
        r = vectors.norm(dim=1)
        unit = vectors / r.unsqueeze(1)
        fc = cosine_cutoff(r, self.cutoff)
        rbf = self.rbf(r, fc)

        kinds = self.species_index[batch.species].repeat(n_struct)
        h = self.embedding(kinds)
        # 1/sqrt(n): keeps s and |v| of order one in a dense liquid (~50 neighbours)
        norm = self.avg_neighbors ** -0.5
        for block in self.interactions:
            h = block(h, rbf, unit, edges.centers, edges.neighbors, norm)

        out: dict[str, torch.Tensor] = {}
        if ENERGY_HEAD in heads:
            per_atom = self.scale_ev * self.energy_mlp(h).squeeze(1) + self.offsets.to(h.dtype)[kinds]
            out["energy"] = per_atom.reshape(n_struct, n_atoms).sum(dim=1)
        if DIRECT_HEAD in heads:
            # In an inference pass that also computes the energy (the MTS pass), nothing
            # differentiates the direct forces: build no autograd graph for them. Training
            # (self.training) and direct-only passes (Jacobian tools) keep it.
            if ENERGY_HEAD in heads and not self.training and torch.is_grad_enabled():
                with torch.no_grad():
                    forces, virial = self._direct_head(h, rbf, unit, vectors, edges.centers, edges.neighbors,
                                                       edges.structure, n_struct, n_atoms)
            else:
                forces, virial = self._direct_head(h, rbf, unit, vectors, edges.centers, edges.neighbors,
                                                   edges.structure, n_struct, n_atoms)
            out["direct_forces"] = forces
            out["direct_virial"] = virial
        return out

    def _direct_head(self, h: torch.Tensor, rbf: torch.Tensor, unit: torch.Tensor, vectors: torch.Tensor,
                     centers: torch.Tensor, neighbors: torch.Tensor, structure: torch.Tensor, n_struct: int,
                     n_atoms: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Direct forces (n_struct, n_atoms, 3) eV/A and their virial (n_struct, 3, 3) eV."""
        pre = self.direct_center(h)[centers] + self.direct_neighbor(h)[neighbors]
        hidden = nn.functional.silu(pre + self.direct_radial(rbf)) * self.direct_gate(rbf)
        weight = self.direct_out(hidden).squeeze(1)  # rbf carries the cutoff: w -> 0 smoothly at rc
        pair_force = (self.scale_ev * weight).unsqueeze(1) * unit  # eV/A, contribution to F_center
        flat = torch.zeros(n_struct * n_atoms, 3, dtype=h.dtype, device=h.device)
        forces = flat.index_add(0, centers, pair_force).reshape(n_struct, n_atoms, 3)
        per_edge = -0.5 * vectors.unsqueeze(2) * pair_force.unsqueeze(1)
        virial = torch.zeros(n_struct, 3, 3, dtype=h.dtype, device=h.device).index_add(0, structure, per_edge)
        return forces, 0.5 * (virial + virial.transpose(1, 2))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
