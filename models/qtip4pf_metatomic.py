"""q-TIP4P/F energy as a TorchScript-compatible metatomic ``ModelInterface``.

Habershon, Markland, Manolopoulos, J. Chem. Phys. 131, 024501 (2009). The same energy as
:class:`ipi_ncforces.models.qtip4pf.QTIP4PF` (its parameters, Ewald splitting, k-vector
set, LJ switch, M site, intramolecular terms and exclusions), rewritten so that
``torch.jit.script`` compiles it: instead of building its molecule neighbour list with
vesin-torch inside ``forward``, it reads the half atom neighbour list that the engine
computes from :meth:`QTIP4PFMetatomic.requested_neighbor_lists` and keeps its O-O pairs
(molecule pairs with their cell shifts).

Why the list cutoff is ``real_cutoff + 2 * max_site_reach_ang``: a charge site (M, H) lies
at most ``reach`` from its oxygen, so every site pair closer than ``real_cutoff`` belongs
to a molecule pair whose oxygens are closer than ``real_cutoff + 2 reach``. QTIP4PF uses
the current largest O-site distance as ``reach``; a fixed cutoff needs a bound, checked at
every call (an O-H bond longer than ``max_site_reach_ang`` raises instead of silently
dropping pairs). Site pairs are then cut exactly at ``real_cutoff`` as in QTIP4PF, so the
energy does not depend on the bound.

Energy only: forces and virial come from autograd in the engine (i-PI's ``metatomic``
PES, metatomic-ase, our :mod:`ipi_ncforces.models.metatomic` backend). Atoms must be
ordered O, H, H molecule by molecule. Fully periodic systems get the Ewald sum; systems
with no periodic direction (all-zero cell) plain Coulomb and untruncated LJ, as in
QTIP4PF; partly periodic systems are refused. Units: eV, Angstrom, elementary charge.
"""

import math
from typing import Dict, List, Optional

import torch
from torch import nn

from ipi_ncforces.models.qtip4pf import (
    ALPHA_R_PER_ANG,
    D_R_EV,
    EPS_OO_EV,
    GAMMA_M,
    K_THETA_EV_PER_RAD2,
    Q_H_E,
    Q_M_E,
    R_EQ_ANG,
    SIGMA_OO_ANG,
    THETA_EQ_DEG,
    QTIP4PF,
)
from ipi_ncforces.models.units import COULOMB_EV_ANG

try:  # metatensor/metatomic classes are needed to script and save
    from metatensor.torch import Labels, TensorBlock, TensorMap
    from metatomic.torch import ModelOutput, NeighborListOptions, System
except ImportError:  # pragma: no cover - metatomic-torch is a dependency
    Labels = TensorBlock = TensorMap = ModelOutput = NeighborListOptions = System = None

#: largest O-H / O-M distance (A) the fixed neighbour-list cutoff is built for; q-TIP4P/F
#: bonds (r_eq 0.94 A) stay far below it even in path-integral runs at 300 K.
MAX_SITE_REACH_ANG: float = 1.5


class QTIP4PFMetatomic(nn.Module):
    """metatomic ``ModelInterface`` computing the q-TIP4P/F energy (eV) of each system.

    Built from a :class:`QTIP4PF` (its cutoffs and Ewald settings), holds no trained state.
    forward(systems, outputs, selected_atoms) -> {"energy": per-system TensorMap}.
    """

    def __init__(self, model: QTIP4PF, max_site_reach_ang: float = MAX_SITE_REACH_ANG):
        super().__init__()
        self.real_cutoff: float = float(model.real_cutoff)
        self.ewald_alpha: float = float(model.ewald_alpha)
        self.kspace_cutoff: float = float(model.kspace_cutoff)
        self.lj_cutoff: float = float(model.lj_cutoff)
        self.lj_switch_width: float = float(model.lj_switch_width)
        self.max_site_reach_ang: float = float(max_site_reach_ang)
        self.list_cutoff: float = max(self.lj_cutoff, self.real_cutoff + 2.0 * self.max_site_reach_ang)
        # module attributes, not globals: TorchScript cannot read module-level floats
        self.d_r_ev: float = D_R_EV
        self.alpha_r_per_ang: float = ALPHA_R_PER_ANG
        self.r_eq_ang: float = R_EQ_ANG
        self.k_theta_ev_per_rad2: float = K_THETA_EV_PER_RAD2
        self.theta_eq_rad: float = math.radians(THETA_EQ_DEG)
        self.eps_oo_ev: float = EPS_OO_EV
        self.sigma_oo_ang: float = SIGMA_OO_ANG
        self.gamma_m: float = GAMMA_M
        self.coulomb_ev_ang: float = COULOMB_EV_ANG
        self.register_buffer("site_charges", torch.tensor([Q_M_E, Q_H_E, Q_H_E], dtype=torch.float64))
        self.register_buffer("water_types", torch.tensor([8, 1, 1], dtype=torch.int32))
        self.neighbors_options = NeighborListOptions(cutoff=self.list_cutoff, full_list=False, strict=False)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [self.neighbors_options]

    def forward(
        self,
        systems: List[System],
        outputs: Dict[str, ModelOutput],
        selected_atoms: Optional[Labels] = None,
    ) -> Dict[str, TensorMap]:
        if len(systems) == 0:
            raise ValueError("q-TIP4P/F: no systems given")
        device = systems[0].positions.device
        dtype = systems[0].positions.dtype
        result: Dict[str, TensorMap] = {}
        if "energy" not in outputs:
            return result
        if outputs["energy"].sample_kind != "system":
            raise ValueError("q-TIP4P/F export computes whole-system energies only (ask for sample_kind='system')")
        if selected_atoms is not None:
            raise ValueError("q-TIP4P/F export computes whole-system energies only (selected_atoms not supported)")
        energies: List[torch.Tensor] = []
        for system in systems:
            self._check_water_order(system.types)
            n_periodic = int(system.pbc.to(torch.int32).sum())
            if n_periodic == 3:
                energies.append(self._periodic_energy(system))
            elif n_periodic == 0:
                energies.append(self._cluster_energy(system.positions))
            else:
                raise ValueError("q-TIP4P/F needs a fully periodic system or a cluster (no periodic direction)")
        values = torch.stack(energies).reshape(-1, 1)
        block = TensorBlock(
            values=values,
            samples=Labels("system", torch.arange(len(systems), dtype=torch.int32, device=device).reshape(-1, 1)),
            components=[],
            properties=Labels("energy", torch.zeros((1, 1), dtype=torch.int32, device=device)),
        )
        key = Labels("_", torch.zeros((1, 1), dtype=torch.int32, device=device))
        result["energy"] = TensorMap(key, [block])
        return result

    # ------------------------------------------------------------------ checks
    def _check_water_order(self, types: torch.Tensor) -> None:
        n_atoms = types.shape[0]
        if n_atoms == 0 or n_atoms % 3 != 0:
            raise ValueError("q-TIP4P/F needs whole water molecules ordered O H H (atom count not a multiple of 3)")
        expected = self.water_types.to(device=types.device).repeat(n_atoms // 3)
        if bool((types.to(torch.int32) != expected).any()):
            raise ValueError("q-TIP4P/F needs atoms ordered O H H per molecule (reorder the structure)")

    # ------------------------------------------------------------------ shared terms
    def _intra(self, d1: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        """() eV: quartic O-H bonds + harmonic angle, summed over molecules (d: (M, 3) A)."""
        x1 = self.alpha_r_per_ang * (torch.linalg.vector_norm(d1, dim=-1) - self.r_eq_ang)
        x2 = self.alpha_r_per_ang * (torch.linalg.vector_norm(d2, dim=-1) - self.r_eq_ang)
        bonds = self.d_r_ev * x1 * x1 * (1.0 - x1 + (7.0 / 12.0) * x1 * x1) + self.d_r_ev * x2 * x2 * (
            1.0 - x2 + (7.0 / 12.0) * x2 * x2
        )
        theta = torch.atan2(torch.linalg.vector_norm(torch.linalg.cross(d1, d2), dim=-1), (d1 * d2).sum(-1))
        angle = 0.5 * self.k_theta_ev_per_rad2 * (theta - self.theta_eq_rad) ** 2
        return (bonds + angle).sum()

    def _lj(self, r: torch.Tensor) -> torch.Tensor:
        s6 = (self.sigma_oo_ang / r) ** 6
        return 4.0 * self.eps_oo_ev * (s6 * s6 - s6)

    def _switch(self, r: torch.Tensor) -> torch.Tensor:
        """QTIP4PF's quintic LJ switch: 1 below lj_cutoff - width, 0 above lj_cutoff."""
        r_on = self.lj_cutoff - self.lj_switch_width
        r_off = self.lj_cutoff
        if r_off <= r_on:
            return (r < r_off).to(r.dtype)
        x = ((r - r_on) / (r_off - r_on)).clamp(0.0, 1.0)
        return 1.0 - x**3 * (10.0 - 15.0 * x + 6.0 * x * x)

    def _site_offsets(self, d1: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        """(M, 3 sites, 3) A: M, H1, H2 relative to their oxygen."""
        m = 0.5 * (1.0 - self.gamma_m) * (d1 + d2)
        return torch.stack([m, d1, d2], dim=1)

    # ------------------------------------------------------------------ periodic
    def _periodic_energy(self, system: System) -> torch.Tensor:
        """() eV: intramolecular + switched O-O LJ + Ewald Coulomb."""
        positions = system.positions
        cell = system.cell
        oxygen = positions[0::3]
        # minimum-image O-H vectors (molecules broken by wrapping are fine), as QTIP4PF
        d1 = positions[1::3] - oxygen
        d2 = positions[2::3] - oxygen
        d1 = d1 - torch.round(torch.linalg.solve(cell.T, d1.T).T).detach() @ cell
        d2 = d2 - torch.round(torch.linalg.solve(cell.T, d2.T).T).detach() @ cell
        rel = self._site_offsets(d1, d2)  # (M, 3, 3)
        reach = float(torch.linalg.vector_norm(rel.detach(), dim=-1).max())
        if reach > self.max_site_reach_ang:
            raise ValueError(
                "q-TIP4P/F export: an O-H distance exceeds the bound the neighbour-list cutoff was built for "
                "(re-export with a larger max_site_reach_ang)"
            )

        # molecule pairs = O-O pairs of the engine's half list, each once (incl. own images)
        pairs = system.get_neighbor_list(self.neighbors_options)
        samples = pairs.samples.values
        first = samples[:, 0].to(torch.long)
        second = samples[:, 1].to(torch.long)
        both_o = (first % 3 == 0) & (second % 3 == 0)
        mol_i = first[both_o] // 3
        mol_j = second[both_o] // 3
        shifts = samples[both_o][:, 2:5].to(positions.dtype)
        r_oo_vec = oxygen[mol_j] - oxygen[mol_i] + shifts @ cell  # (E, 3) A
        r_oo = torch.linalg.vector_norm(r_oo_vec, dim=-1)
        energy = self._intra(d1, d2) + (self._lj(r_oo) * self._switch(r_oo)).sum()

        # Ewald real space: 3 x 3 site pairs per molecule pair, cut at real_cutoff
        site_vec = r_oo_vec.reshape(-1, 1, 1, 3) + rel[mol_j].unsqueeze(1) - rel[mol_i].unsqueeze(2)
        r = torch.linalg.vector_norm(site_vec, dim=-1)  # (E, site i, site j)
        qs = self.site_charges.to(dtype=r.dtype)
        qq = (qs.unsqueeze(1) * qs.unsqueeze(0)).unsqueeze(0)
        within = r < self.real_cutoff
        safe_r = torch.where(within, r, torch.ones_like(r))
        real = torch.where(within, self.coulomb_ev_ang * qq * torch.erfc(self.ewald_alpha * safe_r) / safe_r, 0.0).sum()
        sites = (oxygen.unsqueeze(1) + rel).reshape(-1, 3)
        return energy + real + self._ewald_rest(sites, qs, cell)

    def _ewald_rest(self, sites: torch.Tensor, qs: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """() eV: reciprocal sum, self term, intramolecular exclusion (sites (3M, 3) A)."""
        alpha = self.ewald_alpha
        k_e = self.coulomb_ev_ang
        n_mol = sites.shape[0] // 3
        q = qs.repeat(n_mol)
        per_mol = sites.reshape(n_mol, 3, 3)
        exclusion = torch.zeros((), dtype=sites.dtype, device=sites.device)
        for a, b in [(0, 1), (0, 2), (1, 2)]:
            rab = torch.linalg.vector_norm(per_mol[:, a] - per_mol[:, b], dim=-1)
            exclusion = exclusion + (k_e * qs[a] * qs[b] * torch.erf(alpha * rab) / rab).sum()
        self_term = -k_e * alpha / math.sqrt(math.pi) * (q * q).sum()

        kvec = self._kvectors(cell)  # (K, 3) 1/A, half space, |k| < kspace_cutoff
        volume = torch.abs(torch.linalg.det(cell))
        k2 = (kvec * kvec).sum(-1)
        kr = kvec @ sites.T  # (K, 3M)
        s_re = torch.cos(kr) @ q
        s_im = torch.sin(kr) @ q
        # 4 pi / V (not 2 pi / V) because only half of the k-vectors are summed
        green = torch.exp(-k2 / (4.0 * alpha * alpha)) / k2
        recip = 4.0 * math.pi * k_e / volume * (green * (s_re * s_re + s_im * s_im)).sum()
        return recip - exclusion + self_term

    def _kvectors(self, cell: torch.Tensor) -> torch.Tensor:
        """Half-space k = 2 pi n B^T (B = inverse cell) with |k| < kspace_cutoff; the integer
        set from the detached cell, the vectors differentiable w.r.t. the cell (virial)."""
        recip = 2.0 * math.pi * torch.linalg.inv(cell).T  # rows = reciprocal vectors
        lengths = torch.linalg.vector_norm(cell.detach(), dim=1)
        n_max = torch.floor(self.kspace_cutoff * lengths / (2.0 * math.pi)).to(torch.long)
        axes: List[torch.Tensor] = []
        for i in range(3):
            m = int(n_max[i])
            axes.append(torch.arange(-m, m + 1, device=cell.device, dtype=cell.dtype))
        grid = torch.cartesian_prod(axes)
        nx = grid[:, 0]
        ny = grid[:, 1]
        nz = grid[:, 2]
        half = (nx > 0) | ((nx == 0) & (ny > 0)) | ((nx == 0) & (ny == 0) & (nz > 0))
        kvec = grid[half] @ recip
        inside = (kvec.detach() ** 2).sum(-1) < self.kspace_cutoff**2
        return kvec[inside]

    # ------------------------------------------------------------------ clusters
    def _cluster_energy(self, positions: torch.Tensor) -> torch.Tensor:
        """() eV: intramolecular + plain Coulomb + untruncated O-O LJ over molecule pairs."""
        oxygen = positions[0::3]
        d1 = positions[1::3] - oxygen
        d2 = positions[2::3] - oxygen
        n_mol = oxygen.shape[0]
        sites = (oxygen.unsqueeze(1) + self._site_offsets(d1, d2)).reshape(-1, 3)
        q = self.site_charges.to(dtype=positions.dtype).repeat(n_mol)
        mol = torch.arange(n_mol, device=positions.device).repeat_interleave(3)
        pair = mol.unsqueeze(0) < mol.unsqueeze(1)
        diff = sites.unsqueeze(0) - sites.unsqueeze(1)
        r = torch.where(pair, (diff * diff).sum(-1), torch.ones_like(diff[:, :, 0])).sqrt()
        coulomb = torch.where(pair, self.coulomb_ev_ang * (q.unsqueeze(0) * q.unsqueeze(1)) / r, 0.0).sum()
        mol_pair = torch.ones(n_mol, n_mol, dtype=torch.bool, device=positions.device).triu(1)
        doo = oxygen.unsqueeze(0) - oxygen.unsqueeze(1)
        r_oo = torch.where(mol_pair, (doo * doo).sum(-1), torch.ones_like(doo[:, :, 0])).sqrt()
        lj = torch.where(mol_pair, self._lj(r_oo), 0.0).sum()
        return self._intra(d1, d2) + coulomb + lj
