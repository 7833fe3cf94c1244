"""Several runs side by side (e.g. conservative vs direct vs MTS, or thermostat strengths):
drift, heating rate, temperatures (T, T_H, T_O) and oxygen diffusion in one table.

Each quantity is computed by its own module (drift, temperatures, diffusion); a run
that lacks the data for one (no velocities, too short for an MSD) shows '-' there and
the reason is listed under the table.
"""

from __future__ import annotations

from pathlib import Path

from ipi_ncforces.analysis import diffusion, drift, temperatures
from ipi_ncforces.analysis.readers import AnalysisInputError, RunFiles
from ipi_ncforces.analysis.report import fmt, markdown_table, write_report


def analyze(runs: list[RunFiles], out: Path, target_k: float | None = None, skip_ps: float = 0.0,
            natoms: int | None = None, timestep_fs: float | None = None) -> dict:
    """Comparison table + overlaid drift/temperature plots; writes compare.json/.md/.png files."""
    out = Path(out)
    rows, records, warnings, drifts, temps = [], [], [], [], []
    for run in runs:
        rec: dict = {"run": run.name}
        for name, func in (
            ("drift", lambda r: drift.drift_of(r, natoms, skip_ps)),
            ("temperatures", lambda r: temperatures.temperatures_of(r, skip_ps, "auto", timestep_fs)),
            ("diffusion", lambda r: diffusion.diffusion_of(r, "O", timestep_fs=timestep_fs, skip_ps=skip_ps)),
        ):
            try:
                res = func(run)
                warnings += res.pop("warnings", [])
                rec[name] = res
            except AnalysisInputError as exc:
                warnings.append(f"{run.name}: no {name} ({exc})")
        if "drift" in rec:
            drifts.append(rec["drift"])
        if "temperatures" in rec:
            temps.append(rec["temperatures"])
        records.append(rec)
        d, t, dif = rec.get("drift", {}), rec.get("temperatures", {}).get("temperatures", {}), rec.get("diffusion", {})

        def temp(label: str) -> str:
            if label not in t:
                return "-"
            mean, err = t[label]["mean_k"], t[label]["err_k"]
            if target_k is not None:
                return f"{mean - target_k:+.2f} ± {err:.2g}"
            return fmt(mean, err, 5)

        rows.append([run.name, fmt(d.get("drift_mev_atom_ps"), d.get("drift_err_mev_atom_ps")),
                     fmt(d.get("heating_k_ps"), d.get("heating_err_k_ps")), temp("T"), temp("T_H"), temp("T_O"),
                     fmt(dif.get("d_1e5_cm2_s"), dif.get("d_err_1e5_cm2_s"))])
    tname = "Δ{} (K)" if target_k is not None else "<{}> (K)"
    md = markdown_table(["run", "drift (meV/atom/ps)", "heating (K/ps)", tname.format("T"), tname.format("T_H"),
                         tname.format("T_O"), "D_O (1e-5 cm^2/s)"], rows)
    plots = []
    if drifts:
        plots.append(drift.plot_drift(drifts, out / "compare-drift.png").name)
    if temps:
        _, labels = temperatures.table(temps, target_k)
        plots.append(temperatures.plot(temps, labels, out / "compare-temperatures.png", target_k).name)
    notes = ["drift: OLS slope with autocorrelation-corrected error; temperatures: block averages; D: MSD "
             "slope/6 with block error (see drift.md, temperatures.md, diffusion.md for details).",
             f"plots: {', '.join(plots)}"]
    if target_k is not None:
        notes.insert(0, f"temperatures are deviations from the target {target_k:g} K (paper Table 2 style).")
    data = {"what": "compare", "target_k": target_k, "runs": records, "plots": plots}
    return write_report(out, "compare", data, md, warnings, notes)
