"""Velocity autocorrelation function and vibrational density of states per species.

C_s(t) = < v_i(0) . v_i(t) > over atoms i of species s and all time origins (FFT,
unbiased: each lag divided by its number of origins), in (A/ps)^2. VDOS_s(nu) = cosine
transform of C_s(t) times a Hann window over the lags used (``max_lag_ps``, default a
quarter of the run), normalised to unit area in THz^-1; frequencies in THz and cm^-1
(``ipi.utils.units``). PIMD: the centroid velocity (mean over bead files) is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ipi.utils.units import unit_to_internal, unit_to_user

from ipi_ncforces.analysis import plotting
from ipi_ncforces.analysis.readers import AnalysisInputError, RunFiles, species_masks, timestep_ps
from ipi_ncforces.analysis.report import markdown_table, write_report

CM1_PER_THZ: float = float(unit_to_user("frequency", "inversecm", unit_to_internal("frequency", "thz", 1.0)))


def autocorrelation(v: np.ndarray) -> np.ndarray:
    """<v(0).v(t)> for v (n_frames, n_atoms, 3), averaged over atoms and origins; (n_frames,)."""
    n = v.shape[0]
    f = np.fft.rfft(v, 2 * n, axis=0)
    acf = np.fft.irfft(f * np.conj(f), axis=0)[:n].sum(axis=2).mean(axis=1)
    return acf / (n - np.arange(n))


def vdos(acf: np.ndarray, dt_ps: float, max_lag: int, pad: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(frequency THz, VDOS THz^-1 with unit area) from the first ``max_lag`` lags of ``acf``."""
    c = acf[:max_lag] * np.hanning(2 * max_lag)[max_lag:]  # decaying half of a Hann window
    sym = np.concatenate([c, c[-2:0:-1]])  # even extension: real cosine transform
    n_fft = pad * len(sym)
    spec = np.fft.rfft(sym, n_fft).real * dt_ps
    freq = np.fft.rfftfreq(n_fft, dt_ps)
    spec = np.clip(spec, 0.0, None)
    area = np.trapezoid(spec, freq) if hasattr(np, "trapezoid") else np.trapz(spec, freq)
    return freq, spec / area if area > 0 else spec


def spectrum_of(run: RunFiles, max_lag_ps: float | None = None, timestep_fs: float | None = None,
                min_peak_cm1: float = 50.0) -> dict:
    """VACF and VDOS per species of one run, with the main peak (cm^-1) above ``min_peak_cm1``."""
    beads, messages = run.read_beads(
        ("velocities", "v_centroid"),
        "no velocity trajectory; add <trajectory filename='vel' stride='1'>velocities</trajectory> to the i-PI input",
    )
    n = min(len(b.data) for b in beads)
    v = np.mean([b.data[:n] for b in beads], axis=0)
    steps = beads[0].steps[:n]
    if n < 8:
        raise AnalysisInputError(f"{beads[0].path}: only {n} frames; a spectrum needs a longer run")
    dt = timestep_ps(run, timestep_fs) * float(np.median(np.diff(steps)))
    max_lag = n // 4 if max_lag_ps is None else int(round(max_lag_ps / dt))
    max_lag = max(4, min(max_lag, n - 1))
    result = {"run": run.name, "frame_dt_ps": dt, "max_lag_ps": max_lag * dt, "species": {},
              "warnings": messages, "series": {}}
    for s, mask in species_masks(beads[0].symbols).items():
        acf = autocorrelation(v[:, mask])
        freq, dos = vdos(acf, dt, max_lag)
        cm1 = freq * CM1_PER_THZ
        above = cm1 >= min_peak_cm1
        peak = float(cm1[above][np.argmax(dos[above])]) if above.any() else float("nan")
        result["species"][s] = {"peak_cm1": peak, "peak_thz": peak / CM1_PER_THZ,
                                "resolution_cm1": CM1_PER_THZ / (max_lag * dt),
                                "vacf0_a2_ps2": float(acf[0])}
        result["series"][s] = {"lag_ps": np.arange(max_lag) * dt, "vacf": acf[:max_lag] / acf[0],
                               "freq_thz": freq, "vdos": dos}
    return result


def plot(results: list[dict], path: Path, max_cm1: float | None = None) -> Path:
    """Normalised VACF and VDOS per species (one row each), runs overlaid; THz on a top axis."""
    species = list(dict.fromkeys(s for r in results for s in r["series"]))
    fig, axes = plotting.figure(len(species), 2, width=10.0)
    for row, s in enumerate(species):
        for r in results:
            if s not in r["series"]:
                continue
            ser = r["series"][s]
            axes[row, 0].plot(ser["lag_ps"], ser["vacf"], label=r["run"])
            axes[row, 1].plot(ser["freq_thz"] * CM1_PER_THZ, ser["vdos"] / CM1_PER_THZ, label=r["run"])
        axes[row, 0].set_xlabel("t (ps)")
        axes[row, 0].set_ylabel(f"VACF {s} (normalised)")
        axes[row, 1].set_xlabel("wavenumber (cm$^{-1}$)")
        axes[row, 1].set_ylabel(f"VDOS {s} (cm)")
        if max_cm1:
            axes[row, 1].set_xlim(0, max_cm1)
        top = axes[row, 1].secondary_xaxis("top", functions=(lambda x: x / CM1_PER_THZ, lambda x: x * CM1_PER_THZ))
        top.set_xlabel("THz")
        axes[row, 0].legend(fontsize="small")
    return plotting.save(fig, path)


def analyze(runs: list[RunFiles], out: Path, max_lag_ps: float | None = None, timestep_fs: float | None = None,
            max_cm1: float | None = 4500.0) -> dict:
    """VACF/VDOS of every run; writes spectrum.json/.md/.png. Returns the report data."""
    results = [spectrum_of(r, max_lag_ps, timestep_fs) for r in runs]
    png = plot(results, Path(out) / "spectrum.png", max_cm1)
    species = list(dict.fromkeys(s for r in results for s in r["species"]))
    rows = [[r["run"]] + [f"{r['species'][s]['peak_cm1']:.0f} ± {r['species'][s]['resolution_cm1'] / 2:.0f}"
                          if s in r["species"] else "-" for s in species] for r in results]
    md = markdown_table(["run"] + [f"VDOS peak {s} (cm^-1)" for s in species], rows)
    warnings = [w for r in results for w in r.pop("warnings")]
    notes = ["VDOS = Hann-windowed cosine transform of the VACF, unit area; peak error = half the "
             "frequency resolution 1/max_lag.", f"plots: {png.name}"]
    data = {"what": "spectrum", "units": {"frequency": "cm^-1 (THz = cm^-1 / 33.356)", "vacf": "(A/ps)^2"},
            "runs": results, "plots": [png.name]}
    return write_report(out, "spectrum", data, md, warnings, notes)
