"""A tiny analytic two-head potential for tests and examples (not a physical model).

Energy head: pair repulsion ``phi(r) = eps * exp(-r / sigma) * fc(r)`` with a cosine
cutoff ``fc``; conservative forces come from autograd like for any other model.
Direct head: the same pair forces, but each one scaled by ``1 + asymmetry * A[Z_i, Z_j]``
with ``A`` antisymmetric in the species. That keeps the direct force
rotation-equivariant (a sum of scaled bond vectors) while breaking Newton's third law
and the curl-free property: exactly the kind of error a direct-force ML head makes.
"""

from __future__ import annotations

import math

import torch

from ipi_ncforces.models.base import DIRECT_HEAD, ENERGY_HEAD, Batch, PotentialModel
from ipi_ncforces.models.neighbors import build_edges


class PairToyModel(PotentialModel):
    """Analytic pair model with energy and direct heads.

    eps_ev: pair energy scale (eV). sigma_ang: decay length (A). cutoff: (A).
    asymmetry: strength of the non-conservative part of the direct head (dimensionless).
    """

    model_type = "pair_toy"

    def __init__(self, species: tuple[int, ...] = (1, 8), cutoff: float = 4.0, eps_ev: float = 0.05,
                 sigma_ang: float = 0.8, asymmetry: float = 0.1, heads: tuple[str, ...] = (ENERGY_HEAD, DIRECT_HEAD)):
        super().__init__(species=species, cutoff=cutoff)
        self.heads = tuple(heads)
        self.eps_ev = float(eps_ev)
        self.sigma_ang = float(sigma_ang)
        self.asymmetry = float(asymmetry)
        # antisymmetric species matrix over the index of each species in self.species
        n = len(self.species)
        sign = torch.zeros(n, n, dtype=torch.float64)
        for a in range(n):
            for b in range(a + 1, n):
                sign[a, b], sign[b, a] = 1.0, -1.0
        self.register_buffer("species_sign", sign)
        lookup = torch.full((max(self.species) + 1,), -1, dtype=torch.long)
        lookup[list(self.species)] = torch.arange(n)
        self.register_buffer("species_index", lookup)

    def config(self) -> dict:
        return {"species": list(self.species), "cutoff": self.cutoff, "eps_ev": self.eps_ev,
                "sigma_ang": self.sigma_ang, "asymmetry": self.asymmetry, "heads": list(self.heads)}

    def _phi_and_derivative(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """phi(r) in eV and dphi/dr in eV/A."""
        x = math.pi * r / self.cutoff
        fc = 0.5 * (torch.cos(x) + 1.0)
        dfc = -0.5 * math.pi / self.cutoff * torch.sin(x)
        decay = self.eps_ev * torch.exp(-r / self.sigma_ang)
        return decay * fc, decay * (dfc - fc / self.sigma_ang)

    def forward(self, batch: Batch, heads: tuple[str, ...]) -> dict[str, torch.Tensor]:
        self.check_species(batch.species)
        edges = build_edges(batch, self.cutoff)
        vectors = edges.vectors(batch)
        r = vectors.norm(dim=1)
        phi, dphi = self._phi_and_derivative(r)
        out: dict[str, torch.Tensor] = {}
        if ENERGY_HEAD in heads:
            energy = torch.zeros(batch.n_structures, dtype=r.dtype, device=r.device)
            # full neighbour list counts each pair twice
            out["energy"] = energy.index_add(0, edges.structure, 0.5 * phi)
        if DIRECT_HEAD in heads:
            z = batch.species.repeat(batch.n_structures)
            si = self.species_index[z[edges.centers]]
            sj = self.species_index[z[edges.neighbors]]
            scale = 1.0 + self.asymmetry * self.species_sign.to(r.dtype)[si, sj]
            # F_i = sum_j phi'(r_ij) * r_hat_ij with r_ij = x_j - x_i (repulsion pushes i away)
            pair_force = (scale * dphi / r).unsqueeze(1) * vectors
            flat = torch.zeros(batch.n_structures * batch.n_atoms, 3, dtype=r.dtype, device=r.device)
            out["direct_forces"] = flat.index_add(0, edges.centers, pair_force).reshape(batch.positions.shape)
        return out
