"""``ipi-nc audit MODEL``: the paper's battery of direct-force artifacts for one model.

Stages (each writes OUT/stages/NAME.json; a rerun of the same command skips finished
stages and finished MD runs, and continues an interrupted MD run from its checkpoint):

- ``netforce``: the raw direct head's net force |sum_i F_i| (eV/A per structure, mean
  and max over the frames of the audit structure), an artifact of its own: the MD runs
  serve direct forces with it removed (the default, as i-PI's metatomic PES does) unless
  ``--no-remove-net-force``;
- ``jacobian``: asymmetry lambda of each force head and the closed-path works (meV);
- ``cost``: F = conservative / direct evaluation time, timed side by side;
- ``nve``: drift (meV/atom/ps) and heating (K/ps) of conservative, direct and MTS runs
  (M in the preset, inner step 0.5 fs), and the largest M that stays flat;
- ``nvt``: <T>, <T_H>, <T_O> - target (K; sigma from the spread of --replicas seeded runs,
  or one run's block average) for SVR tau 10 fs (C, NC,
  MTS) and Langevin tau 10 / 100 / 1000 fs (NC) plus Langevin 100 fs (C); the NC - C
  difference at the same thermostat, with its sigma;
- ``diffusion``: D of O (1e-5 cm^2/s) per NVT run and its ratio to the conservative run
  with the same thermostat, with the Yeh-Hummer finite-size term;
- ``rdf``: O-O g(r) of the SVR runs, largest |g_NC - g_C|;
- ``geop``: L-BFGS and FIRE success rates (ASE) with conservative and direct forces, for
  a gas-phase water molecule and the liquid box, from starts displaced by sigma = 0.5 A
  (the paper's protocol; counts and step limits per preset);
- a recommendation line from the NVE stage and F.

Report: OUT/audit.md, OUT/audit.html (plots inline), OUT/audit.json, with the paper's PET
numbers (arXiv:2412.11569, ../shared/docs/paper-notes.md) beside ours.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ipi_ncforces.benchmarks.common import REFERENCE, model_file_or_reference
from ipi_ncforces.cli import absolute_paths
from ipi_ncforces.inputs import WATER16_XYZ, WATER64_STARTS_XYZ, make
from ipi_ncforces.ipi_driver import launch
from ipi_ncforces.models import SHIPPED_MODELS_DIR

PROG = "ipi-nc audit"


@dataclass(frozen=True)
class Preset:
    """Lengths of one audit. Times are simulated ps; the inner time step is 0.5 fs."""

    name: str
    structure: Path  # frame k of a multi-frame file starts NVT replica k; frame 0 everything else
    nve_ps: float
    nvt_ps: float
    skip_ps: float
    mts_ms: tuple[int, ...]
    geop_starts: int
    geop_max_steps: int
    cost_repeats: int
    sockets: str = "unix"  # "ffdirect": the model runs inside i-PI (one process per run)
    replicas: int = 1  # NVT runs per case (seeds seed, seed + 1, ...): sigma from their spread
    langevin_ps: float | None = None  # NVT runs with a Langevin (local) thermostat; None: nvt_ps
    nvt_cases: tuple[str, ...] | None = None  # names from NVT_CASES to run; None: all the model can run
    temperature_k: float = 300.0  # NVT target and NVE start (thermal velocities)

    def nvt_length_ps(self, thermostat: str) -> float:
        """Length of one NVT run (ps). A local thermostat couples every atom, so T_H and T_O
        converge in fewer ps than under SVR (README, equipartition baseline)."""
        return self.langevin_ps if thermostat == "langevin" and self.langevin_ps is not None else self.nvt_ps

    def stage_lengths(self, stage: str) -> dict:
        """The lengths a stage's result depends on: a cached stage with other lengths is redone
        (its MD runs are extended from their checkpoints, never shortened)."""
        if stage == "nve":
            return {"nve_ps": self.nve_ps, "mts_ms": list(self.mts_ms)}
        if stage == "geop":
            return {"geop_starts": self.geop_starts, "geop_max_steps": self.geop_max_steps}
        if stage == "nvt":
            lengths = {"nvt_ps": self.nvt_ps, "langevin_ps": self.nvt_length_ps("langevin"), "skip_ps": self.skip_ps,
                       "replicas": self.replicas}
            return lengths if self.nvt_cases is None else {**lengths, "cases": list(self.nvt_cases)}
        return {}


PRESETS = {
    "quick": Preset("quick", WATER16_XYZ, nve_ps=0.1, nvt_ps=0.1, skip_ps=0.02, mts_ms=(2, 4), geop_starts=2,
                    geop_max_steps=60, cost_repeats=3, sockets="ffdirect"),
    # 16 x 11 ps SVR and 16 x 3.5 ps Langevin of production: sigma <= 1.5 K on T_H and T_O for a
    # conservative force field (README, "Equipartition baseline" and the reference audit)
    "default": Preset("default", WATER64_STARTS_XYZ, nve_ps=2.0, nvt_ps=11.5, skip_ps=0.5, mts_ms=(2, 4, 8), geop_starts=5,
                      geop_max_steps=1000, cost_repeats=10, replicas=16, langevin_ps=4.0),
    "paper": Preset("paper", WATER64_STARTS_XYZ, nve_ps=20.0, nvt_ps=20.0, skip_ps=2.0, mts_ms=(2, 4, 8, 16), geop_starts=20,
                    geop_max_steps=1000, cost_repeats=20, replicas=16),
}

#: The paper's PET numbers (arXiv:2412.11569; ../shared/docs/paper-notes.md).
PAPER = {
    "lambda_direct": 0.004,
    "nve_heating_direct_k_ps": 7.0,
    "F": 2.3,
    "nvt": {  # (forces, thermostat, tau fs) -> (dT, dT_H, dT_O) in K
        ("direct", "langevin", 1000): (12.8, 11.2, 16.2), ("direct", "langevin", 100): (1.4, 1.3, 1.6),
        ("direct", "langevin", 10): (0.1, 0.0, 0.2), ("conservative", "langevin", 100): (0.1, 0.0, 0.3),
        ("conservative", "svr", 10): (0.1, -0.4, 1.0), ("direct", "svr", 10): (0.3, -4.4, 9.9),
        ("mts", "svr", 10): (0.0, -0.1, 0.1),
    },
    "geop_success_pct": {  # (forces, system) -> % with L-BFGS
        ("direct", "gas"): 75, ("conservative", "gas"): 83, ("direct", "liquid"): 52, ("conservative", "liquid"): 58,
    },
}

NVT_CASES = (  # (run name, forces, thermostat, tau fs)
    ("svr10-cons", "conservative", "svr", 10.0), ("svr10-direct", "direct", "svr", 10.0),
    ("svr10-mts", "mts", "svr", 10.0), ("lang100-cons", "conservative", "langevin", 100.0),
    ("lang10-direct", "direct", "langevin", 10.0), ("lang100-direct", "direct", "langevin", 100.0),
    ("lang1000-direct", "direct", "langevin", 1000.0),
)
WATER_VISCOSITY_MPAS = 0.85  # Yeh-Hummer term (TIP4P-like water at 300 K)
RESOLVED_SIGMA_K = 1.5  # sigma of T_H / T_O that resolves the paper's PET-NC split (-4.4 / +9.9 K)
GEOP_SYSTEMS = ("gas", "liquid")  # keys of the geop stage's result (beside its "lengths")
IDENTITY_FILE = "audit-settings.json"  # OUT/IDENTITY_FILE: what the folder's stages and runs were made with


class Progress:
    """Units of work done / total with elapsed time and a linear ETA."""

    def __init__(self, total_units: float):
        self.total = total_units
        self.done = 0.0
        self.t0 = time.monotonic()

    def step(self, units: float, what: str) -> None:
        self.done += units
        elapsed = time.monotonic() - self.t0
        eta = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        print(f"[audit {100 * self.done / self.total:5.1f}%] {what} (elapsed {elapsed:.0f} s, ETA {eta:.0f} s)",
              flush=True)


# ----------------------------------------------------------------------------- MD runs


def _done_steps(workdir: Path) -> int | None:
    """Steps of a finished audit run (its AUDIT_DONE marker; older markers hold no count: -1);
    None for a run not finished."""
    marker = workdir / "AUDIT_DONE"
    if not marker.is_file():
        return None
    text = marker.read_text().split()
    return int(text[0]) if text and text[0].isdigit() else -1


def _md_runs(ctx, runs: list[tuple[str, make.Variant]]) -> dict[str, Path]:
    """`ipi-nc run` of each (name, variant) in OUT/runs/NAME (its output in NAME/audit-run.log),
    ``ctx.jobs`` at a time (:func:`ipi_ncforces.ipi_driver.launch.run_jobs`): a run finished
    with the variant's step count is skipped; one with a checkpoint is continued (--resume,
    to the variant's step count: a finished run asked for more steps is extended); on a
    failure or Ctrl-C the other runs are stopped (they keep their checkpoints). RuntimeError
    naming the run that failed, or a run that is longer than asked (it is never cut)."""
    workdirs = {name: ctx.out / "runs" / name for name, _ in runs}
    variants = dict(runs)
    for name, v in runs:
        done = _done_steps(workdirs[name])
        if done is not None and done > v.steps:
            raise RuntimeError(f"run {workdirs[name]} has {done} steps, more than the {v.steps} asked for: "
                               "use the lengths it was made with, or another --out")

    def job(name: str, v: make.Variant) -> launch.Job:
        workdir = workdirs[name]

        def start() -> launch.Process:
            xml = make.write(make.with_changes(v, socket_address=f"audit{os.getpid()}-{name}"),
                             ctx.out / "inputs" / f"{name}.xml")
            cmd = [sys.executable, "-m", "ipi_ncforces.cli", "run", str(xml), "--model", str(ctx.model),
                   "--workdir", str(workdir), "--quiet"]
            if not ctx.remove_net_force:
                cmd.append("--no-remove-net-force")
            if (workdir / "RESTART").is_file():
                cmd += ["--resume", "--steps", str(v.steps)]
                (workdir / "AUDIT_DONE").unlink(missing_ok=True)
            elif workdir.exists():
                shutil.rmtree(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            return launch.start_process(cmd, workdir, "audit-run.log", ctx.threads, f"MD {name}")

        return launch.Job(f"MD {name}", start)

    def done(job: launch.Job) -> None:
        name = job.name.removeprefix("MD ")
        v = variants[name]
        (workdirs[name] / "AUDIT_DONE").write_text(f"{v.steps}\n")
        ctx.progress.step(v.steps * v.outer_dt_fs / 1000.0, job.name)

    pending = [job(name, v) for name, v in runs if _done_steps(workdirs[name]) != v.steps]
    launch.run_jobs(pending, ctx.jobs, "audit", on_done=done, log=lambda text: None, poll_s=0.2)
    return workdirs


def _nvt_cases(has_direct: bool, selected: tuple[str, ...] | None = None) -> tuple:
    """NVT_CASES the model can run (all for an M model, the conservative ones for energy only),
    restricted to the names in ``selected`` unless it is None."""
    cases = NVT_CASES if has_direct else tuple(c for c in NVT_CASES if c[1] == "conservative")
    return cases if selected is None else tuple(c for c in cases if c[0] in selected)


def _starts(ctx, n: int) -> list[Path]:
    """Start structure of replica 0..n-1 (frames of the preset's structure file, see
    :func:`ipi_ncforces.models.structure_io.replica_starts`)."""
    from ipi_ncforces.models.structure_io import replica_starts

    return replica_starts(ctx.preset.structure, n, ctx.out / "inputs" / "starts")


def _variant(name: str, preset: Preset, forces: str, total_ps: float, seed: int, structure: Path,
             **changes) -> make.Variant:
    v = make.Variant(name=name, forces=forces, structure=str(Path(structure).resolve()), seed=seed, steps=1, sockets=preset.sockets,
                     temperature_k=preset.temperature_k, properties_fs=2.0, positions_fs=10.0, velocities_fs=10.0, forces_fs=1000.0,
                     checkpoint_fs=100.0, **changes)
    return make.with_changes(v, steps=make.steps_for_time(total_ps, v))


# ----------------------------------------------------------------------------- stages


def stage_netforce(ctx) -> dict:
    """The raw direct head's net force on every frame of the audit structure (eV/A)."""
    import torch

    from ipi_ncforces.models.base import Batch
    from ipi_ncforces.models.loader import NATIVE, load_backend, model_format
    from ipi_ncforces.models.structure_io import read_structure

    torch.set_num_threads(ctx.threads)
    dtype = torch.float64 if model_format(ctx.model) == NATIVE else None
    backend = load_backend(ctx.model, dtype=dtype, neighbor_skin_ang=0.0)
    frames = read_structure(ctx.preset.structure, index=":")
    net = np.concatenate([
        backend.evaluate(Batch.from_ase([atoms], dtype=backend.dtype).to(device=backend.device), conservative=False,
                         direct=True).direct_forces.detach().to("cpu", torch.float64).numpy().sum(axis=1)
        for atoms in frames
    ])  # (frames, 3) eV/A
    norms = np.linalg.norm(net, axis=1)
    return {"frames": len(frames), "n_atoms": len(frames[0]), "net_force_mean_ev_ang": float(norms.mean()),
            "net_force_max_ev_ang": float(norms.max()), "net_force_mean_per_atom_ev_ang": float(norms.mean()) / len(frames[0]),
            "removed_in_md": ctx.remove_net_force}


def stage_jacobian(ctx) -> dict:
    from ipi_ncforces.analysis.jacobian import jacobian_of
    from ipi_ncforces.models.backend import NativeBackend
    from ipi_ncforces.models.loader import NATIVE, load_backend, model_format
    from ipi_ncforces.models.structure_io import read_structure

    import torch

    dtype = torch.float64 if model_format(ctx.model) == NATIVE else None
    backend = load_backend(ctx.model, dtype=dtype, neighbor_skin_ang=0.0)
    model = backend.model if isinstance(backend, NativeBackend) else backend
    heads = jacobian_of(model, read_structure(ctx.preset.structure))
    return {head: {"lambda": h["lambda"], "work_mev": h["work_mev"]} for head, h in heads.items()}


def stage_cost(ctx) -> dict:
    """F on the audit structure: both modes through the driver's ForceEvaluator, interleaved."""
    import torch

    from ipi_ncforces.benchmarks.common import interleaved, ratio_stats, stats_ms
    from ipi_ncforces.benchmarks.cost import ipi_request
    from ipi_ncforces.ipi_driver.evaluator import ForceEvaluator
    from ipi_ncforces.models.loader import NATIVE, load_backend, model_format
    from ipi_ncforces.models.structure_io import read_structure

    torch.set_num_threads(ctx.threads)
    atoms = read_structure(ctx.preset.structure)
    backend = load_backend(ctx.model)  # the dtype the MD runs use (float64 for our files, its own for metatomic)
    cells, positions = ipi_request(atoms)
    evaluators = {mode: ForceEvaluator(backend, atoms.numbers, mode) for mode in ("direct", "conservative")}
    samples = interleaved({m: (lambda e=e: e(cells, positions)) for m, e in evaluators.items()}, "cpu",
                          ctx.preset.cost_repeats, warmup=2)
    return {"n_atoms": len(atoms), "threads": ctx.threads, "F": ratio_stats(samples["conservative"], samples["direct"])["median"],
            "direct_ms": stats_ms(samples["direct"])["median_ms"],
            "conservative_ms": stats_ms(samples["conservative"])["median_ms"]}


def stage_nve(ctx) -> dict:
    from ipi_ncforces.analysis.drift import drift_of, plot_drift
    from ipi_ncforces.analysis.readers import find_run

    cases = [("nve-cons", "conservative", {})]
    if ctx.has_direct:
        cases += [("nve-direct", "direct", {})] + [(f"nve-mts{m}", "mts", {"mts_m": m}) for m in ctx.preset.mts_ms]
    start = _starts(ctx, 1)[0]  # frame 0 of the preset's structure
    variants = {name: _variant(f"audit-{name}", ctx.preset, forces, ctx.preset.nve_ps, ctx.seed, start, **extra)
                for name, forces, extra in cases}
    workdirs = _md_runs(ctx, list(variants.items()))
    results, drifts = {}, []
    for name, v in variants.items():
        d = drift_of(find_run(workdirs[name]), skip_ps=0.0)
        results[name] = {k: d.get(k) for k in ("drift_mev_atom_ps", "drift_err_mev_atom_ps", "heating_k_ps",
                                               "heating_err_k_ps", "duration_ps")}
        results[name]["outer_step_fs"] = v.outer_dt_fs
        drifts.append(d)
    floor = abs(results["nve-cons"]["drift_mev_atom_ps"]) + 3.0 * results["nve-cons"]["drift_err_mev_atom_ps"]
    flat = [m for m in ctx.preset.mts_ms if f"nve-mts{m}" in results
            and abs(results[f"nve-mts{m}"]["drift_mev_atom_ps"]) <= floor + 3.0 * results[f"nve-mts{m}"]["drift_err_mev_atom_ps"]]
    plot_drift(drifts, ctx.out / "plots" / "nve-drift.png")
    return {"runs": results, "flat_floor_mev_atom_ps": floor, "largest_flat_m": max(flat) if flat else None}


def stage_nvt(ctx) -> dict:
    from ipi_ncforces.analysis.diffusion import diffusion_of
    from ipi_ncforces.analysis import rdf
    from ipi_ncforces.analysis.readers import find_run
    from ipi_ncforces.analysis.temperatures import paired_difference, replica_summary, temperatures_of

    out = {"temperatures": {}, "diffusion": {}, "replicas": ctx.preset.replicas,
           "resolved_sigma_k": RESOLVED_SIGMA_K}  # the sigma that ps_total_needed is for
    rdfs = {}  # SVR runs: O-O g(r) of replica 0 (plotted, not in the JSON)
    per_case = {}  # run name -> temperatures_of per replica
    n_rep = ctx.preset.replicas
    starts = _starts(ctx, n_rep)  # replica k of every case starts from frame k: paired NC - C differences
    variants = {(name, k): _variant(f"audit-{name}-r{k}", ctx.preset, forces, ctx.preset.nvt_length_ps(thermostat),
                                    ctx.seed + k, starts[k], ensemble="nvt", thermostat=thermostat, tau_fs=tau, mts_m=8)
                for name, forces, thermostat, tau in _nvt_cases(ctx.has_direct, ctx.preset.nvt_cases) for k in range(n_rep)}
    workdirs = _md_runs(ctx, [(f"{name}-r{k}", v) for (name, k), v in variants.items()])
    for name, forces, thermostat, tau in _nvt_cases(ctx.has_direct, ctx.preset.nvt_cases):
        runs = [find_run(workdirs[f"{name}-r{k}"]) for k in range(n_rep)]
        target = variants[(name, 0)].temperature_k
        per_run = [temperatures_of(run, skip_ps=ctx.preset.skip_ps) for run in runs]
        per_case[name] = per_run
        if n_rep > 1:  # sigma from the spread between replicas (block sigma as a floor)
            est = replica_summary(per_run, ["T", "T_H", "T_O"], target_err_k=RESOLVED_SIGMA_K)["estimates"]
            out["temperatures"][name] = {label: {"delta_k": e["mean_k"] - target, "err_k": e["stderr_k"],
                                                 "spread_over_block": e["ratio"], "n_eff_per_run": e["n_eff_replicas"],
                                                 "ps_total_needed": e.get("ps_total_needed")}
                                         for label, e in est.items()}
        else:
            t = per_run[0]["temperatures"]
            out["temperatures"][name] = {label: {"delta_k": t[label]["mean_k"] - target, "err_k": t[label]["err_k"]}
                                         for label in ("T", "T_H", "T_O") if label in t}
        try:
            d = [diffusion_of(run, "O", skip_ps=ctx.preset.skip_ps, temperature_k=target,
                              viscosity_mpas=WATER_VISCOSITY_MPAS) for run in runs]
            values = np.array([x["d_1e5_cm2_s"] for x in d])
            err = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else d[0]["d_err_1e5_cm2_s"]
            inf = [x.get("d_inf_1e5_cm2_s") for x in d]
            out["diffusion"][name] = {"d_1e5_cm2_s": float(values.mean()), "d_err_1e5_cm2_s": err,
                                      "d_inf_1e5_cm2_s": float(np.mean(inf)) if None not in inf else None}
        except Exception as exc:  # too short for an MSD (quick preset)
            out["diffusion"][name] = {"error": str(exc).splitlines()[0]}
        if thermostat == "svr":
            rdfs[name] = rdf.rdf_of(runs[0], [("O", "O")])

    diffs = {}
    for direct, cons in (("svr10-direct", "svr10-cons"), ("svr10-mts", "svr10-cons"), ("lang100-direct", "lang100-cons")):
        if direct not in out["temperatures"] or cons not in out["temperatures"]:
            continue
        if n_rep > 1:  # replica k of both cases started from the same frame: paired
            diffs[f"{direct} - {cons}"] = paired_difference(per_case[direct], per_case[cons], ["T", "T_H", "T_O"])
            continue
        diffs[f"{direct} - {cons}"] = {
            label: {"delta_k": out["temperatures"][direct][label]["delta_k"] - out["temperatures"][cons][label]["delta_k"],
                    "err_k": float(np.hypot(out["temperatures"][direct][label]["err_k"], out["temperatures"][cons][label]["err_k"]))}
            for label in out["temperatures"][cons] if label in out["temperatures"][direct]
        }
    out["differences"] = diffs
    ratios = {}
    for direct, cons in (("svr10-direct", "svr10-cons"), ("lang100-direct", "lang100-cons"), ("lang10-direct", "lang100-cons")):
        a, b = out["diffusion"].get(direct, {}), out["diffusion"].get(cons, {})
        if "d_1e5_cm2_s" in a and "d_1e5_cm2_s" in b and b["d_1e5_cm2_s"] > 0:
            ratio = a["d_1e5_cm2_s"] / b["d_1e5_cm2_s"]
            err = ratio * float(np.hypot(a["d_err_1e5_cm2_s"] / a["d_1e5_cm2_s"], b["d_err_1e5_cm2_s"] / b["d_1e5_cm2_s"]))
            ratios[f"{direct} / {cons}"] = {"ratio": ratio, "err": err}
    out["diffusion_ratios"] = ratios
    if "svr10-direct" in rdfs and "svr10-cons" in rdfs:
        (r, g_nc), (_, g_c) = rdfs["svr10-direct"]["series"]["O-O"], rdfs["svr10-cons"]["series"]["O-O"]
        i = int(np.argmax(np.abs(np.asarray(g_nc) - np.asarray(g_c))))
        out["rdf_max_abs_diff"] = {"r_a": float(r[i]), "delta_g": float(np.asarray(g_nc)[i] - np.asarray(g_c)[i])}
        rdf.plot(list(rdfs.values()), ctx.out / "plots" / "rdf-oo.png")
    return out


def stage_geop(ctx) -> dict:
    from ase.build import molecule

    from ipi_ncforces.analysis.geop import analyze_study
    from ipi_ncforces.models.structure_io import read_structure

    systems = dict(zip(GEOP_SYSTEMS, (molecule("H2O"), read_structure(ctx.preset.structure))))
    out = {}
    for system, atoms in systems.items():
        if system == "gas":
            atoms.cell = [20.0, 20.0, 20.0]
            atoms.pbc = True
            atoms.center()
        path = ctx.out / "inputs" / f"geop-{system}.extxyz"
        path.parent.mkdir(parents=True, exist_ok=True)
        atoms.write(path, format="extxyz")
        fmax = 1e-5 if system == "gas" else 1e-4  # the paper's thresholds (eV/A)
        study = analyze_study(str(ctx.model), str(path), ctx.out / "geop" / system, ctx.preset.geop_starts, 0.5,
                              ["LBFGS", "FIRE"], ["conservative", "direct"] if ctx.has_direct else ["conservative"],
                              fmax, ctx.preset.geop_max_steps, ctx.seed, ctx.remove_net_force)
        out[system] = [{k: c[k] for k in ("optimizer", "forces", "n_starts", "success_rate", "success_rate_err")}
                       for c in study["cases"]]
        ctx.progress.step(1.0, f"geometry optimisation, {system}")
    return out


STAGES = (("netforce", stage_netforce), ("jacobian", stage_jacobian), ("cost", stage_cost), ("nve", stage_nve), ("nvt", stage_nvt),
          ("geop", stage_geop))


# ----------------------------------------------------------------------------- report


def _pm(value, err, digits: int = 2) -> str:
    if value is None:
        return "-"
    if err is None or not np.isfinite(err):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {err:.{digits}f}"


def equipartition_check(temperatures: dict) -> dict:
    """Per species label of one NVT case ({'T': {'delta_k', 'err_k'}, ...}): whether the
    deviation is consistent with zero (|delta| < 2 sigma) and whether sigma resolves it
    (sigma <= RESOLVED_SIGMA_K)."""
    return {label: {"within_2_sigma": bool(abs(t["delta_k"]) < 2.0 * t["err_k"]),
                    "resolved": bool(t["err_k"] <= RESOLVED_SIGMA_K)}
            for label, t in temperatures.items() if label in ("T_H", "T_O")}


def _equipartition_text(temperatures: dict) -> str:
    check = equipartition_check(temperatures)
    return "; ".join(f"{label} {'yes' if c['within_2_sigma'] else 'NO'}" + ("" if c["resolved"] else f" (σ > {RESOLVED_SIGMA_K:g} K)")
                     for label, c in check.items()) or "-"


def recommendation(results: dict) -> str:
    nve, cost = results.get("nve"), results.get("cost")
    if nve and "nve-direct" not in nve["runs"]:
        temps = results.get("nvt", {}).get("temperatures", {})
        checks = [c for t in temps.values() for c in equipartition_check(t).values()]
        verdict = (f"; NVT T_H and T_O of all {len(temps)} cases within 2 sigma of equipartition: "
                   f"{'yes' if all(c['within_2_sigma'] for c in checks) else 'NO'}, sigma <= {RESOLVED_SIGMA_K:g} K: "
                   f"{'yes' if all(c['resolved'] for c in checks) else 'no'}") if checks else ""
        return ("energy-only model: a baseline audit (conservative forces only); every deviation above is the "
                "set-up's floor, not a direct-force artifact" + verdict)
    if not nve or not cost:
        return "no recommendation (NVE or cost stage missing)"
    m = nve["largest_flat_m"]
    if m is None:
        return "no MTS M tried stays flat: use conservative forces"
    run = nve["runs"][f"nve-mts{m}"]
    rel = 1.0 + (cost["F"] - 1.0) / m
    return (f"MTS M={m} at {run['outer_step_fs']:g} fs: drift {_pm(run['drift_mev_atom_ps'], run['drift_err_mev_atom_ps'], 4)} "
            f"meV/atom/ps, cost {rel:.2f}x of direct ({rel / cost['F']:.2f}x of conservative; cost model 1 + (F-1)/M, F = {cost['F']:.2f})")


def sections(results: dict) -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    """(title, header, rows, notes) of each report section."""
    out = []
    if "jacobian" in results:
        rows = [[head, f"{h['lambda']:.3g}", *[f"{h['work_mev'].get(p, float('nan')):.3g}" for p in ("rotation", "stretch_loop")],
                 f"{PAPER['lambda_direct']}" if head == "direct" else "0"] for head, h in results["jacobian"].items()]
        out.append(("Jacobian asymmetry", ["forces", "lambda", "W rotation (meV)", "W stretch loop (meV)", "paper PET lambda"],
                    rows, ["lambda = ||J_anti||_F / ||J||_F (Eq. 7); W = closed-path work (0 if conservative)."]))
    if "netforce" in results:
        n = results["netforce"]
        out.append(("Net force of the direct head", ["frames", "atoms", "mean |ΣF| (eV/A)", "max |ΣF| (eV/A)",
                                                     "mean |ΣF| / N (eV/A)", "removed in the MD runs"],
                    [[str(n["frames"]), str(n["n_atoms"]), f"{n['net_force_mean_ev_ang']:.3g}",
                      f"{n['net_force_max_ev_ang']:.3g}", f"{n['net_force_mean_per_atom_ev_ang']:.3g}",
                      "yes" if n["removed_in_md"] else "no (--no-remove-net-force)"]],
                    ["The raw direct head's forces summed over the atoms of each frame of the audit structure: zero "
                     "for any conservative force. Left in, it accelerates the centre of mass; the MD runs subtract "
                     "the per-structure mean of the direct forces (default, as i-PI's metatomic PES does) unless "
                     "the audit runs with --no-remove-net-force."]))
    if "cost" in results:
        c = results["cost"]
        out.append(("Cost of conservation", ["atoms", "direct (ms)", "conservative (ms)", "F", "paper PET F"],
                    [[str(c["n_atoms"]), f"{c['direct_ms']:.2f}", f"{c['conservative_ms']:.2f}", f"{c['F']:.2f}", str(PAPER["F"])]],
                    ["Timed side by side, one process, this machine."]))
    if "nve" in results:
        n = results["nve"]
        rows = [[name, f"{r['outer_step_fs']:g}", _pm(r["drift_mev_atom_ps"], r["drift_err_mev_atom_ps"], 4),
                 _pm(r["heating_k_ps"], r["heating_err_k_ps"])] for name, r in n["runs"].items()]
        out.append(("NVE", ["run", "outer step (fs)", "drift (meV/atom/ps)", "heating (K/ps)"], rows,
                    [f"Paper: PET-NC heats at {PAPER['nve_heating_direct_k_ps']:g} K/ps; PET-C and MTS M=8 stay flat."]
                    + ([f"Largest flat M: {n['largest_flat_m']} (|drift| <= |conservative drift| + 3 sigma of both)."]
                       if "nve-direct" in n["runs"] else [])))
    if "nvt" in results:
        t = results["nvt"]
        rows = []
        for name, forces, thermostat, tau in NVT_CASES:
            if name not in t["temperatures"]:
                continue
            ours = t["temperatures"][name]
            paper = PAPER["nvt"].get((forces, thermostat, int(tau)))
            rows.append([name, *[_pm(ours.get(k, {}).get("delta_k"), ours.get(k, {}).get("err_k"), 1) for k in ("T", "T_H", "T_O")],
                         " / ".join(f"{x:+.1f}" for x in paper) if paper else "-",
                         _equipartition_text(ours) if forces == "conservative" else "-"])
        lengths = t.get("lengths")
        out.append(("NVT temperatures (deviation from the target, K)",
                    ["run", "ΔT", "ΔT_H", "ΔT_O", "paper PET ΔT / ΔT_H / ΔT_O", "conservative: |Δ| < 2σ"], rows,
                    [f"sigma: spread of {t['replicas']} replicas (seeds seed..seed+{t['replicas'] - 1}), the block sigma as a floor"
                     if t.get("replicas", 1) > 1 else
                     "sigma: block averaging of ONE run, 3-5x too small for T_H/T_O (README, replica error bars); use --replicas 4 or more"]
                    + ([f"Runs of {lengths['nvt_ps']:g} ps (Langevin {lengths['langevin_ps']:g} ps), the first "
                        f"{lengths['skip_ps']:g} ps discarded. A conservative force field must be at equipartition: "
                        f"|Δ| < 2σ, with σ ≤ {RESOLVED_SIGMA_K:g} K to resolve a split of the paper's size."] if lengths else [])))
        needed = {name: [c.get(k, {}).get("ps_total_needed", c.get(k, {}).get("ps_total_needed_for_1p5k"))  # older stage files
                         for k in ("T_H", "T_O")] for name, c in t["temperatures"].items()}
        rows = [[name, *[f"{c[k]['n_eff_per_run']:.0f}" for k in ("T_H", "T_O")], *[f"{x:.0f}" for x in needed[name]]]
                for name, c in t["temperatures"].items() if None not in needed[name]]
        if rows:
            out.append(("Sampling (from the replica spread)", ["run", "independent samples per run: T_H", "T_O",
                                                                 f"ps of production for σ ≤ {RESOLVED_SIGMA_K:g} K: T_H", "T_O"], rows,
                        ["Independent samples: variance of the instantaneous temperature / variance of one run's mean. "
                         "Production summed over replicas with independent starts; set it with --replicas, --nvt-ps, "
                         "--langevin-ps (a rerun with longer runs extends them)."]))
        rows = [[pair, *[_pm(d.get(k, {}).get("delta_k"), d.get(k, {}).get("err_k"), 1) for k in ("T", "T_H", "T_O")]]
                for pair, d in t["differences"].items()]
        if rows:
            out.append(("Artifact: same thermostat, direct or MTS minus conservative (K)", ["runs", "ΔT", "ΔT_H", "ΔT_O"], rows,
                        ["Replica k of both runs starts from the same frame: σ from the spread of the paired differences."
                         if t.get("replicas", 1) > 1 else "One run each: σ from block averaging (too small)."]))
        rows = [[name, _pm(d.get("d_1e5_cm2_s"), d.get("d_err_1e5_cm2_s")), _pm(d.get("d_inf_1e5_cm2_s"), None)]
                for name, d in t["diffusion"].items()]
        rows += [[pair, _pm(r["ratio"], r["err"]), "ratio"] for pair, r in t["diffusion_ratios"].items()]
        notes = [f"Yeh-Hummer term with viscosity {WATER_VISCOSITY_MPAS} mPa s. Paper: Langevin tau 100 fs slows "
                 "diffusion ~1.5x, tau 10 fs ~5x."]
        notes += [f"{name}: no D ({d['error']})" for name, d in t["diffusion"].items() if "error" in d]
        if "rdf_max_abs_diff" in t:
            d = t["rdf_max_abs_diff"]
            notes.append(f"O-O g(r), SVR direct - conservative: largest |Δg| = {d['delta_g']:+.3f} at r = {d['r_a']:.2f} A.")
        out.append(("Diffusion of O (1e-5 cm^2/s) and g(r)", ["run", "D", "D with Yeh-Hummer"], rows, notes))
    if "geop" in results:
        rows = []
        for system in (s for s in GEOP_SYSTEMS if s in results["geop"]):
            for c in results["geop"][system]:
                paper = PAPER["geop_success_pct"].get((c["forces"], system)) if c["optimizer"] == "LBFGS" else None
                rows.append([system, c["optimizer"], c["forces"], f"{100 * c['success_rate']:.0f} ± {100 * c['success_rate_err']:.0f}",
                             str(c["n_starts"]), f"{paper}" if paper is not None else "-"])
        out.append(("Geometry optimisation success (%)", ["system", "optimizer", "forces", "success", "starts", "paper PET (L-BFGS)"],
                    rows, ["Starts displaced by sigma = 0.5 A; fmax 1e-5 eV/A (gas), 1e-4 eV/A (liquid)."]))
    return out


def write_report(out: Path, meta: dict, results: dict) -> dict[str, Path]:
    from ipi_ncforces.analysis.report import markdown_table

    recommendation_line = recommendation(results)
    md = [f"# Audit of {meta['model']}", "", f"Preset `{meta['preset']}`, structure {meta['structure']}, {meta['temperature_k']:g} K, seed {meta['seed']}, "
          f"{meta['wall_s']:.0f} s wall.", "", f"**Recommendation:** {recommendation_line}", ""]
    html = [f"<html><head><meta charset='utf-8'><title>Audit of {meta['model']}</title></head><body>",
            f"<h1>Audit of {meta['model']}</h1><p>Preset <code>{meta['preset']}</code>, structure {meta['structure']}, "
            f"{meta['temperature_k']:g} K, seed {meta['seed']}, {meta['wall_s']:.0f} s wall.</p><p><b>Recommendation:</b> {recommendation_line}</p>"]
    for title, header, rows, notes in sections(results):
        md += [f"## {title}", "", markdown_table(header, rows), ""] + [f"- {n}" for n in notes] + [""]
        html.append(f"<h2>{title}</h2><table border='1' cellpadding='3'><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>")
        html += ["<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows]
        html.append("</table>" + "".join(f"<p>{n}</p>" for n in notes))
    for png in sorted((out / "plots").glob("*.png")):
        md.append(f"![{png.stem}](plots/{png.name})")
        html.append(f"<h3>{png.stem}</h3><img src='data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}'>")
    html.append("</body></html>")
    paths = {"md": out / "audit.md", "html": out / "audit.html", "json": out / "audit.json"}
    paths["md"].write_text("\n".join(md) + "\n")
    paths["html"].write_text("\n".join(html) + "\n")
    paths["json"].write_text(json.dumps({"meta": meta, "recommendation": recommendation_line, "results": results},
                                        indent=2, default=float) + "\n")
    return paths


# ----------------------------------------------------------------------------- command


class _Context:
    def __init__(self, model: Path, out: Path, preset: Preset, seed: int, threads: int, jobs: int, progress: Progress,
                 has_direct: bool = True, remove_net_force: bool = True):
        self.model, self.out, self.preset, self.seed, self.threads, self.progress = model, out, preset, seed, threads, progress
        self.jobs, self.has_direct, self.remove_net_force = jobs, has_direct, remove_net_force


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, except None (the preset decides, and the help says how)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=("Run the paper's battery of direct-force checks on MODEL (ours or metatomic, with an energy and "
                     "a direct head) and write OUT/audit.md, audit.html and audit.json. An energy-only model (or "
                     "'qtip4pf', the exactly conservative reference) gets a baseline audit: the conservative runs only, "
                     "whose deviations are the floor of the measurement. Rerun the same command to "
                     "continue: finished stages and MD runs are kept."),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("model", type=Path, nargs="?", default=SHIPPED_MODELS_DIR / "water-m.pt",
                   help=f"model file, or '{REFERENCE}' for the q-TIP4P/F reference")
    p.add_argument("--out", type=Path, default=Path("audit-out"), help="output folder")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", const="quick", dest="preset", help="minutes: a smoke test on 16 waters")
    size.add_argument("--paper", action="store_const", const="paper", dest="preset", help="the paper's lengths (for a GPU)")
    p.set_defaults(preset="default")
    p.add_argument("--structure", type=Path, help="system (i-PI xyz or extxyz; default: the preset's water box)")
    p.add_argument("--replicas", type=int, help="NVT runs per case (default: the preset's: quick 1, default 16, paper 16)")
    p.add_argument("--nvt-ps", type=float, help="length of one NVT run in ps, first --skip-ps discarded (default: the "
                   "preset's: quick 0.1, default 11.5, paper 20); a larger value on a finished audit extends its runs")
    p.add_argument("--langevin-ps", type=float, help="length of one Langevin NVT run in ps (default: the preset's: default 4, else --nvt-ps)")
    p.add_argument("--skip-ps", type=float, help="ps discarded at the start of each NVT run (default: the preset's: "
                   "quick 0.02, default 0.5, paper 2)")
    p.add_argument("--in-process", action="store_true", help="write the MD inputs with <ffdirect> (model inside i-PI, one "
                   "process per MD run; the quick preset always does) instead of <ffsocket>s, which ipi-nc run "
                   "serves in-process on CPU too (--transport auto)")
    p.add_argument("--remove-net-force", action=argparse.BooleanOptionalAction, default=True,
                   help="MD runs and geometry optimisations subtract the per-structure mean of the direct forces, as "
                   "i-PI's metatomic PES does; --no-remove-net-force audits the raw direct head (the netforce stage "
                   "reports its net force either way)")
    p.add_argument("--stages", nargs="+", choices=[s for s, _ in STAGES], default=[s for s, _ in STAGES])
    p.add_argument("--cases", nargs="+", choices=[c[0] for c in NVT_CASES], metavar="CASE",
                   help="NVT cases to run (default: all the model can run: " + ", ".join(c[0] for c in NVT_CASES)
                   + "); a later run with more cases keeps the finished runs")
    p.add_argument("--temperature", type=float, default=300.0, metavar="K",
                   help="NVT target and NVE start temperature (K); the paper's numbers beside ours are at 300 K")
    p.add_argument("--seed", type=int, default=31415, help="velocity / thermostat / geop seed")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--jobs", type=int, default=2, help="MD runs at a time (each: i-PI + one driver per forcefield)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    absolute_paths(args, "structure", "out")  # MODEL may be the keyword 'qtip4pf': model_file_or_reference resolves it
    preset = PRESETS[args.preset]
    if args.structure is not None:
        if not args.structure.is_file():
            print(f"{PROG}: structure file '{args.structure}' (--structure) does not exist", file=sys.stderr)
            return 2
        preset = Preset(**{**asdict(preset), "structure": args.structure})
    if not args.temperature > 0:
        print(f"{PROG}: --temperature must be > 0 K (got {args.temperature:g})", file=sys.stderr)
        return 2
    changes = {"temperature_k": args.temperature, "replicas": args.replicas, "nvt_ps": args.nvt_ps, "langevin_ps": args.langevin_ps, "skip_ps": args.skip_ps,
               "sockets": "ffdirect" if args.in_process else None}
    changes = {k: v for k, v in changes.items() if v is not None}
    if changes.get("replicas", 1) < 1:
        print(f"{PROG}: --replicas must be at least 1", file=sys.stderr)
        return 2
    if args.cases is not None:
        changes["nvt_cases"] = tuple(c[0] for c in NVT_CASES if c[0] in args.cases)  # one order for the cache key
    if "nvt_ps" in changes and "langevin_ps" not in changes and preset.langevin_ps is None:
        changes["langevin_ps"] = changes["nvt_ps"]
    preset = Preset(**{**asdict(preset), **changes})
    for option, length in (("--nvt-ps", preset.nvt_ps), ("--langevin-ps", preset.nvt_length_ps("langevin"))):
        if not length > preset.skip_ps >= 0:
            print(f"{PROG}: {option} ({length:g} ps) must be longer than --skip-ps ({preset.skip_ps:g} ps), which "
                  "must be >= 0", file=sys.stderr)
            return 2
    out = args.out
    try:  # 'qtip4pf': the exactly conservative reference, saved under OUT
        args.model = model_file_or_reference(args.model, out, "MODEL")
    except FileNotFoundError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    from ipi_ncforces.models.io import ModelFileError
    from ipi_ncforces.models.loader import model_heads

    try:
        heads = model_heads(args.model)
    except ModelFileError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if "energy" not in heads:
        print(f"{PROG}: model '{args.model}' has heads {list(heads)}; the audit needs an energy head (an M model for "
              "the direct-force artifacts, or an energy-only model for a baseline audit)", file=sys.stderr)
        return 2
    has_direct = "direct" in heads
    if not has_direct and preset.nvt_cases and any(c[1] != "conservative" for c in NVT_CASES if c[0] in preset.nvt_cases):
        print(f"{PROG}: --cases: model '{args.model}' has no direct head; it can run only "
              + ", ".join(c[0] for c in _nvt_cases(False)), file=sys.stderr)
        return 2
    stages = [s for s in args.stages if has_direct or s not in ("cost", "netforce")]  # both need a direct head
    from ipi_ncforces.models.loader import METATOMIC, model_format

    if not args.remove_net_force and has_direct and "geop" in stages and model_format(args.model) == METATOMIC:
        print(f"{PROG}: --no-remove-net-force: the geop stage optimises metatomic models with metatomic-ase, which "
              "always subtracts the mean direct force; leave geop out (--stages) or keep the default", file=sys.stderr)
        return 2
    identity = _identity(args.model, preset, args.seed, args.remove_net_force if has_direct else None)
    clash = _identity_clash(out / IDENTITY_FILE, identity)
    if clash:
        print(f"{PROG}: --out '{out}' holds an audit made with {clash}: its stages and MD runs cannot be reused; "
              "use another --out", file=sys.stderr)
        return 2
    (out / "stages").mkdir(parents=True, exist_ok=True)
    (out / IDENTITY_FILE).write_text(json.dumps(identity, indent=2) + "\n")
    (out / "plots").mkdir(parents=True, exist_ok=True)
    units = {"netforce": 0.02, "jacobian": 0.05, "cost": 0.05, "nve": preset.nve_ps * ((2 + len(preset.mts_ms)) if has_direct else 1),
             "nvt": sum(preset.nvt_length_ps(c[2]) for c in _nvt_cases(has_direct, preset.nvt_cases)) * preset.replicas, "geop": 2.0}
    cached = {s: _cached_stage(out / "stages" / f"{s}.json", preset.stage_lengths(s)) for s in stages}
    todo = [s for s in stages if cached[s] is None]
    progress = Progress(sum(units[s] for s in todo) or 1.0)
    ctx = _Context(args.model.resolve(), out, preset, args.seed, args.threads, max(1, args.jobs), progress, has_direct,
                   args.remove_net_force)
    t0 = time.monotonic()
    results = {}
    for name, func in STAGES:
        if name not in stages:
            continue
        path = out / "stages" / f"{name}.json"
        if cached[name] is not None:
            results[name] = cached[name]
            print(f"[audit] {name}: done earlier, kept ({path})")
            continue
        if path.is_file():
            print(f"[audit] {name}: done earlier with other lengths, redone (MD runs extended from their checkpoints)")
        try:
            results[name] = {**func(ctx), **({"lengths": preset.stage_lengths(name)} if preset.stage_lengths(name) else {})}
        except RuntimeError as exc:
            print(f"{PROG}: stage {name}: {str(exc).splitlines()[0]}; rerun the command to continue", file=sys.stderr)
            return 1
        path.write_text(json.dumps(results[name], indent=2, default=_json_default) + "\n")
        if name in ("netforce", "jacobian", "cost"):
            progress.step(units[name], name)
    meta = {"model": str(args.model), "preset": preset.name, "structure": str(preset.structure), "seed": args.seed,
            "temperature_k": preset.temperature_k, "remove_net_force": identity["remove_net_force"], "wall_s": time.monotonic() - t0}
    paths = write_report(out, meta, json.loads(json.dumps(results, default=_json_default)))
    print(f"{PROG}: {recommendation(results)}")
    print(f"{PROG}: report {paths['md']}, {paths['html']}, {paths['json']}")
    return 0


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _identity(model: Path, preset: Preset, seed: int, remove_net_force: bool | None = None) -> dict:
    """What every stage and MD run of an audit depends on besides its lengths: the model and
    structure files (by content), the seed, the temperature (K) and, for a model with a
    direct head, whether its net force is removed (None: no direct head)."""
    return {"model_sha256": _sha256(model), "structure_sha256": _sha256(preset.structure), "seed": seed,
            "temperature_k": preset.temperature_k, "remove_net_force": remove_net_force, "model": str(model),
            "structure": str(preset.structure)}


def _identity_clash(path: Path, identity: dict) -> str | None:
    """None if the audit folder's settings file (absent: an older or new folder) agrees with
    ``identity``; else the first differing setting, old value first. Paths are informative
    only: a moved file with the same content is the same audit."""
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    for key, text in (("model_sha256", "another model ({old[model]}; this run: {new[model]})"),
                      ("structure_sha256", "another structure ({old[structure]}; this run: {new[structure]})"),
                      ("seed", "seed {old[seed]} (this run: {new[seed]})"),
                      ("temperature_k", "temperature {old[temperature_k]:g} K (this run: {new[temperature_k]:g})")):
        if key in old and old[key] != identity[key]:
            return text.format(old=old, new=identity)
    if identity.get("remove_net_force") is not None:
        # folders from before the net force was removed by default have no key: raw direct heads
        removed = old.get("remove_net_force", False)
        if removed is not None and removed != identity["remove_net_force"]:
            text = {True: "the direct net force removed", False: "the raw direct net force (not removed)"}
            return (f"{text[bool(removed)]} (this run: {text[identity['remove_net_force']]}; "
                    "--remove-net-force / --no-remove-net-force)")
    return None


def _cached_stage(path: Path, lengths: dict) -> dict | None:
    """The stage result saved at ``path`` if it was made with ``lengths`` (see
    :meth:`Preset.stage_lengths`), else None (absent, or to be redone)."""
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if result.get("lengths", {}) == lengths else None


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


if __name__ == "__main__":
    sys.exit(main())
