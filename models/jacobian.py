"""How non-conservative is a force field? Jacobian asymmetry and closed-path work.

For any :class:`ipi_ncforces.models.base.PotentialModel` and force head ("conservative": F = -dE/dr,
"direct": the predicted force vector):

* :func:`force_jacobian` - ``J[i a, j b] = dF_{i a} / dr_{j b}`` (eV/A^2) by autograd,
  shape (3N, 3N) for one structure. For conservative forces ``J = -Hessian`` is symmetric.
* :func:`asymmetry_lambda` - ``lambda = ||J_anti||_F / ||J||_F`` with
  ``J_anti = (J - J^T) / 2`` (Bigi et al. 2025, Eq. 7): 0 for a conservative field,
  1 for a purely rotational one.
* :func:`pair_asymmetry` - the same ratio for the 3x3 blocks of each atom pair, with the
  pair's minimum-image distance (A), to plot lambda_ij against distance.
* :func:`rotation_path`, :func:`deformation_loop_path`, :func:`closed_path_work_ev` - the
  work ``W = oint F . dr`` (eV) of the force around a closed path in configuration space
  (rotating one molecule by 2 pi, or a loop in the space of two displacements). A
  conservative force does zero work around any closed path.

Pure functions: they return tensors / floats with units in their names; the
``ipi-nc analyze jacobian`` command is built on them elsewhere. Use a float64 model for
meaningful small numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ipi_ncforces.models.base import DIRECT_HEAD, ENERGY_HEAD, Batch, PotentialModel, evaluate
from ipi_ncforces.models.modes import CONSERVATIVE, HEADS_FOR_MODE, SINGLE_FORCE_MODES


def _check_head(model: PotentialModel, head: str) -> None:
    if head not in SINGLE_FORCE_MODES:
        raise ValueError(f"force head must be one of {SINGLE_FORCE_MODES}, not '{head}'")
    for needed in HEADS_FOR_MODE[head]:
        model.require_head(needed)


def _forces_with_graph(model: PotentialModel, batch: Batch, positions: torch.Tensor, head: str) -> torch.Tensor:
    """(N, 3) eV/A forces of structure 0 as a differentiable function of ``positions`` (N, 3)."""
    structure = Batch(batch.species, positions.unsqueeze(0), batch.cells[:1])
    with torch.enable_grad():
        if head == CONSERVATIVE:
            energy = model(structure, (ENERGY_HEAD,))["energy"].sum()
            (grad,) = torch.autograd.grad(energy, positions, create_graph=True)
            return -grad
        return model(structure, (DIRECT_HEAD,))["direct_forces"][0]


def force_jacobian(model: PotentialModel, batch: Batch, head: str = CONSERVATIVE, chunk: int = 64) -> torch.Tensor:
    """J = dF/dr (eV/A^2) of the first structure of ``batch``, shape (3N, 3N).

    Row ``3 i + a`` is the derivative of F_{i a}; column ``3 j + b`` is r_{j b}.
    ``chunk`` rows are back-propagated at once (vectorised over grad outputs).
    """
    _check_head(model, head)
    positions = batch.positions[0].detach().clone().requires_grad_(True)
    forces = _forces_with_graph(model, batch, positions, head).reshape(-1)
    n = forces.numel()
    rows = []
    eye = torch.eye(n, dtype=forces.dtype, device=forces.device)
    for start in range(0, n, chunk):
        seeds = eye[start : start + chunk]
        try:
            (block,) = torch.autograd.grad(forces, positions, seeds, retain_graph=True, is_grads_batched=True)
            rows.append(block.reshape(len(seeds), n))
        except RuntimeError:  # some ops lack a batching rule: fall back to one row at a time
            for seed in seeds:
                (row,) = torch.autograd.grad(forces, positions, seed, retain_graph=True)
                rows.append(row.reshape(1, n))
    return torch.cat(rows).detach()


def asymmetry_lambda(jacobian: torch.Tensor) -> float:
    """lambda = ||(J - J^T)/2||_F / ||J||_F (dimensionless, Eq. 7 of Bigi et al. 2025)."""
    anti = 0.5 * (jacobian - jacobian.T)
    return float(torch.linalg.norm(anti) / torch.linalg.norm(jacobian))


@dataclass
class PairAsymmetry:
    """Per atom pair i < j: minimum-image distance (A), lambda_ij (dimensionless), and
    the Frobenius norm of the pair's Jacobian blocks sqrt(|J_ij|^2 + |J_ji|^2) (eV/A^2)."""

    i: torch.Tensor
    j: torch.Tensor
    distance_ang: torch.Tensor
    lambda_ij: torch.Tensor
    block_norm_ev_per_ang2: torch.Tensor


def pair_asymmetry(jacobian: torch.Tensor, batch: Batch, min_block_norm_ev_per_ang2: float = 0.0) -> PairAsymmetry:
    """lambda_ij = ||A_ij||_F sqrt(2) / sqrt(||J_ij||^2 + ||J_ji||^2), A_ij = (J_ij - J_ji^T)/2.

    That is Eq. 7 restricted to the (i, j) + (j, i) blocks of J. Pairs whose block norm
    is not above ``min_block_norm_ev_per_ang2`` (e.g. beyond the model's reach) are
    dropped, since their ratio is 0/0.
    """
    n = jacobian.shape[0] // 3
    blocks = jacobian.reshape(n, 3, n, 3).permute(0, 2, 1, 3)  # [i, j] = dF_i / dr_j (3x3)
    i, j = torch.triu_indices(n, n, offset=1, device=jacobian.device)
    j_ij, j_ji = blocks[i, j], blocks[j, i]
    anti = 0.5 * (j_ij - j_ji.transpose(1, 2))
    norm = torch.sqrt(j_ij.pow(2).sum(dim=(1, 2)) + j_ji.pow(2).sum(dim=(1, 2)))
    keep = norm > min_block_norm_ev_per_ang2
    i, j, anti, norm = i[keep], j[keep], anti[keep], norm[keep]
    lam = math.sqrt(2.0) * anti.pow(2).sum(dim=(1, 2)).sqrt() / norm
    return PairAsymmetry(i=i, j=j, distance_ang=minimum_image_distances(batch, i, j), lambda_ij=lam, block_norm_ev_per_ang2=norm)


def minimum_image_distances(batch: Batch, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """(P,) A distances between atoms i and j of structure 0 (minimum image if periodic)."""
    from ase.geometry import find_mic

    positions = batch.positions[0].detach()
    d = (positions[j] - positions[i]).to("cpu", torch.float64).numpy()
    if bool(batch.periodic()[0]):
        d, _ = find_mic(d, batch.cells[0].detach().to("cpu", torch.float64).numpy(), pbc=True)
    return torch.from_numpy(d).norm(dim=1).to(positions)


def bin_pair_asymmetry(pairs: PairAsymmetry, bin_width_ang: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean lambda_ij per distance bin: (bin centres A, mean lambda, pair count)."""
    index = torch.floor(pairs.distance_ang / bin_width_ang).long()
    n_bins = int(index.max()) + 1 if index.numel() else 0
    counts = torch.zeros(n_bins, dtype=torch.long).index_add(0, index.cpu(), torch.ones_like(index.cpu()))
    sums = torch.zeros(n_bins, dtype=pairs.lambda_ij.dtype).index_add(0, index.cpu(), pairs.lambda_ij.cpu())
    occupied = counts > 0
    centres = (torch.arange(n_bins, dtype=sums.dtype) + 0.5) * bin_width_ang
    return centres[occupied], sums[occupied] / counts[occupied], counts[occupied]


@dataclass
class ClosedPath:
    """Points on a closed path r(t), t in [0, 2 pi): positions (n, N, 3) A and the
    tangents dr/dt (n, N, 3) A/rad, at n equally spaced t."""

    positions: torch.Tensor
    tangents: torch.Tensor


def _rotation_matrix(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """(n, 3, 3) rotation matrices about the unit ``axis`` by ``angle`` (n,) rad (Rodrigues)."""
    k = torch.zeros(3, 3, dtype=axis.dtype, device=axis.device)
    k[0, 1], k[0, 2], k[1, 2] = -axis[2], axis[1], -axis[0]
    k = k - k.T
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device)
    s, c = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    return eye + s * k + (1 - c) * (k @ k)


def rotation_path(positions: torch.Tensor, atoms: list[int], axis: tuple[float, float, float] = (0.0, 0.0, 1.0), n_points: int = 64) -> ClosedPath:
    """Rotate ``atoms`` (e.g. one molecule) rigidly by 2 pi about ``axis`` through their
    centroid; all other atoms stay fixed. positions: (N, 3) A."""
    positions = positions.detach()
    axis_t = torch.as_tensor(axis, dtype=positions.dtype, device=positions.device)
    axis_t = axis_t / axis_t.norm()
    t = torch.arange(n_points, dtype=positions.dtype, device=positions.device) * (2 * math.pi / n_points)
    idx = torch.as_tensor(atoms, dtype=torch.long, device=positions.device)
    centre = positions[idx].mean(dim=0)
    rel = positions[idx] - centre
    rot = _rotation_matrix(axis_t, t)
    moved = torch.einsum("tab,nb->tna", rot, rel)
    path = positions.unsqueeze(0).repeat(n_points, 1, 1)
    path[:, idx] = centre + moved
    tangents = torch.zeros_like(path)
    tangents[:, idx] = torch.cross(axis_t.expand_as(moved), moved, dim=-1)  # d(R r)/dt = axis x (R r)
    return ClosedPath(positions=path, tangents=tangents)


def deformation_loop_path(
    positions: torch.Tensor, first: torch.Tensor, second: torch.Tensor, amplitude_ang: float = 0.1, n_points: int = 64
) -> ClosedPath:
    """r(t) = r0 + a (cos t - 1) u + a sin t w: a loop through r0 in the plane of two
    displacement patterns u, w (N, 3) (normalised to unit length); a = amplitude (A).

    E.g. u stretches one O-H bond of a water molecule, w the other: the loop encloses
    an area in the (r_OH1, r_OH2) plane, around which a direct force can do work."""
    positions = positions.detach()
    u = first.to(positions) / first.norm()
    w = second.to(positions) / second.norm()
    t = torch.arange(n_points, dtype=positions.dtype, device=positions.device) * (2 * math.pi / n_points)
    c, s = torch.cos(t)[:, None, None], torch.sin(t)[:, None, None]
    path = positions + amplitude_ang * ((c - 1) * u + s * w)
    tangents = amplitude_ang * (-s * u + c * w)
    return ClosedPath(positions=path, tangents=tangents)


def bond_stretch_pattern(positions: torch.Tensor, anchor: int, moving: int) -> torch.Tensor:
    """(N, 3) displacement moving atom ``moving`` away from ``anchor`` along their bond
    (no minimum image: atoms of one molecule are assumed unwrapped)."""
    pattern = torch.zeros_like(positions.detach())
    bond = positions[moving].detach() - positions[anchor].detach()
    pattern[moving] = bond / bond.norm()
    return pattern


def path_forces(model: PotentialModel, batch: Batch, path: ClosedPath, head: str = CONSERVATIVE, chunk: int = 16) -> torch.Tensor:
    """Forces (n, N, 3) eV/A of ``head`` at every path point (species and cell of ``batch``)."""
    _check_head(model, head)
    out = []
    for start in range(0, path.positions.shape[0], chunk):
        pos = path.positions[start : start + chunk]
        points = Batch(batch.species, pos, batch.cells[:1].expand(pos.shape[0], 3, 3))
        if head == CONSERVATIVE:
            out.append(evaluate(model, points, virial=False).forces.detach())
        else:
            out.append(evaluate(model, points, conservative=False, direct=True, energy=False).direct_forces.clone())
    return torch.cat(out)


def closed_path_work_ev(model: PotentialModel, batch: Batch, path: ClosedPath, head: str = CONSERVATIVE) -> float:
    """W = oint F . dr (eV) around ``path``, by the periodic trapezoid rule in t
    (spectrally accurate for a smooth closed path). Zero for a conservative force."""
    forces = path_forces(model, batch, path, head)
    n = path.positions.shape[0]
    return float((forces * path.tangents).sum() * (2 * math.pi / n))
