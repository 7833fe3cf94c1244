"""Kinetic temperatures: overall, per species (T_H, T_O), and for PIMD the centroid and
ring-polymer normal-mode temperatures, with block-averaging error bars.

Sources, per quantity, in this order:
1. i-PI properties columns: ``temperature`` (T), ``temperature(H)`` or
   ``temperature(atom=H)`` (T_H), ``temperature(nm=0)`` (T_centroid),
   ``temperature(nm=k)`` (T_nm<k>);
2. velocity trajectories (``velocities`` per bead): T_s = sum_i m_i v_i^2 / (k_B n_dof).
   n_dof = 3 N_s, minus 3 M_s / M when the centre-of-mass momentum is zero in the file
   (i-PI's default ``fixcom``; detected from the data, as i-PI's own estimator does).
   With P beads, bead velocities are transformed to i-PI's normal modes
   (``ipi.utils.nmtransform.mk_nm_matrix``, physical normal-mode masses assumed);
   T_nm<k> = sum_i m_i u_ik^2 / (k_B P n_dof) and T_s is the mean over modes, like i-PI's
   ``temperature(atom=s)``. Mode 0 is the centroid.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from ipi.utils.nmtransform import mk_nm_matrix
from ipi.utils.units import Constants, unit_to_internal, unit_to_user

from ipi_ncforces.analysis import plotting
from ipi_ncforces.analysis.readers import (AnalysisInputError, RunFiles, Trajectory, read_properties,
                                           species_masks, timestep_ps, warn)
from ipi_ncforces.analysis.report import fmt, markdown_table, write_report
from ipi_ncforces.analysis.stats import block_average, replica_average

# T (K) = m v^2 * this / n_dof for m in amu and v in A/ps (i-PI internal units have k_B = Constants.kb)
KELVIN_PER_AMU_A2_PS2: float = float(unit_to_user(
    "temperature", "kelvin",
    unit_to_internal("mass", "dalton", 1.0)
    * (unit_to_internal("length", "angstrom", 1.0) / unit_to_internal("time", "picosecond", 1.0)) ** 2
    / Constants.kb,
))


def label_of_column(name: str) -> str | None:
    """Table label of an i-PI temperature column (``temperature(H)`` -> ``T_H``), None if not one."""
    if name == "temperature":
        return "T"
    m = re.fullmatch(r"temperature\((.*)\)", name)
    if not m:
        return None
    args = dict(a.split("=", 1) if "=" in a else ("atom", a) for a in m.group(1).split(";"))
    args = {k.strip(): v.strip() for k, v in args.items()}
    if "nm" in args and "atom" not in args:
        return "T_centroid" if int(args["nm"]) == 0 else f"T_nm{int(args['nm'])}"
    if "bead" in args and "atom" not in args:
        return f"T_bead{int(args['bead'])}"
    if set(args) == {"atom"} and not args["atom"].isdigit():
        return f"T_{args['atom']}"
    return None


def temperatures_from_properties(props) -> dict[str, np.ndarray]:
    """Label -> temperature series (K) for every temperature column i-PI wrote."""
    return {label_of_column(name): values for name, values in props.values.items()
            if label_of_column(name) is not None and np.ndim(values) == 1}


def temperatures_from_velocities(beads: list[Trajectory], messages: list[str] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Label -> temperature series (K) from per-bead velocity trajectories (A/ps).

    Returns (series, info) with info = {"com_removed", "n_beads", "dof"}.
    """
    n_frames = min(len(b.data) for b in beads)
    if any(len(b.data) != n_frames for b in beads):
        warn(messages, f"bead velocity files have different lengths; used the first {n_frames} frames")
    v = np.stack([b.data[:n_frames] for b in beads])  # (P, F, N, 3) A/ps
    masses = beads[0].masses_amu
    n_beads = v.shape[0]
    u = np.einsum("kb,bfnc->kfnc", mk_nm_matrix(n_beads), v)  # normal-mode velocities
    centroid = v.mean(axis=0)
    momentum = np.abs(np.einsum("n,fnc->fc", masses, centroid)).max(axis=1)
    scale = np.sqrt(np.einsum("n,fnc->f", masses ** 2, centroid ** 2))
    com_removed = bool(np.median(momentum / np.maximum(scale, 1e-300)) < 1e-3)
    mv2 = np.einsum("n,kfnc->kfn", masses, u ** 2) * KELVIN_PER_AMU_A2_PS2  # (P, F, N) K
    groups = {"": np.ones(len(masses), bool)} | species_masks(beads[0].symbols)
    series: dict[str, np.ndarray] = {}
    dof_info = {}
    for s, mask in groups.items():
        n_dof = 3.0 * mask.sum()
        fixed = 3.0 * masses[mask].sum() / masses.sum() if com_removed else 0.0
        per_mode = mv2[:, :, mask].sum(axis=2) / n_beads  # (P, F)
        per_mode[0] /= n_dof - fixed
        per_mode[1:] /= n_dof
        label = "T" if s == "" else f"T_{s}"
        series[label] = per_mode.mean(axis=0)
        dof_info[label] = n_dof - fixed
        if s == "" and n_beads > 1:
            series["T_centroid"] = per_mode[0]
            for k in range(1, n_beads):
                series[f"T_nm{k}"] = per_mode[k]
    return series, {"com_removed": com_removed, "n_beads": n_beads, "dof": dof_info}


def temperatures_of(run: RunFiles, skip_ps: float = 0.0, source: str = "auto",
                    timestep_fs: float | None = None) -> dict:
    """Mean temperatures (K) with block-averaging errors of one run, by label."""
    messages: list[str] = []
    series: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    info = {}
    interval_ps = None  # time between samples (ps), when the outputs say
    if source in ("auto", "properties") and run.properties is not None:
        props = read_properties(run.properties)
        messages += props.warnings
        t = props["time"] if "time" in props else None
        if t is not None and len(t) > 1:
            interval_ps = float(np.median(np.diff(t)))
        found = temperatures_from_properties(props)
        if found and skip_ps > 0:
            if t is None:
                raise AnalysisInputError(f"{run.properties}: --skip-ps needs a time column")
            keep = t >= t[0] + skip_ps
            found = {k: v[keep] for k, v in found.items()}
        series.update(found)
        sources.update({k: "properties" for k in found})
    velocity_files = run.trajectory_files("velocities")
    has_species = any(k.startswith("T_") and k[2:].isalpha() and k != "T_centroid" for k in series)
    want_velocities = source == "velocities" or (source == "auto" and bool(velocity_files) and not has_species)
    if want_velocities:
        beads, bead_warnings = run.read_beads(("velocities",), "no velocity trajectory (add <trajectory "
                                              "filename='vel'>velocities</trajectory> to the i-PI input) for "
                                              "--source velocities")
        messages += bead_warnings
        found, info = temperatures_from_velocities(beads, messages)
        steps = beads[0].steps[: len(found["T"])]
        if skip_ps > 0:
            dt = timestep_ps(run, timestep_fs)
            keep = (steps - steps[0]) * dt >= skip_ps
            found = {k: v[keep] for k, v in found.items()}
        if interval_ps is None and len(steps) > 1 and (skip_ps > 0 or timestep_fs is not None):
            interval_ps = float(np.median(np.diff(steps))) * timestep_ps(run, timestep_fs)
        for k, v in found.items():
            if k not in series:
                series[k] = v
                sources[k] = "velocities"
        info["note"] = ("COM momentum is zero in the file: 3 M_s/M dof removed per species" if info["com_removed"]
                        else "COM momentum not fixed: 3 N_s dof per species")
    if not series:
        raise AnalysisInputError(
            f"{run.prefix}: no temperature data; write temperature, temperature(H)... properties or a "
            f"velocities trajectory")
    stats = {}
    for label, values in series.items():
        if len(values) < 4:
            raise AnalysisInputError(f"{run.prefix}: fewer than 4 samples of {label} after --skip-ps")
        ba = block_average(values)
        stats[label] = {"mean_k": ba.mean, "err_k": ba.stderr, "block_size": ba.block_size,
                        "n_samples": int(len(values)), "source": sources[label]}
    return {"run": run.name, "temperatures": stats, "velocity_info": info, "warnings": messages,
            "series": series, "sample_interval_ps": interval_ps}


def _order(labels: set[str]) -> list[str]:
    species = sorted(k for k in labels if k.startswith("T_") and k[2:].isalpha() and k != "T_centroid")
    # H before O like the paper, then the rest alphabetically
    species.sort(key=lambda k: (k not in ("T_H", "T_O"), k))
    nm = sorted((k for k in labels if k.startswith("T_nm")), key=lambda k: int(k[4:]))
    beads = sorted((k for k in labels if k.startswith("T_bead")), key=lambda k: int(k[6:]))
    head = ["T"] if "T" in labels else []
    return head + species + (["T_centroid"] if "T_centroid" in labels else []) + nm + beads


def table(results: list[dict], target_k: float | None) -> tuple[str, list[str]]:
    """Markdown table like paper Table 2: <T>, <T_H>, <T_O> (K) and deviations from target."""
    labels = _order(set().union(*(r["temperatures"] for r in results)))
    headers = ["run"] + [f"<{k}> (K)" for k in labels]
    if target_k is not None:
        headers += [f"Δ{k} (K)" for k in labels]
    rows = []
    for r in results:
        temps = r["temperatures"]
        row = [r["run"]] + [fmt(temps[k]["mean_k"], temps[k]["err_k"], 5) if k in temps else "-" for k in labels]
        if target_k is not None:
            row += [f"{temps[k]['mean_k'] - target_k:+.2f} ± {temps[k]['err_k']:.2g}" if k in temps else "-"
                    for k in labels]
        rows.append(row)
    return markdown_table(headers, rows), labels


def plot(results: list[dict], labels: list[str], path: Path, target_k: float | None) -> Path:
    """Cumulative mean of T, T_H, T_O vs sample, and a bar chart of the means with errors."""
    fig, axes = plotting.figure(2, 1)
    main = [k for k in labels if not k.startswith(("T_nm", "T_bead"))]
    width = 0.8 / max(1, len(results))
    for i, r in enumerate(results):
        for k in main:
            if k in r["series"]:
                s = r["series"][k]
                axes[0, 0].plot(np.cumsum(s) / np.arange(1, len(s) + 1), label=f"{r['run']} {k}")
        means = [r["temperatures"].get(k, {}).get("mean_k", np.nan) for k in labels]
        errs = [r["temperatures"].get(k, {}).get("err_k", np.nan) for k in labels]
        ref = target_k if target_k is not None else 0.0
        axes[1, 0].bar(np.arange(len(labels)) + i * width, np.array(means) - ref, width, yerr=errs,
                       capsize=3, label=r["run"])
    axes[0, 0].set_xlabel("sample")
    axes[0, 0].set_ylabel("running mean T (K)")
    axes[0, 0].legend(fontsize="x-small", ncol=2)
    axes[1, 0].set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels)
    axes[1, 0].set_ylabel("<T> - target (K)" if target_k is not None else "<T> (K)")
    axes[1, 0].axhline(0.0, color="k", lw=0.5)
    axes[1, 0].legend(fontsize="small")
    return plotting.save(fig, path)


def analyze(runs: list[RunFiles], out: Path, target_k: float | None = None, skip_ps: float = 0.0,
            source: str = "auto", timestep_fs: float | None = None) -> dict:
    """Temperatures of every run; writes temperatures.json/.md/.png. Returns the report data."""
    results = [temperatures_of(r, skip_ps, source, timestep_fs) for r in runs]
    md, labels = table(results, target_k)
    png = plot(results, labels, Path(out) / "temperatures.png", target_k)
    warnings = [w for r in results for w in r.pop("warnings")]
    notes = ["errors: standard error of the mean from block averaging (Flyvbjerg-Petersen blocking, "
             "block size by the Lee-Kent-Needs criterion).",
             "T_s from velocities: n_dof = 3 N_s, minus 3 M_s/M if the centre-of-mass momentum is fixed "
             "(i-PI's fixcom), as in i-PI's temperature(atom=s)."]
    for r in results:
        if r["velocity_info"]:
            notes.append(f"{r['run']}: {r['velocity_info']['note']} ({r['velocity_info']['n_beads']} bead(s)).")
    data = {"what": "temperatures", "units": "K", "target_k": target_k, "runs": results, "plots": [png.name]}
    return write_report(out, "temperatures", data, md, warnings, notes)


def replica_table(summary: dict, target_k: float | None, target_err_k: float) -> str:
    """Markdown table of the replica estimates (one row per temperature)."""
    dev = "Δ" if target_k is not None else ""
    headers = ["quantity", f"replica mean {dev}(K)", "σ reported (K)", "σ replicas (K)",
               "spread of one run (K)", "block σ of one run (K)", "spread / block σ",
               "n_eff per run: replicas / blocks / ACF", "samples per run",
               f"ps per run for σ ≤ {target_err_k:g} K with n = {summary['n_replicas']}",
               f"ps in total for σ ≤ {target_err_k:g} K"]
    rows = []
    for label, r in summary["estimates"].items():
        mean = r["mean_k"] - (target_k or 0.0)
        rows.append([label, f"{mean:+.2f}" if target_k is not None else f"{mean:.2f}",
                     f"{r['stderr_k']:.2f}", f"{r['stderr_replicas_k']:.2f}", f"{r['spread_k']:.2f}",
                     f"{r['block_stderr_one_run_k']:.2f}", f"{r['ratio']:.2f}",
                     f"{r['n_eff_replicas']:.0f} / {r['n_eff_blocks']:.0f} / {r['n_eff_acf']:.0f}",
                     f"{r['samples_per_run']:.0f}",
                     fmt(r.get("ps_per_run_needed")), fmt(r.get("ps_total_needed"))])
    return markdown_table(headers, rows)


def replica_summary(results: list[dict], labels: list[str] | None = None, target_err_k: float = 1.5) -> dict:
    """Replica estimates (stats.replica_average) of every temperature all runs have, in K.

    ps_total_needed: production time summed over replicas for σ <= target_err_k, from the
    variance of one run's mean (spread, or the block σ if larger) times its length;
    ps_per_run_needed: the same shared by the current number of replicas.
    """
    common = set.intersection(*(set(r["temperatures"]) for r in results))
    labels = [k for k in (labels or _order(common)) if k in common]
    intervals = [r.get("sample_interval_ps") for r in results]
    interval = float(np.median(intervals)) if all(i is not None for i in intervals) else None
    estimates = {}
    for label in labels:
        ra = replica_average([r["series"][label] for r in results])
        est = {"mean_k": ra.mean, "stderr_k": ra.stderr, "stderr_replicas_k": ra.stderr_replicas,
               "stderr_blocks_k": ra.stderr_blocks, "spread_k": ra.spread,
               "block_stderr_one_run_k": ra.block_stderr_one_run, "ratio": ra.ratio,
               "n_replicas": ra.n_replicas, "samples_per_run": ra.samples_per_run,
               "sample_std_k": ra.sample_std, "n_eff_replicas": ra.n_eff_replicas, "n_eff_blocks": ra.n_eff_blocks,
               "n_eff_acf": ra.n_eff_acf, "stderr_rel_uncertainty": ra.stderr_rel_uncertainty}
        if interval is not None:
            run_ps = ra.samples_per_run * interval
            est["run_ps"] = run_ps
            est["ps_total_needed"] = ra.runs_for(target_err_k) * run_ps
            est["ps_per_run_needed"] = est["ps_total_needed"] / ra.n_replicas
            est["ps_per_independent_sample"] = run_ps / ra.n_eff_replicas
        estimates[label] = est
    return {"n_replicas": len(results), "sample_interval_ps": interval, "target_err_k": target_err_k,
            "estimates": estimates, "time_blocks": time_blocks(results, labels, interval)}


def species_split(results: list[dict], hot: str = "T_O", cold: str = "T_H") -> dict | None:
    """T_O - T_H (K) over replicas: the mean of the per-run differences of the run means, σ
    from their spread / sqrt(n), and the spread of one run. The equipartition split without a
    target (it holds under NVE, where each run keeps its own total temperature). None if a
    run lacks either species."""
    if len(results) < 2 or not all(hot in r["series"] and cold in r["series"] for r in results):
        return None
    per_run = np.array([np.mean(r["series"][hot]) - np.mean(r["series"][cold]) for r in results])
    return {"label": f"{hot} - {cold}", "mean_k": float(per_run.mean()),
            "stderr_k": float(per_run.std(ddof=1) / np.sqrt(len(per_run))),
            "spread_k": float(per_run.std(ddof=1)), "per_run_k": per_run.tolist()}


def paired_difference(results_a: list[dict], results_b: list[dict], labels: list[str] | None = None) -> dict:
    """a - b of each temperature (K) over replicas paired by index (replica k of both set-ups
    started from the same structure): mean of the per-pair differences of the run means, with
    σ = max(std of the pair differences / sqrt(n), the unpaired block σ of the two means).

    What the two runs of a pair share (the start's structure and, for equal seeds, the first
    velocities) cancels in the difference while they stay correlated; where they decorrelate
    quickly (direct vs conservative water-m: within ~1 ps) the paired σ is no smaller than
    ``stderr_unpaired_k`` (the two replica σ in quadrature), which is given beside it."""
    if len(results_a) != len(results_b) or len(results_a) < 2:
        raise ValueError("a paired difference needs the same number (>= 2) of replicas on both sides")
    common = set.intersection(*(set(r["temperatures"]) for r in results_a + results_b))
    labels = [k for k in (labels or _order(common)) if k in common]
    out = {}
    for label in labels:
        a = replica_average([r["series"][label] for r in results_a])
        b = replica_average([r["series"][label] for r in results_b])
        pairs = np.array([np.mean(ra["series"][label]) - np.mean(rb["series"][label])
                          for ra, rb in zip(results_a, results_b)])
        paired = float(pairs.std(ddof=1) / np.sqrt(len(pairs)))
        out[label] = {"delta_k": float(pairs.mean()), "err_k": max(paired, float(np.hypot(a.stderr_blocks, b.stderr_blocks))),
                      "stderr_paired_k": paired, "stderr_unpaired_k": float(np.hypot(a.stderr, b.stderr)),
                      "n_pairs": len(pairs)}
    return out


def time_blocks(results: list[dict], labels: list[str], interval_ps: float | None, n_blocks: int = 4) -> list[dict]:
    """Replica mean and σ over replicas of each quantity in ``n_blocks`` consecutive time blocks.

    A trend from block to block that is larger than the σ is non-stationarity (equilibration
    not finished): neither block averaging nor the replica spread flag it on their own.
    """
    length = min(len(r["series"][labels[0]]) for r in results)
    edges = np.linspace(0, length, n_blocks + 1).astype(int)
    rows = []
    for a, b in zip(edges[:-1], edges[1:]):
        row = {"first_sample": int(a), "last_sample": int(b - 1)}
        if interval_ps is not None:
            row["from_ps"], row["to_ps"] = a * interval_ps, b * interval_ps
        for label in labels:
            means = np.array([r["series"][label][a:b].mean() for r in results])
            row[label] = {"mean_k": float(means.mean()), "stderr_k": float(means.std(ddof=1) / np.sqrt(len(means)))}
        rows.append(row)
    return rows


def time_block_table(blocks: list[dict], labels: list[str], target_k: float | None) -> str:
    """Markdown: one row per time block, replica mean ± σ over replicas of each quantity."""
    ref = target_k or 0.0
    headers = ["block (ps after skip)"] + [f"{'Δ' if target_k is not None else ''}{k} (K)" for k in labels]
    rows = []
    for b in blocks:
        where = (f"{b['from_ps']:.2f}-{b['to_ps']:.2f}" if "from_ps" in b
                 else f"samples {b['first_sample']}-{b['last_sample']}")
        rows.append([where] + [f"{b[k]['mean_k'] - ref:+.2f} ± {b[k]['stderr_k']:.2f}" for k in labels])
    return markdown_table(headers, rows)


def analyze_replicas(runs: list[RunFiles], out: Path, target_k: float | None = None, skip_ps: float = 0.0,
                     source: str = "auto", timestep_fs: float | None = None, target_err_k: float = 1.5,
                     minus: list[RunFiles] | None = None) -> dict:
    """Runs = independent replicas of ONE set-up (different seeds): per-run table plus the
    replica mean of T, T_H, T_O with σ from the spread between replicas (stats.replica_average).
    ``minus``: replicas of a second set-up paired with ``runs`` by order; adds runs - minus
    (:func:`paired_difference`). Writes temperatures.json/.md/.png. Returns the report data."""
    if len(runs) < 2:
        raise AnalysisInputError("--replicas needs at least 2 runs of the same set-up")
    if minus is not None and len(minus) != len(runs):
        raise AnalysisInputError(f"--minus needs as many runs as the replicas ({len(minus)} given, {len(runs)} replicas)")
    results = [temperatures_of(r, skip_ps, source, timestep_fs) for r in runs]
    per_run, labels = table(results, target_k)
    main = [k for k in labels if not k.startswith(("T_nm", "T_bead"))]
    summary = replica_summary(results, main, target_err_k)
    lengths = sorted({len(r["series"][main[0]]) for r in results})
    warnings = [w for r in results for w in r.pop("warnings")]
    if lengths[0] < 0.9 * lengths[-1]:
        warnings.append(f"replicas have different lengths ({lengths[0]} to {lengths[-1]} samples): "
                        f"they are weighted equally")
    md = (f"Replica estimate over {len(runs)} runs (σ reported = max(σ replicas, block σ of the mean); "
          f"σ replicas = spread / sqrt(n), itself uncertain by ±{100 / np.sqrt(2 * (len(runs) - 1)):.0f}%):\n\n"
          + replica_table(summary, target_k, target_err_k)
          + "\n\nReplica mean per time block (a trend larger than σ = equilibration not finished):\n\n"
          + time_block_table(summary["time_blocks"], main, target_k)
          + "\n\nPer run (block-averaging σ):\n\n" + per_run)
    split = species_split(results)
    if split is not None:
        summary["species_split"] = split
        md += (f"\n\n{split['label']} (mean of the per-run differences, σ = spread / sqrt(n)): "
               f"{split['mean_k']:+.2f} ± {split['stderr_k']:.2f} K; one run scatters {split['spread_k']:.2f} K.")
    paired = None
    if minus is not None:
        others = [temperatures_of(r, skip_ps, source, timestep_fs) for r in minus]
        warnings += [w for r in others for w in r.pop("warnings")]
        paired = paired_difference(results, others, main)
        rows = [[k, f"{d['delta_k']:+.2f}", f"{d['err_k']:.2f}", f"{d['stderr_paired_k']:.2f}", f"{d['stderr_unpaired_k']:.2f}"]
                for k, d in paired.items()]
        md += (f"\n\nPaired difference, these runs minus the --minus runs ({len(runs)} pairs, replica k with replica k):\n\n"
               + markdown_table(["quantity", "Δ (K)", "σ (K)", "σ paired (K)", "σ unpaired (K)"], rows))
    png = plot(results, labels, Path(out) / "temperatures.png", target_k)
    notes = ["spread of one run: standard deviation of the run means between replicas (the true error of one "
             "run's mean); block σ of one run: rms of the block-averaging errors the runs report. A ratio "
             "spread / block σ well above 1 means the block analysis misses slow components.",
             "n_eff per run: variance of the instantaneous samples / variance of a run mean, with the latter "
             "from the replica spread, from the blocks, or n / g (statistical inefficiency g, Sokal window).",
             "ps for σ ≤ target: (spread of one run / target)^2 x run length, summed over replicas; assumes "
             "runs longer than the slowest correlation time (otherwise a lower bound)."]
    data = {"what": "temperatures", "units": "K", "target_k": target_k, "skip_ps": skip_ps, "replicas": summary,
            "runs": results, "plots": [png.name]}
    if paired is not None:
        data["paired_difference"] = {"minus": [str(r.prefix) for r in minus], **paired}
    return write_report(out, "temperatures", data, md, warnings, notes)
