"""Energy drift of MD runs: slope of the conserved quantity and heating rate.

Drift = least-squares slope of i-PI's ``conserved`` column per atom (meV/atom/ps);
heating rate = slope of ``temperature`` (K/ps). Slope errors account for the
autocorrelation of the residuals (standard error of the OLS slope times sqrt(g), g the
statistical inefficiency of the residuals, :func:`ipi_ncforces.analysis.stats.linear_fit`).
Running-window slopes (n windows) tell a steady drift (same sign everywhere) from noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ipi_ncforces.analysis import plotting
from ipi_ncforces.analysis.readers import AnalysisInputError, RunFiles, read_properties, read_traj, warn
from ipi_ncforces.analysis.report import fmt, markdown_table, write_report
from ipi_ncforces.analysis.stats import linear_fit, running_slopes


def count_atoms(run: RunFiles) -> int:
    """Number of atoms of a run, from the first frame of any of its trajectories."""
    for files in run.trajectories.values():
        path = files[0]
        if path.suffix == ".xyz":
            try:
                return int(path.read_text().split(None, 1)[0])
            except (ValueError, IndexError):
                continue
        return read_traj(path).n_atoms
    raise AnalysisInputError(
        f"{run.prefix}: cannot count the atoms (no trajectory file next to the properties); pass --natoms")


def drift_of(run: RunFiles, natoms: int | None = None, skip_ps: float = 0.0, n_windows: int = 8) -> dict:
    """Drift of one run. Returns slopes in meV/atom/ps and K/ps with errors, series for plots."""
    if run.properties is None:
        raise AnalysisInputError(f"{run.prefix}: no properties file (<prefix>.out) for the drift analysis")
    props = read_properties(run.properties)
    messages = list(props.warnings)
    t = props.require("time", "the drift analysis (time{picosecond})")
    e = props.require("conserved", "the drift analysis (conserved{electronvolt})")
    n_atoms = natoms if natoms is not None else count_atoms(run)
    keep = t >= t[0] + skip_ps
    if keep.sum() < 5:
        raise AnalysisInputError(f"{run.properties}: fewer than 5 steps after --skip-ps {skip_ps}; "
                                 f"run longer or skip less")
    t, e = t[keep], e[keep]
    e_mev_atom = (e - e[0]) * 1000.0 / n_atoms
    fit = linear_fit(t, e_mev_atom)
    wc, ws, we = running_slopes(t, e_mev_atom, n_windows)
    result = {
        "run": run.name,
        "n_atoms": n_atoms,
        "duration_ps": float(t[-1] - t[0]),
        "n_samples": int(len(t)),
        "drift_mev_atom_ps": fit.slope,
        "drift_err_mev_atom_ps": fit.stderr,
        "drift_err_naive_mev_atom_ps": fit.stderr_naive,
        "residual_inefficiency": fit.inefficiency,
        "drift_significant": bool(abs(fit.slope) > 3.0 * fit.stderr),
        "window_centres_ps": wc,
        "window_drift_mev_atom_ps": ws,
        "window_drift_err_mev_atom_ps": we,
        "series": {"time_ps": t, "conserved_mev_atom": e_mev_atom},
    }
    if "temperature" in props:
        temp = props["temperature"][keep]
        tfit = linear_fit(t, temp)
        result.update({
            "heating_k_ps": tfit.slope,
            "heating_err_k_ps": tfit.stderr,
            "temperature_start_k": float(np.mean(temp[: max(1, len(temp) // 20)])),
            "temperature_mean_k": float(np.mean(temp)),
        })
        result["series"]["temperature_k"] = temp
    else:
        warn(messages, f"{run.properties}: no 'temperature' column; heating rate not computed")
    result["warnings"] = messages
    return result


def plot_drift(results: list[dict], path: Path) -> Path:
    """Conserved energy (meV/atom) and temperature (K) vs time (ps), runs overlaid."""
    fig, axes = plotting.figure(3, 1)
    for r in results:
        s = r["series"]
        axes[0, 0].plot(s["time_ps"], s["conserved_mev_atom"], label=r["run"])
        if "temperature_k" in s:
            axes[1, 0].plot(s["time_ps"], s["temperature_k"], label=r["run"])
        axes[2, 0].errorbar(r["window_centres_ps"], r["window_drift_mev_atom_ps"],
                            yerr=r["window_drift_err_mev_atom_ps"], marker="o", capsize=3, label=r["run"])
    axes[0, 0].set_ylabel("E_cons - E_cons(0)\n(meV/atom)")
    axes[1, 0].set_ylabel("T (K)")
    axes[2, 0].set_ylabel("window drift\n(meV/atom/ps)")
    axes[2, 0].axhline(0.0, color="k", lw=0.5)
    for ax in axes[:, 0]:
        ax.set_xlabel("time (ps)")
        ax.legend(fontsize="small")
    return plotting.save(fig, path)


def table(results: list[dict]) -> str:
    """Markdown table: one row per run."""
    rows = [[r["run"], f"{r['duration_ps']:.3g}", fmt(r["drift_mev_atom_ps"], r["drift_err_mev_atom_ps"]),
             fmt(r.get("heating_k_ps"), r.get("heating_err_k_ps")), fmt(r.get("temperature_mean_k")),
             "yes" if r["drift_significant"] else "no"] for r in results]
    return markdown_table(["run", "length (ps)", "drift (meV/atom/ps)", "heating (K/ps)", "<T> (K)",
                           "drift > 3 sigma"], rows)


def analyze(runs: list[RunFiles], out: Path, natoms: int | None = None, skip_ps: float = 0.0,
            n_windows: int = 8) -> dict:
    """Drift of every run; writes drift.json, drift.md, drift.png. Returns the report data."""
    results = [drift_of(r, natoms, skip_ps, n_windows) for r in runs]
    plot = plot_drift(results, Path(out) / "drift.png")
    md = table(results)
    warnings = [w for r in results for w in r.pop("warnings")]
    notes = [
        "drift: least-squares slope of the conserved quantity per atom; error = OLS slope error "
        "x sqrt(g), g = statistical inefficiency of the residuals (autocorrelation).",
        f"running-window view: {n_windows} windows per run in {plot.name}; a steady drift has the "
        "same sign in all windows.",
    ]
    data = {"what": "drift", "units": {"drift": "meV/atom/ps", "heating": "K/ps"}, "runs": results,
            "plots": [plot.name]}
    return write_report(out, "drift", data, md, warnings, notes)
