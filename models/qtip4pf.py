"""q-TIP4P/F flexible water in torch: the reference ("ground truth") potential.

Habershon, Markland, Manolopoulos, J. Chem. Phys. 131, 024501 (2009), Table I:

* intramolecular O-H bond, quartic expansion of a Morse potential
  ``V_r = D_r [a^2 dr^2 - a^3 dr^3 + 7/12 a^4 dr^4]``, ``dr = r_OH - r_eq``;
* harmonic H-O-H angle ``V_theta = 1/2 k_theta (theta - theta_eq)^2``;
* intermolecular O-O Lennard-Jones ``4 eps [(sigma/r)^12 - (sigma/r)^6]``;
* intermolecular Coulomb between charges ``q_H`` on each H and ``q_M = -2 q_H`` on the
  massless M site ``r_M = gamma r_O + (1 - gamma)/2 (r_H1 + r_H2)`` (forces on M are
  carried to O, H, H by autograd through that linear map).

All intramolecular non-bonded interactions are excluded (the monomer energy is only
``V_r + V_r + V_theta``, zero at r_eq/theta_eq).

Implementation choices (documented because they change the numbers slightly):

* Under periodic boundary conditions the Coulomb energy is an Ewald sum: real-space
  ``erfc(alpha r)/r`` over charge-site pairs closer than ``real_cutoff`` (found through a
  molecule (oxygen) neighbour list from :func:`ipi_ncforces.models.neighbors.build_edges` that reaches
  far enough to hold every such site pair), reciprocal sum over all k-vectors with
  ``|k| < kspace_cutoff`` (spherical, so accuracy does not depend on the cell shape), the
  self term, and the intramolecular exclusion ``-q_i q_j erf(alpha r)/r``. Molecules are
  neutral, so no background term. The defaults converge the energy of a 64-molecule box to
  better than 1e-6 eV (see tests/test_qtip4pf.py).
* The O-O Lennard-Jones is multiplied by a C2-smooth quintic switch that goes from 1 at
  ``lj_cutoff - lj_switch_width`` to 0 at ``lj_cutoff`` (energy and forces continuous,
  which NVE needs); no analytic tail correction (it is a constant at fixed volume).
* A cluster (all-zero cell) uses plain Coulomb and untruncated LJ over all
  intermolecular pairs.

Atoms must be ordered O, H, H molecule by molecule (as in i-PI's water examples).
Intramolecular O-H vectors use the minimum image, so molecules broken by wrapping are
fine. Units: eV, Angstrom, elementary charge. No numpy inside ``forward``: runs in
float32/float64 on CPU or CUDA.
"""

from __future__ import annotations

import math

import torch

from ipi_ncforces.models.base import ENERGY_HEAD, Batch, PotentialModel
from ipi_ncforces.models.neighbors import build_edges
from ipi_ncforces.models.units import COULOMB_EV_ANG, EV_PER_KCAL_PER_MOL

# --- published q-TIP4P/F parameters (Habershon et al. 2009, Table I), converted to eV ---
D_R_EV: float = 116.09 * EV_PER_KCAL_PER_MOL  # D_r = 116.09 kcal/mol
ALPHA_R_PER_ANG: float = 2.287  # alpha_r = 2.287 1/Angstrom
R_EQ_ANG: float = 0.9419  # r_eq = 0.9419 Angstrom
K_THETA_EV_PER_RAD2: float = 87.85 * EV_PER_KCAL_PER_MOL  # k_theta = 87.85 kcal/mol/rad^2
THETA_EQ_DEG: float = 107.4  # theta_eq = 107.4 degrees
EPS_OO_EV: float = 0.1852 * EV_PER_KCAL_PER_MOL  # eps_OO = 0.1852 kcal/mol
SIGMA_OO_ANG: float = 3.1589  # sigma_OO = 3.1589 Angstrom
Q_H_E: float = 0.5564  # q_H = +0.5564 e
Q_M_E: float = -2.0 * Q_H_E  # q_M = -1.1128 e
GAMMA_M: float = 0.73612  # M-site weight of O (dimensionless)

WATER_Z = (8, 1, 1)


def check_water_order(species: torch.Tensor) -> int:
    """Number of molecules; ValueError unless atoms are O, H, H per molecule."""
    n_atoms = int(species.shape[0])
    if n_atoms == 0 or n_atoms % 3 != 0:
        raise ValueError(f"q-TIP4P/F needs whole water molecules ordered O H H; got {n_atoms} atoms "
                         "(not a multiple of 3)")
    expected = torch.tensor(WATER_Z, dtype=species.dtype, device=species.device).repeat(n_atoms // 3)
    wrong = (species != expected).nonzero()
    if wrong.numel():
        k = int(wrong[0, 0])
        raise ValueError(f"q-TIP4P/F needs atoms ordered O H H per molecule; atom {k} has Z={int(species[k])}, "
                         f"expected Z={WATER_Z[k % 3]} (reorder the structure file)")
    return n_atoms // 3


def _upper_half(n: torch.Tensor) -> torch.Tensor:
    """(K,) bool: integer vectors n (K, 3) with n > 0 in lexicographic order, i.e. one of +n / -n."""
    nx, ny, nz = n[:, 0], n[:, 1], n[:, 2]
    return (nx > 0) | ((nx == 0) & (ny > 0)) | ((nx == 0) & (ny == 0) & (nz > 0))


def _smooth_switch(r: torch.Tensor, r_on: float, r_off: float) -> torch.Tensor:
    """1 below r_on, 0 above r_off, quintic smoothstep between (C2 continuous)."""
    if r_off <= r_on:
        return (r < r_off).to(r.dtype)
    x = ((r - r_on) / (r_off - r_on)).clamp(0.0, 1.0)
    return 1.0 - x**3 * (10.0 - 15.0 * x + 6.0 * x * x)


class QTIP4PF(PotentialModel):
    """q-TIP4P/F water; energy head only (forces/virial by autograd in ipi_ncforces.models.base.evaluate).

    real_cutoff: Ewald real-space cutoff (A). ewald_alpha: Ewald splitting (1/A).
    kspace_cutoff: reciprocal-space cutoff |k| (1/A, k includes the 2 pi).
    lj_cutoff: O-O Lennard-Jones cutoff (A). lj_switch_width: width of the switch (A)
    that brings LJ smoothly to zero at lj_cutoff (0 = plain truncation).
    """

    model_type = "qtip4pf"

    def __init__(self, species: tuple[int, ...] = (1, 8), real_cutoff: float = 9.5, ewald_alpha: float = 0.44,
                 kspace_cutoff: float = 3.9, lj_cutoff: float = 9.0, lj_switch_width: float = 1.0):
        super().__init__(species=species, cutoff=max(real_cutoff, lj_cutoff))
        self.heads = (ENERGY_HEAD,)
        self.real_cutoff = float(real_cutoff)
        self.ewald_alpha = float(ewald_alpha)
        self.kspace_cutoff = float(kspace_cutoff)
        self.lj_cutoff = float(lj_cutoff)
        self.lj_switch_width = float(lj_switch_width)
        # a buffer so that .to(device, dtype) and ForceEvaluator see where the model lives
        self.register_buffer("site_charges", torch.tensor([Q_M_E, Q_H_E, Q_H_E], dtype=torch.float64), persistent=False)

    def config(self) -> dict:
        return {"species": list(self.species), "real_cutoff": self.real_cutoff, "ewald_alpha": self.ewald_alpha,
                "kspace_cutoff": self.kspace_cutoff, "lj_cutoff": self.lj_cutoff,
                "lj_switch_width": self.lj_switch_width}

    # ------------------------------------------------------------------ geometry
    @staticmethod
    def _min_image(d: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """Minimum-image (B, M, 3) vectors for periodic cells (rows = lattice vectors).

        In torch, not ase.geometry.find_mic: the energy is differentiated through these
        vectors (forces, virial), on the model's device. Nearest image by rounding the
        fractional coordinates: exact for the O-H bonds it serves (far shorter than half
        any cell width)."""
        frac = torch.linalg.solve(cells.transpose(1, 2), d.transpose(1, 2)).transpose(1, 2)
        return d - torch.bmm(torch.round(frac).detach(), cells)

    def forward(self, batch: Batch, heads: tuple[str, ...] = (ENERGY_HEAD,)) -> dict[str, torch.Tensor]:
        self.check_species(batch.species)
        n_mol = check_water_order(batch.species)
        n_struct = batch.n_structures
        pos = batch.positions.reshape(n_struct, n_mol, 3, 3)
        oxygen = pos[:, :, 0]
        d1 = pos[:, :, 1] - oxygen
        d2 = pos[:, :, 2] - oxygen
        periodic = batch.periodic()
        energy = torch.zeros(n_struct, dtype=pos.dtype, device=pos.device)
        p_idx = periodic.nonzero().flatten()
        c_idx = (~periodic).nonzero().flatten()
        if len(p_idx):
            cells = batch.cells[p_idx]
            d1p = self._min_image(d1[p_idx], cells)
            d2p = self._min_image(d2[p_idx], cells)
            e = self._intra(d1p, d2p) + self._periodic_inter(oxygen[p_idx], d1p, d2p, cells)
            energy = energy.index_add(0, p_idx, e)
        if len(c_idx):
            e = self._intra(d1[c_idx], d2[c_idx]) + self._cluster_inter(oxygen[c_idx], d1[c_idx], d2[c_idx])
            energy = energy.index_add(0, c_idx, e)
        return {"energy": energy}

    # ------------------------------------------------------------------ intramolecular
    @staticmethod
    def _intra(d1: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        """(B,) eV: quartic bonds + harmonic angle, summed over molecules."""
        a = ALPHA_R_PER_ANG

        def bond(d: torch.Tensor) -> torch.Tensor:
            x = a * (d.norm(dim=-1) - R_EQ_ANG)
            return D_R_EV * x * x * (1.0 - x + (7.0 / 12.0) * x * x)

        # atan2 stays well conditioned near 0 and pi, unlike acos
        theta = torch.atan2(torch.linalg.cross(d1, d2).norm(dim=-1), (d1 * d2).sum(-1))
        angle = 0.5 * K_THETA_EV_PER_RAD2 * (theta - math.radians(THETA_EQ_DEG)) ** 2
        return (bond(d1) + bond(d2) + angle).sum(dim=1)

    def _sites(self, oxygen: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        """(B, 3*M, 3) charge sites ordered M, H1, H2 per molecule (molecules kept whole)."""
        m = oxygen + 0.5 * (1.0 - GAMMA_M) * (d1 + d2)
        return torch.stack([m, oxygen + d1, oxygen + d2], dim=2).reshape(oxygen.shape[0], -1, 3)

    def _charges(self, n_mol: int, like: torch.Tensor) -> torch.Tensor:
        return self.site_charges.to(dtype=like.dtype, device=like.device).repeat(n_mol)

    # ------------------------------------------------------------------ clusters
    def _cluster_inter(self, oxygen: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        """(B,) eV: plain Coulomb + untruncated O-O LJ over intermolecular pairs."""
        n_mol = oxygen.shape[1]
        sites = self._sites(oxygen, d1, d2)
        q = self._charges(n_mol, sites)
        mol = torch.arange(n_mol, device=sites.device).repeat_interleave(3)
        pair = mol.unsqueeze(0) < mol.unsqueeze(1)  # each intermolecular pair once
        r = self._masked_distances(sites, pair)
        coulomb = torch.where(pair, COULOMB_EV_ANG * (q.unsqueeze(0) * q.unsqueeze(1)) / r, 0.0).sum(dim=(1, 2))
        mol_pair = torch.ones(n_mol, n_mol, dtype=torch.bool, device=sites.device).triu(1)
        r_oo = self._masked_distances(oxygen, mol_pair)
        lj = torch.where(mol_pair, self._lj(r_oo), 0.0).sum(dim=(1, 2))
        return coulomb + lj

    @staticmethod
    def _masked_distances(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, n, n) distances; 1 where ``mask`` is False (keeps gradients finite)."""
        diff = x.unsqueeze(1) - x.unsqueeze(2)
        r2 = torch.where(mask, (diff * diff).sum(-1), 1.0)
        return r2.sqrt()

    @staticmethod
    def _lj(r: torch.Tensor) -> torch.Tensor:
        s6 = (SIGMA_OO_ANG / r) ** 6
        return 4.0 * EPS_OO_EV * (s6 * s6 - s6)

    # ------------------------------------------------------------------ periodic
    def _periodic_inter(self, oxygen: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor,
                        cells: torch.Tensor) -> torch.Tensor:
        """(B,) eV: switched O-O LJ + Ewald Coulomb.

        One neighbour list over molecules (their oxygens) serves both: it reaches far
        enough (real_cutoff + twice the largest O-site distance) to contain every
        site-site pair closer than real_cutoff, and the site pairs are then cut exactly at
        real_cutoff. 64 oxygens instead of 192 sites makes the list ~10x cheaper.
        """
        n_struct, n_mol = oxygen.shape[:2]
        sites = self._sites(oxygen, d1, d2).reshape(n_struct, n_mol, 3, 3)  # M, H1, H2
        reach = (sites.detach() - oxygen.detach().unsqueeze(2)).norm(dim=-1).max()
        list_cutoff = max(self.lj_cutoff, self.real_cutoff + 2.0 * float(reach))
        o_batch = Batch(torch.full((n_mol,), 8, dtype=torch.long, device=oxygen.device), oxygen, cells)
        edges = build_edges(o_batch, list_cutoff)
        # keep each molecule pair once (i < j; for a molecule and its own image, one of +S / -S)
        ci, cj, shifts = edges.centers, edges.neighbors, edges.shifts
        keep = (ci < cj) | ((ci == cj) & _upper_half(shifts))
        ci, cj, shifts, structure = ci[keep], cj[keep], shifts[keep], edges.structure[keep]
        offsets = torch.einsum("ek,ekl->el", shifts, cells[structure])  # (E, 3) A

        # Lennard-Jones between oxygens
        o_flat = oxygen.reshape(-1, 3)
        r_oo = (o_flat[cj] + offsets - o_flat[ci]).norm(dim=-1)
        lj = self._lj(r_oo) * _smooth_switch(r_oo, self.lj_cutoff - self.lj_switch_width, self.lj_cutoff)
        energy = torch.zeros(n_struct, dtype=oxygen.dtype, device=oxygen.device).index_add(0, structure, lj)

        # Ewald real space: 3 x 3 site pairs per molecule pair, cut at real_cutoff.
        # Edges on the LAST axis: broadcasts and reductions then run over contiguous memory.
        alpha = self.ewald_alpha
        s_flat = sites.reshape(-1, 3, 3).permute(2, 1, 0)  # (xyz, site, molecules)
        s_j = s_flat.index_select(2, cj) + offsets.T.unsqueeze(1)  # (xyz, site j, E)
        s_i = s_flat.index_select(2, ci)
        r2 = torch.zeros((), dtype=sites.dtype, device=sites.device)
        for xj, xi in zip(s_j.unbind(0), s_i.unbind(0)):  # unbind: cheap backward (no zero-filled copies)
            dc = xj.unsqueeze(0) - xi.unsqueeze(1)  # (site i, site j, E)
            r2 = r2 + dc * dc
        r = r2.sqrt()
        qs = self.site_charges.to(dtype=r.dtype, device=r.device)
        qq = (qs.unsqueeze(1) * qs.unsqueeze(0)).unsqueeze(2)
        within = r < self.real_cutoff
        real = torch.where(within, COULOMB_EV_ANG * qq * torch.erfc(alpha * r) / r, 0.0).sum(dim=(0, 1))
        energy = energy.index_add(0, structure, real)
        q = qs.repeat(n_mol)
        return energy + self._ewald_rest(sites.reshape(n_struct, -1, 3), q, cells)

    def _ewald_rest(self, sites: torch.Tensor, q: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """(B,) eV: Ewald reciprocal sum, self term and intramolecular exclusion.

        sites: (B, 3*M, 3) A ordered M, H1, H2 per molecule; q: (3*M,) e."""
        n_struct = sites.shape[0]
        alpha = self.ewald_alpha
        k_e = COULOMB_EV_ANG
        # intramolecular exclusion (pairs M-H1, M-H2, H1-H2) and self term
        per_mol = sites.reshape(n_struct, -1, 3, 3)
        qm = q[:3]
        exclusion = torch.zeros(n_struct, dtype=sites.dtype, device=sites.device)
        for a, b in ((0, 1), (0, 2), (1, 2)):
            rab = (per_mol[:, :, a] - per_mol[:, :, b]).norm(dim=-1)
            exclusion = exclusion + (k_e * qm[a] * qm[b] * torch.erf(alpha * rab) / rab).sum(dim=1)
        self_term = -k_e * alpha / math.sqrt(math.pi) * (q * q).sum()

        # reciprocal space over half of the k-vectors |k| < kspace_cutoff
        kvec, weight = self._kvectors(cells)  # (B, K, 3) 1/A, (B, K) 0/1
        volume = torch.linalg.det(cells).abs()
        k2 = (kvec * kvec).sum(-1)
        kr = torch.einsum("bkd,bnd->bkn", kvec, sites)
        s_re = torch.matmul(torch.cos(kr), q)  # (B, K); matmul beats multiply + sum here
        s_im = torch.matmul(torch.sin(kr), q)
        # 4 pi / V (not 2 pi / V) because only half of the k-vectors are summed
        green = weight * torch.exp(-k2 / (4.0 * alpha * alpha)) / k2
        recip = 4.0 * math.pi * k_e / volume * (green * (s_re * s_re + s_im * s_im)).sum(-1)
        return recip - exclusion + self_term

    def _kvectors(self, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Half-space k = 2 pi n B^T (B = inverse cell), with |k| < kspace_cutoff.

        The integer set comes from the detached cell (no gradient through the choice);
        the vectors themselves stay differentiable w.r.t. the cell (virial)."""
        recip = 2.0 * math.pi * torch.linalg.inv(cells).transpose(1, 2)  # rows = reciprocal vectors
        lengths = cells.detach().norm(dim=2).amax(dim=0)  # |a_i| over the batch
        # |n_i| = |k . a_i| / 2 pi <= k_cut |a_i| / 2 pi
        n_max = [int(v) for v in torch.floor(self.kspace_cutoff * lengths / (2.0 * math.pi)).tolist()]
        axes = [torch.arange(-m, m + 1, device=cells.device, dtype=cells.dtype) for m in n_max]
        grid = torch.cartesian_prod(*axes)
        grid = grid[_upper_half(grid)]
        kvec = torch.einsum("kd,bde->bke", grid, recip)
        weight = ((kvec.detach() ** 2).sum(-1) < self.kspace_cutoff**2).to(cells.dtype)
        # drop k-vectors outside the sphere for every structure (identical cells: the usual case)
        used = weight.amax(dim=0) > 0
        return kvec[:, used], weight[:, used]
