"""Self-diffusion from the mean-squared displacement (default: oxygen).

Positions are unwrapped frame to frame with the minimum image of each step's
displacement in that frame's cell (so wrapped and unwrapped trajectories give the
same answer, as long as no atom moves half a box between saved frames), and the
centre-of-mass displacement of the whole system is removed (direct forces make the
centre of mass drift). MSD(t) = <|r_i(t0 + t) - r_i(t0)|^2> over atoms of the species
and all time origins (FFT algorithm). The run is cut into n_blocks contiguous blocks;
D = slope / 6 of a line fitted to the full-run MSD over lags [fit_start, fit_end] x
block length, and its error is the standard error of the D's of the blocks fitted over
the same lags (calibrated on random walks: |D - D_true| < 2 sigma in ~93% of seeds).

Finite size: D from a periodic box of length L is low by k_B T xi / (6 pi eta L)
(Yeh & Hummer, J. Phys. Chem. B 108, 15873 (2004), xi = 2.837297 for cubic boxes);
given the viscosity the corrected D_inf is reported.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ipi_ncforces.analysis import plotting
from ipi_ncforces.analysis.readers import AnalysisInputError, RunFiles, timestep_ps
from ipi_ncforces.analysis.report import fmt, markdown_table, write_report
from ipi_ncforces.analysis.spectrum import autocorrelation
from ipi_ncforces.models.units import BOLTZMANN_J_PER_K

YEH_HUMMER_XI = 2.837297
# 1 A^2/ps = 1e-16 cm^2 / 1e-12 s = 1e-4 cm^2/s = 10 x (1e-5 cm^2/s)
E5CM2S_PER_A2PS = 10.0


def unwrap(positions: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Continuous trajectory from (n_frames, n_atoms, 3) A positions and (n_frames, 3, 3) cells (rows)."""
    from ase.geometry import find_mic

    out = np.empty_like(positions)
    out[0] = positions[0]
    for f in range(1, len(positions)):
        d = positions[f] - positions[f - 1]
        if abs(np.linalg.det(cells[f])) > 1e-9:
            d = find_mic(d, cells[f], pbc=True)[0]
        out[f] = out[f - 1] + d
    return out


def msd_fft(x: np.ndarray) -> np.ndarray:
    """MSD(lag) averaged over atoms and origins for x (n_frames, n_atoms, 3); (n_frames,) A^2."""
    n = x.shape[0]
    d = np.sum(x ** 2, axis=2)  # (n, atoms)
    d = np.vstack([d, np.zeros((1, x.shape[1]))])
    q = 2.0 * d.sum(axis=0)
    s1 = np.zeros((n, x.shape[1]))
    for m in range(n):
        q = q - d[m - 1] - d[n - m]
        s1[m] = q / (n - m)
    return s1.mean(axis=1) - 2.0 * autocorrelation(x)  # <r(t0).r(t0 + t)>, FFT


def fit_d(msd: np.ndarray, dt_ps: float, first_lag: int, last_lag: int) -> float:
    """D (A^2/ps) = slope / 6 of a line through MSD over lags [first_lag, last_lag)."""
    if last_lag - first_lag < 3 or last_lag > len(msd):
        raise AnalysisInputError("trajectory too short for the MSD fit window; run longer or change --fit-range")
    t = np.arange(first_lag, last_lag) * dt_ps
    return float(np.polyfit(t, msd[first_lag:last_lag], 1)[0] / 6.0)


def yeh_hummer_a2ps(temperature_k: float, viscosity_mpas: float, box_length_a: float) -> float:
    """Finite-size correction k_B T xi / (6 pi eta L) in A^2/ps (eta in mPa s, L in A)."""
    d_m2s = BOLTZMANN_J_PER_K * temperature_k * YEH_HUMMER_XI / (
        6.0 * math.pi * viscosity_mpas * 1e-3 * box_length_a * 1e-10)
    return d_m2s * 1e8  # m^2/s -> A^2/ps: 1e20 A^2 / 1e12 ps


def diffusion_of(run: RunFiles, species: str = "O", fit_range: tuple[float, float] = (0.1, 0.5),
                 n_blocks: int = 5, remove_com: bool = True, timestep_fs: float | None = None,
                 skip_ps: float = 0.0, temperature_k: float | None = None,
                 viscosity_mpas: float | None = None) -> dict:
    """D of ``species`` in one run, A^2/ps and 1e-5 cm^2/s, with block error and finite-size note."""
    beads, messages = run.read_beads(
        ("positions", "x_centroid"),
        "no positions trajectory; add <trajectory filename='pos'>positions{angstrom}</trajectory> to the i-PI input",
    )
    n = min(len(b.data) for b in beads)
    cells = beads[0].cells[:n]
    x = np.mean([unwrap(b.data[:n], cells) for b in beads], axis=0)  # centroid for PIMD
    steps = beads[0].steps[:n]
    dt = timestep_ps(run, timestep_fs) * float(np.median(np.diff(steps))) if n > 1 else 0.0
    if skip_ps > 0:
        keep = (steps - steps[0]) * timestep_ps(run, timestep_fs) >= skip_ps
        x, cells = x[keep], cells[keep]
    masses = beads[0].masses_amu
    if remove_com:
        com = np.einsum("n,fnc->fc", masses, x) / masses.sum()
        x = x - (com - com[0])[:, None, :]
    mask = np.array(beads[0].symbols) == species
    if not mask.any():
        raise AnalysisInputError(f"{beads[0].path}: no atoms of species '{species}' (have {sorted(set(beads[0].symbols))})")
    if len(x) < 20:
        raise AnalysisInputError(f"{beads[0].path}: only {len(x)} frames; the MSD needs at least 20")
    if n_blocks > 1 and len(x) // n_blocks < 20:
        messages.append(f"{run.name}: too few frames for {n_blocks} blocks of >= 20 frames; D has no error bar")
        n_blocks = 1
    # the fit window is a fraction of the block length so that the full-run estimate and the
    # block estimates use the same lags: their spread is then the error of D (checked on random walks)
    size = len(x) // n_blocks
    a, b = max(1, int(fit_range[0] * size)), int(fit_range[1] * size)
    msd = msd_fft(x[:, mask])
    d = fit_d(msd, dt, a, b)
    block_d = [fit_d(msd_fft(x[k * size:(k + 1) * size, mask]), dt, a, b) for k in range(n_blocks)] \
        if n_blocks > 1 else []
    err = float(np.std(block_d, ddof=1) / np.sqrt(len(block_d))) if len(block_d) > 1 else float("nan")
    box = float(abs(np.linalg.det(cells[0]))) ** (1.0 / 3.0)
    result = {
        "run": run.name, "species": species, "n_atoms_species": int(mask.sum()),
        "d_a2_ps": d, "d_err_a2_ps": err,
        "d_1e5_cm2_s": d * E5CM2S_PER_A2PS, "d_err_1e5_cm2_s": err * E5CM2S_PER_A2PS,
        "block_d_a2_ps": block_d, "fit_lag_ps": [a * dt, b * dt], "frame_dt_ps": dt,
        "box_length_a": box, "com_removed": remove_com, "warnings": messages,
        "series": {"lag_ps": np.arange(len(msd)) * dt, "msd_a2": msd, "fit": (a, b)},
    }
    if temperature_k is not None and viscosity_mpas is not None:
        corr = yeh_hummer_a2ps(temperature_k, viscosity_mpas, box)
        result["yeh_hummer_a2_ps"] = corr
        result["d_inf_1e5_cm2_s"] = (d + corr) * E5CM2S_PER_A2PS
    return result


def plot(results: list[dict], path: Path) -> Path:
    """MSD vs lag for every run with the fitted range marked."""
    fig, axes = plotting.figure(1, 1)
    ax = axes[0, 0]
    for r in results:
        s = r["series"]
        line, = ax.plot(s["lag_ps"], s["msd_a2"], label=f"{r['run']} ({r['species']})")
        a, b = s["fit"]
        t = s["lag_ps"][a:b]
        ax.plot(t, s["msd_a2"][a] + 6 * r["d_a2_ps"] * (t - t[0]), "--", color=line.get_color())
    ax.set_xlabel("lag (ps)")
    ax.set_ylabel("MSD (A$^2$)")
    ax.legend(fontsize="small")
    return plotting.save(fig, path)


def analyze(runs: list[RunFiles], out: Path, species: str = "O", fit_range: tuple[float, float] = (0.1, 0.5),
            n_blocks: int = 5, remove_com: bool = True, timestep_fs: float | None = None, skip_ps: float = 0.0,
            temperature_k: float | None = None, viscosity_mpas: float | None = None) -> dict:
    """D of every run; writes diffusion.json/.md/.png. Returns the report data."""
    results = [diffusion_of(r, species, fit_range, n_blocks, remove_com, timestep_fs, skip_ps,
                            temperature_k, viscosity_mpas) for r in runs]
    png = plot(results, Path(out) / "diffusion.png")
    rows = [[r["run"], r["species"], fmt(r["d_a2_ps"], r["d_err_a2_ps"]), fmt(r["d_1e5_cm2_s"], r["d_err_1e5_cm2_s"]),
             f"{r['box_length_a']:.2f}", fmt(r.get("d_inf_1e5_cm2_s"))] for r in results]
    md = markdown_table(["run", "species", "D (A^2/ps)", "D (1e-5 cm^2/s)", "L (A)", "D_inf Yeh-Hummer (1e-5 cm^2/s)"], rows)
    warnings = [w for r in results for w in r.pop("warnings")]
    notes = [
        f"D = slope/6 of the MSD fitted over lags {fit_range[0]:g}-{fit_range[1]:g} of a block; error = "
        f"standard error over {n_blocks} blocks; centre-of-mass motion {'removed' if remove_com else 'kept'}.",
        "finite size: D_inf = D_PBC + k_B T xi / (6 pi eta L), xi = 2.837297 (Yeh & Hummer 2004); pass "
        "--temperature-k and --viscosity-mpas to apply it (water, 300 K: eta ~ 0.85 mPa s; for 64 H2O, "
        "L ~ 12.4 A, the correction is ~0.6e-5 cm^2/s, not small).",
        f"plot: {png.name}",
    ]
    data = {"what": "diffusion", "units": {"D": "A^2/ps and 1e-5 cm^2/s"}, "runs": results, "plots": [png.name]}
    return write_report(out, "diffusion", data, md, warnings, notes)
