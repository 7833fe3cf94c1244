"""Geometry-optimisation convergence: max force vs step, success against a threshold,
and success rates over many randomly displaced starts.

Inputs read:
- i-PI ``geop`` runs: the forces trajectory (``forces{ev/ang}``) gives
  fmax = max_i |F_i| (eV/A) per saved step;
- ASE optimizer log files (``LBFGS:  12 10:00:00  -14.2  0.0123``: step, energy eV, fmax eV/A).
A run succeeds when fmax drops below ``fmax_ev_a`` within ``max_steps`` steps.

The study (``ipi-nc analyze geop-study``) follows the paper: start from the structure
with every coordinate displaced by N(0, sigma^2) (sigma = 0.5 A), run each ASE
optimizer for at most 1000 steps with conservative and with direct forces, count
successes (fmax 1e-5 eV/A for molecules, 1e-4 eV/A for bulk). Direct-force models show
a force floor (the smallest fmax reached), reported per start.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np

from ipi_ncforces.analysis import plotting
from ipi_ncforces.analysis.readers import AnalysisInputError, RunFiles, read_traj
from ipi_ncforces.analysis.report import markdown_table, write_report
from ipi_ncforces.models.structure_io import read_structure

_ASE_LOG = re.compile(r"^\s*(\w+):\s+(\d+)\s+[\d:]+\s+(-?[\d.eE+-]+)\**\s+([\d.eE+-]+)")


def read_ase_log(path: str | Path) -> dict:
    """Optimizer name, steps, energies (eV) and fmax (eV/A) from an ASE optimizer log file."""
    path = Path(path)
    matches = [m for m in map(_ASE_LOG.match, path.read_text().splitlines()) if m]
    if not matches:
        raise AnalysisInputError(f"{path}: no ASE optimizer log lines ('NAME: step time energy fmax')")
    return {"optimizer": "/".join(sorted({m.group(1) for m in matches})),
            "steps": np.array([int(m.group(2)) for m in matches]),
            "energy_ev": np.array([float(m.group(3)) for m in matches]),
            "fmax_ev_a": np.array([float(m.group(4)) for m in matches])}


def fmax_from_ipi(run: RunFiles) -> dict:
    """fmax (eV/A) per saved step of an i-PI geop run, from its forces trajectory."""
    files = run.trajectory_files("forces")
    if not files:
        raise AnalysisInputError(f"{run.prefix}: no forces trajectory; add <trajectory filename='for' "
                                 f"stride='1'>forces{{ev/ang}}</trajectory> to the geop input")
    traj = read_traj(files[0])
    fmax = np.linalg.norm(traj.data, axis=2).max(axis=1)
    return {"optimizer": "i-PI geop", "steps": traj.steps, "fmax_ev_a": fmax, "warnings": traj.warnings}


def convergence(steps: np.ndarray, fmax: np.ndarray, fmax_ev_a: float, max_steps: int) -> dict:
    """Success (fmax < threshold within max_steps), steps needed, final and smallest fmax.

    A non-finite fmax (the optimizer produced NaN positions) counts as infinite: failure.
    """
    fmax = np.where(np.isfinite(fmax), fmax, np.inf)
    ok = (fmax < fmax_ev_a) & (steps <= max_steps)
    first = int(steps[np.argmax(ok)]) if ok.any() else None
    return {"converged": bool(ok.any()), "steps_to_converge": first, "final_fmax_ev_a": float(fmax[-1]),
            "min_fmax_ev_a": float(fmax.min()), "n_steps": int(steps[-1])}


def run_optimizer(atoms, calculator, optimizer: str, fmax_ev_a: float, max_steps: int) -> np.ndarray:
    """Optimise ``atoms`` in place with an ASE optimizer; returns fmax (eV/A) after each step."""
    import ase.optimize

    if not hasattr(ase.optimize, optimizer):
        raise AnalysisInputError(f"--optimizers: ASE has no optimizer '{optimizer}' (try LBFGS, FIRE, BFGS)")
    atoms.calc = calculator
    opt = getattr(ase.optimize, optimizer)(atoms, logfile=None)
    if "energy" not in calculator.implemented_properties:
        # ASE's Optimizer.log reads the energy even without a log file; a direct-only model
        # has none (FIRE, BFGS and L-BFGS without line search step on forces alone)
        opt.log = lambda *args, **kwargs: None
    trace: list[float] = []
    opt.attach(lambda: trace.append(float(np.linalg.norm(atoms.get_forces(), axis=1).max())), interval=1)
    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # L-BFGS divides by y.s = 0 on a curl field
            opt.run(fmax=fmax_ev_a, steps=max_steps)
    except Exception as exc:  # an exploding structure is a failed optimisation, not a crash
        trace.append(float("inf"))
        atoms.info["optimizer_error"] = f"{type(exc).__name__}: {exc}"
    return np.array(trace)


def geop_study(atoms, make_calculator: Callable[[str], object], optimizers: list[str], force_modes: list[str],
               n_starts: int = 10, sigma_a: float = 0.5, fmax_ev_a: float = 1e-4, max_steps: int = 1000,
               seed: int = 0) -> dict:
    """Success rate of each (optimizer, force mode) over the same ``n_starts`` displaced starts.

    make_calculator(mode) -> ASE calculator (e.g. ``ModelCalculator(model, forces=mode)``).
    Returns {"cases": [...], "traces": {case: [fmax arrays]}} with binomial errors on the rate.
    """
    rng = np.random.default_rng(seed)
    starts = [atoms.positions + rng.normal(0.0, sigma_a, atoms.positions.shape) for _ in range(n_starts)]
    cases, traces = [], {}
    for mode in force_modes:
        calc = make_calculator(mode)
        for name in optimizers:
            key = f"{name}/{mode}"
            outcomes, traces[key] = [], []
            for x in starts:
                trial = atoms.copy()
                trial.positions = x
                fmax = run_optimizer(trial, calc, name, fmax_ev_a, max_steps)
                traces[key].append(fmax)
                outcomes.append(convergence(np.arange(len(fmax)), fmax, fmax_ev_a, max_steps))
            conv = [o for o in outcomes if o["converged"]]
            rate = len(conv) / n_starts
            cases.append({
                "optimizer": name, "forces": mode, "n_starts": n_starts, "success_rate": rate,
                "success_rate_err": float(np.sqrt(rate * (1.0 - rate) / n_starts)),
                "mean_steps_converged": float(np.mean([o["steps_to_converge"] for o in conv])) if conv else None,
                "median_min_fmax_ev_a": float(np.median([o["min_fmax_ev_a"] for o in outcomes])),
                "outcomes": outcomes,
            })
    return {"sigma_a": sigma_a, "fmax_ev_a": fmax_ev_a, "max_steps": max_steps, "seed": seed,
            "cases": cases, "traces": traces}


def plot_traces(traces: dict[str, list[np.ndarray]], fmax_ev_a: float, path: Path) -> Path:
    """fmax vs step (log scale) for every case; one panel per case, one line per start."""
    fig, axes = plotting.figure(len(traces), 1)
    for row, (key, runs) in enumerate(traces.items()):
        ax = axes[row, 0]
        for f in runs:
            ax.semilogy(np.arange(len(f)), np.where(np.isfinite(f), f, np.nan), lw=0.8, alpha=0.6)
        ax.axhline(fmax_ev_a, color="k", ls="--", lw=0.8, label=f"threshold {fmax_ev_a:g} eV/A")
        ax.set_title(key, fontsize="small")
        ax.set_xlabel("step")
        ax.set_ylabel("max |F| (eV/A)")
        ax.legend(fontsize="small")
    return plotting.save(fig, path)


def study_table(study: dict) -> str:
    """Markdown: success rate per optimizer and force mode."""
    rows = [[c["optimizer"], c["forces"], str(c["n_starts"]),
             f"{100 * c['success_rate']:.0f} ± {100 * c['success_rate_err']:.0f}",
             "-" if c["mean_steps_converged"] is None else f"{c['mean_steps_converged']:.0f}",
             f"{c['median_min_fmax_ev_a']:.2g}"] for c in study["cases"]]
    return markdown_table(["optimizer", "forces", "starts", "success (%)", "mean steps (converged)",
                           "median smallest fmax (eV/A)"], rows)


def analyze_outputs(runs: list[str], out: Path, fmax_ev_a: float, max_steps: int) -> dict:
    """geop report for i-PI geop runs and/or ASE optimizer logs; writes geop.json/.md/.png."""
    from ipi_ncforces.analysis.readers import find_run

    results, traces, warnings = [], {}, []
    for item in runs:
        p = Path(item)
        if p.is_file() and p.suffix in (".log", ".txt"):
            rec = read_ase_log(p)
            label = f"{p.stem} ({rec['optimizer']})"
        else:
            run = find_run(item)
            rec = fmax_from_ipi(run)
            warnings += rec.pop("warnings")
            label = run.name
        conv = convergence(rec["steps"], rec["fmax_ev_a"], fmax_ev_a, max_steps)
        results.append({"run": label, "optimizer": rec["optimizer"], **conv})
        traces[label] = [rec["fmax_ev_a"]]
    png = plot_traces(traces, fmax_ev_a, Path(out) / "geop.png")
    rows = [[r["run"], "yes" if r["converged"] else "no", str(r["steps_to_converge"] or "-"), str(r["n_steps"]),
             f"{r['final_fmax_ev_a']:.3g}", f"{r['min_fmax_ev_a']:.3g}"] for r in results]
    md = markdown_table(["run", f"converged (fmax < {fmax_ev_a:g} eV/A)", "steps needed", "steps run",
                         "final fmax (eV/A)", "smallest fmax (eV/A)"], rows)
    data = {"what": "geop", "fmax_ev_a": fmax_ev_a, "max_steps": max_steps, "runs": results, "plots": [png.name]}
    return write_report(out, "geop", data, md, warnings, [f"plot: {png.name}"])


def analyze_study(model_path: str, structure: str, out: Path, n_starts: int, sigma_a: float,
                  optimizers: list[str], force_modes: list[str], fmax_ev_a: float, max_steps: int,
                  seed: int, remove_net_force: bool = True) -> dict:
    """geop-study with a model file through ``ipi_ncforces.models.ase_calculator.ModelCalculator``
    (our .pt files) or metatomic-ase's ``MetatomicCalculator`` (metatomic files). Direct
    forces have their per-structure mean subtracted unless ``remove_net_force`` is False
    (our .pt files only: metatomic-ase always subtracts it)."""
    from ipi_ncforces.models.ase_calculator import ModelCalculator
    from ipi_ncforces.models.io import ModelFileError

    try:
        atoms = read_structure(structure)
    except Exception as exc:
        raise AnalysisInputError(f"--structure {structure}: cannot read ({exc})") from None

    def make(mode: str):
        from ipi_ncforces.models.loader import METATOMIC, model_format

        try:
            if model_format(model_path) == METATOMIC:
                if not remove_net_force and mode == "direct":
                    raise AnalysisInputError(f"--model {model_path}: metatomic-ase always subtracts the mean direct "
                                             "force; raw direct heads (--no-remove-net-force) need an ipi-ncforces .pt model")
                # metatomic files: metatomic-ase's calculator (direct mode: non_conservative_force,
                # mean force removed by the calculator, as i-PI's PES does)
                from metatomic_ase import MetatomicCalculator

                return MetatomicCalculator(str(model_path), non_conservative=(mode == "direct"))
            return ModelCalculator.from_file(model_path, forces=mode, remove_net_force=remove_net_force)
        except (ModelFileError, ValueError, OSError, RuntimeError) as exc:
            raise AnalysisInputError(f"--model {model_path}: {str(exc).splitlines()[0]}") from None

    study = geop_study(atoms, make, optimizers, force_modes, n_starts, sigma_a, fmax_ev_a, max_steps, seed)
    return write_study(study, out, {"model": str(model_path), "structure": str(structure)})


def write_study(study: dict, out: Path, meta: dict | None = None) -> dict:
    """Write geop-study.json/.md/.png for a :func:`geop_study` result."""
    png = plot_traces(study["traces"], study["fmax_ev_a"], Path(out) / "geop-study.png")
    md = study_table(study)
    data = {"what": "geop-study", **(meta or {}), **{k: v for k, v in study.items() if k != "traces"},
            "plots": [png.name]}
    notes = [f"starts: every coordinate displaced by N(0, {study['sigma_a']:g}^2) A (seed {study['seed']}); "
             f"success = fmax < {study['fmax_ev_a']:g} eV/A within {study['max_steps']} steps; "
             "error = binomial standard error.", f"plot: {png.name}"]
    return write_report(out, "geop-study", data, md, [], notes)
