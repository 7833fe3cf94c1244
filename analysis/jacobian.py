"""How non-conservative is a model on given structures (``ipi-nc analyze jacobian``).

Built on :mod:`ipi_ncforces.models.jacobian`: for every force head the model has ("conservative" =
-dE/dr, "direct"), on each structure:
- lambda = ||J_anti||_F / ||J||_F of the force Jacobian J = dF/dr (0 conservative, 1 purely
  rotational; paper: PET-NC 0.004 on water);
- pair-resolved lambda_ij vs minimum-image distance (binned mean, plotted);
- work W = oint F . dr (meV) around two closed paths: a 2 pi rigid rotation of the first
  molecule (atoms 0-2) about z, and a loop in the plane of its two bond stretches
  (atoms 0-1 and 0-2, amplitude 0.1 A). Zero for a conservative force (paper: 15-410 meV
  for direct models).
Computed in float64 (small numbers).
"""

from __future__ import annotations

from pathlib import Path

from ipi_ncforces.analysis import plotting
from ipi_ncforces.analysis.readers import AnalysisInputError
from ipi_ncforces.analysis.report import markdown_table, write_report
from ipi_ncforces.models.structure_io import read_structure


def jacobian_of(model, atoms, bin_width_a: float = 0.5, loop_amplitude_a: float = 0.1) -> dict:
    """lambda, binned lambda_ij(r) and closed-path works (meV) of every force head of ``model`` on ``atoms``."""
    import torch

    from ipi_ncforces.models import jacobian as mj
    from ipi_ncforces.models.base import Batch
    from ipi_ncforces.models.modes import HEADS_FOR_MODE, SINGLE_FORCE_MODES

    batch = Batch.from_ase([atoms], dtype=torch.float64)
    heads = [m for m in SINGLE_FORCE_MODES if set(HEADS_FOR_MODE[m]) <= set(model.heads)]
    out = {}
    pos = batch.positions[0]
    paths = {}
    if len(atoms) >= 3:
        paths["rotation"] = mj.rotation_path(pos, [0, 1, 2])
        paths["stretch_loop"] = mj.deformation_loop_path(
            pos, mj.bond_stretch_pattern(pos, 0, 1), mj.bond_stretch_pattern(pos, 0, 2), loop_amplitude_a)
    for head in heads:
        jac = mj.force_jacobian(model, batch, head)
        pairs = mj.pair_asymmetry(jac, batch, min_block_norm_ev_per_ang2=1e-12)
        centres, mean_lam, counts = mj.bin_pair_asymmetry(pairs, bin_width_a)
        out[head] = {
            "lambda": mj.asymmetry_lambda(jac),
            "jacobian_norm_ev_a2": float(torch.linalg.norm(jac)),
            "pair_bins_r_a": centres.numpy(), "pair_lambda_mean": mean_lam.numpy(), "pair_counts": counts.numpy(),
            "series": {"r_a": pairs.distance_ang.numpy(), "lambda_ij": pairs.lambda_ij.numpy()},
            "work_mev": {name: 1000.0 * mj.closed_path_work_ev(model, batch, path, head)
                         for name, path in paths.items()},
        }
    return out


def plot(results: list[dict], path: Path) -> Path:
    """lambda_ij vs distance (points) with binned means (lines), per head."""
    fig, axes = plotting.figure(1, 1)
    ax = axes[0, 0]
    for r in results:
        for head, h in r["heads"].items():
            pts = ax.scatter(h["series"]["r_a"], h["series"]["lambda_ij"], s=3, alpha=0.3)
            ax.plot(h["pair_bins_r_a"], h["pair_lambda_mean"], color=pts.get_facecolor()[0][:3],
                    label=f"{r['structure']} {head} (lambda = {h['lambda']:.3g})")
    ax.set_xlabel("r_ij (A)")
    ax.set_ylabel("lambda_ij")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize="x-small")
    return plotting.save(fig, path)


def analyze(model_path: str, structures: list[str], out: Path, max_frames: int = 5, bins: int = 20) -> dict:
    """lambda / lambda_ij / closed-path work report; writes jacobian.json/.md/.png."""
    import torch

    from ipi_ncforces.models.backend import NativeBackend
    from ipi_ncforces.models.io import ModelFileError
    from ipi_ncforces.models.loader import NATIVE, load_backend, model_format

    try:  # our .pt or a metatomic file (which runs in its own dtype: export float64 for small numbers)
        dtype = torch.float64 if model_format(model_path) == NATIVE else None
        backend = load_backend(model_path, dtype=dtype, neighbor_skin_ang=0.0)
    except ModelFileError as exc:
        raise AnalysisInputError(f"--model: {exc}") from None
    model = backend.model if isinstance(backend, NativeBackend) else backend
    results = []
    for name in structures:
        try:
            frames = read_structure(name, slice(0, max_frames))
        except Exception as exc:
            raise AnalysisInputError(f"--structure {name}: cannot read ({exc})") from None
        for k, atoms in enumerate(frames):
            cutoff_bin = max(model.cutoff, 1.0) * 2.0 / bins
            try:
                heads = jacobian_of(model, atoms, bin_width_a=cutoff_bin)
            except ValueError as exc:  # unknown species etc.
                raise AnalysisInputError(f"--structure {name}: {exc}") from None
            results.append({"structure": f"{Path(name).name}[{k}]", "n_atoms": len(atoms), "heads": heads})
    png = plot(results, Path(out) / "jacobian.png")
    rows = [[r["structure"], head, f"{h['lambda']:.3g}",
             *[f"{h['work_mev'].get(p, float('nan')):.3g}" for p in ("rotation", "stretch_loop")]]
            for r in results for head, h in r["heads"].items()]
    md = markdown_table(["structure", "forces", "lambda", "W rotation (meV)", "W stretch loop (meV)"], rows)
    notes = ["lambda = ||J_anti||_F/||J||_F (Eq. 7): 0 for conservative forces, 1 for a rotational field; "
             "paper on water: PET-NC 0.004, ORB 0.015.",
             "W = closed-path work of the force: rigid 2 pi rotation of atoms 0-2 about z, and a loop in the "
             "plane of the 0-1 and 0-2 bond stretches (0.1 A); paper: 15-410 meV for direct models.",
             f"plot: {png.name} (lambda_ij vs r, binned means)"]
    data = {"what": "jacobian", "model": str(model_path), "structures": results, "plots": [png.name]}
    return write_report(out, "jacobian", data, md, [], notes)
