"""Equipartition study: independent NVT replicas of one set-up, T, T_H, T_O with replica error bars.

One command repeats the measurement of issue 13 ("Trustworthy artifact numbers")::

    nice -n 19 python -m ipi_ncforces.benchmarks.equipartition --potential qtip4pf \\
        --replicas 8 --ps 4 --skip-ps 0.5 --structure inputs/water64-starts.xyz --out runs/equipartition

or ``ipi-nc bench --only equipartition`` (a short version on the bench model and the
reference). Each replica is one i-PI run (``<ffdirect>`` with ``ipi_driver/pes.py``, the
model inside i-PI, one thread) with its own seed, which sets both the Maxwell-Boltzmann
start velocities and the thermostat noise. Replica k starts from frame k of ``--structure``
(one equilibrated frame each, e.g. inputs/water64-starts.xyz, made with ``--make-starts``);
a one-frame file starts all from the same structure, and replicas that share a start are
not independent. The first ``--skip-ps`` ps are discarded. Inputs come from :mod:`ipi_ncforces.inputs.make`,
processes from :mod:`ipi_ncforces.ipi_driver.launch` (``--jobs`` at a time). A replica
whose properties file already reaches its last step is not run again (resumable).

The analysis is :func:`ipi_ncforces.analysis.temperatures.analyze_replicas`: replica mean
of ΔT, ΔT_H, ΔT_O (K) with σ = std/sqrt(n) over replicas, next to the block-averaging σ
of one run, and the effective number of independent samples.

Potentials: ``qtip4pf`` (the q-TIP4P/F reference, exactly conservative, saved to a model
file under OUT) or a model file (.pt) with ``--forces conservative|direct``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from ipi_ncforces.analysis.readers import AnalysisInputError, find_run
from ipi_ncforces.analysis.temperatures import analyze_replicas
from ipi_ncforces.benchmarks.common import REFERENCE, model_file_or_reference
from ipi_ncforces.inputs import WATER16_XYZ, WATER64_XYZ, make
from ipi_ncforces.ipi_driver import launch
from ipi_ncforces.ipi_driver.runner import PES_PATH

FIRST_SEED = 1001  # replica k gets FIRST_SEED + 7919 k (far apart, reproducible)
STRUCTURES = {"water64": WATER64_XYZ, "water16": WATER16_XYZ}
PROPERTIES = ("[ step, time{picosecond}, conserved{electronvolt}, temperature{kelvin}, temperature{kelvin}(H), "
              "temperature{kelvin}(O), kinetic_md{electronvolt}, potential{electronvolt} ]")


@dataclass(frozen=True)
class SetUp:
    """One MD set-up whose replicas differ only by seed. Times in fs/ps, temperature in K."""

    potential: str = REFERENCE  # "qtip4pf" or a model file
    forces: str = "conservative"  # conservative | direct (model files only)
    thermostat: str = "svr"
    tau_fs: float = 10.0
    dt_fs: float = 0.5
    temperature_k: float = 300.0
    total_ps: float = 4.0
    structure: Path = WATER64_XYZ
    properties_fs: float = 1.0

    @property
    def label(self) -> str:
        name = REFERENCE if self.potential == REFERENCE else Path(self.potential).stem
        thermostat = "nve" if self.thermostat == "nve" else f"{self.thermostat}{self.tau_fs:g}"
        return (f"{name}-{self.forces}-{thermostat}-dt{self.dt_fs:g}-"
                f"{Path(self.structure).stem}")


def _log(text: str) -> None:
    print(text, flush=True)  # live progress also when stdout is a file


def replica_seed(k: int) -> int:
    """Seed of replica k (0-based)."""
    return FIRST_SEED + 7919 * k


def model_file(setup: SetUp, work: Path) -> Path:
    """The model file i-PI loads: the reference saved under ``work``, or the given file."""
    return model_file_or_reference(setup.potential, work, "--potential")


def replica_variant(setup: SetUp, k: int, model: Path, structure: Path | None = None) -> make.Variant:
    """The i-PI input of replica k: NVT, ``<ffdirect>`` with our PES, properties only; it
    starts from ``structure`` (default ``setup.structure``)."""
    base = make.Variant(name="sim", dt_fs=setup.dt_fs)
    steps = make.steps_for_time(setup.total_ps, base)
    nve = setup.thermostat == "nve"  # microcanonical from Maxwell-Boltzmann velocities at temperature_k
    return make.Variant(
        name="sim", ensemble="nve" if nve else "nvt", thermostat=None if nve else setup.thermostat,
        tau_fs=setup.tau_fs, forces=setup.forces,
        dt_fs=setup.dt_fs, steps=steps, temperature_k=setup.temperature_k, seed=replica_seed(k),
        structure=str(Path(structure or setup.structure).resolve()), sockets="ffdirect", pes_path=str(PES_PATH),
        model=str(model), safe_stride=1000000,
        outputs=(make.Output("properties", "out", PROPERTIES, base.stride(setup.properties_fs)),),
    )


def finished(run_dir: Path, v: make.Variant) -> bool:
    """True when the replica's properties file holds the last step it will write."""
    stride = v.outputs[0].stride
    return launch.StepFollower(run_dir / "sim.out").poll() >= v.steps - v.steps % stride


def run_pool(items: list[tuple[Path, make.Variant]], jobs: int, label: str, out: Path, log=_log) -> None:
    """Run the i-PI input of each (directory, variant) not yet finished, ``jobs`` at a time
    (:func:`ipi_ncforces.ipi_driver.launch.run_jobs`: progress and ETA every minute, the
    others stopped on failure or interrupt). RuntimeError naming the log if a run fails."""
    pending = [(d, v) for d, v in items if not finished(d, v)]
    if len(pending) < len(items):
        log(f"[equipartition] {label}: {len(items) - len(pending)} of {len(items)} runs already done")

    def job(d: Path, v: make.Variant) -> launch.Job:
        def start() -> launch.Process:
            for stale in d.glob("sim.*"):
                stale.unlink()  # an interrupted run starts over (no checkpoint kept)
            return launch.start_ipi(make.write(v, d / "input.xml"), d, threads=1)

        follower = launch.StepFollower(d / "sim.out")
        return launch.Job(str(d.relative_to(out)), start, succeeded=lambda: finished(d, v), steps=v.steps,
                          steps_done=follower.poll)

    launch.run_jobs([job(d, v) for d, v in pending], jobs, f"equipartition {label}", log=log)


def run_replicas(setup: SetUp, n: int, out: Path, jobs: int = 2, log=_log) -> list[Path]:
    """Run (or resume) ``n`` replicas of ``setup`` under out/<label>/rep<k>, ``jobs`` at a time;
    a multi-frame ``setup.structure`` gives each replica its own start (frame k).

    Returns the replica directories. RuntimeError naming the log if an i-PI run fails."""
    group = Path(out) / setup.label
    model = model_file(setup, Path(out))
    dirs = [group / f"rep{k:02d}" for k in range(n)]
    from ipi_ncforces.models.structure_io import replica_starts

    starts = replica_starts(setup.structure, n, group / "starts")
    variants = [replica_variant(setup, k, model, starts[k]) for k in range(n)]
    run_pool(list(zip(dirs, variants)), jobs, setup.label, Path(out), log)
    return dirs


def make_starts(setup: SetUp, target: Path, chains: int, frames_per_chain: int, discard_ps: float,
                spacing_ps: float, out: Path, jobs: int = 2, log=_log) -> Path:
    """Equilibrated start structures for replicas: ``chains`` NVT runs of ``setup`` (usually
    Langevin, a local thermostat) from ``setup.structure``, each discarding ``discard_ps`` ps
    and then keeping one frame every ``spacing_ps`` ps; all frames go to ``target`` (i-PI
    xyz, Angstrom, one frame after another, the chains interleaved). The potential energy in 1 ps blocks of each
    chain is logged, to check that ``discard_ps`` covers the relaxation."""
    import numpy as np

    from ipi_ncforces.analysis.readers import read_properties
    from ipi_ncforces.models.structure_io import read_structure, write_ipi_xyz_frames

    total_ps = discard_ps + frames_per_chain * spacing_ps
    chained = dataclasses.replace(setup, total_ps=total_ps)
    group = Path(out) / f"starts-{chained.label}"
    model = model_file(chained, Path(out))
    items = []
    for k in range(chains):
        v = replica_variant(chained, k, model, Path(setup.structure).resolve())
        stride = v.stride(spacing_ps * 1000.0)
        v = make.with_changes(v, outputs=v.outputs + (make.Output("trajectory", "pos", "positions{angstrom}", stride),))
        items.append((group / f"chain{k:02d}", v))
    run_pool(items, jobs, f"starts {chained.label}", Path(out), log)
    box = read_structure(setup.structure)
    per_chain = []
    for d, v in items:
        props = read_properties(d / "sim.out")
        time_ps, pot_ev = np.asarray(props["time"]), np.asarray(props["potential"])
        edges = np.arange(0.0, total_ps + 1e-9, spacing_ps)
        blocks = [f"{pot_ev[(time_ps >= a) & (time_ps < b)].mean():.3f}" for a, b in zip(edges[:-1], edges[1:])]
        log(f"[equipartition] {d.name}: potential energy (eV) per {spacing_ps:g} ps block: {' '.join(blocks)}")
        kept = [a for a in read_structure(d / "sim.pos_0.xyz", ":") if a.info.get("step", 0) * v.dt_fs / 1000.0 > discard_ps + 1e-9]
        for atoms in kept:
            atoms.set_cell(box.cell)  # the NVT box, at full precision (i-PI prints 5 decimals)
        per_chain.append(kept)
    # chains interleaved (c0 f0, c1 f0, c0 f1, ...): the first n frames come from all chains
    frames = [chain[i] for i in range(max(map(len, per_chain))) for chain in per_chain if i < len(chain)]
    write_ipi_xyz_frames(frames, target)
    log(f"[equipartition] {len(frames)} start structures -> {target}")
    return target


def study(setups: list[SetUp], n: int, out: Path, skip_ps: float, jobs: int, log=_log) -> dict:
    """Run every set-up's replicas, then analyse each group; returns {label: report data}."""
    results = {}
    for setup in setups:
        dirs = run_replicas(setup, n, out, jobs, log)
        runs = [find_run(d) for d in dirs]
        results[setup.label] = analyze_replicas(runs, Path(out) / setup.label / "analysis",
                                                target_k=setup.temperature_k, skip_ps=skip_ps)
        log(results[setup.label]["markdown"])
    return results


def markdown(section: dict) -> str:
    lines = ["## Equipartition replicas", ""]
    for label, data in section.get("groups", {}).items():
        lines += [f"### {label}", "", data["markdown"], ""]
    return "\n".join(lines)


def run(cfg) -> dict:
    """``ipi-nc bench --only equipartition``: 4 replicas of 1 ps (quick: 2 x 0.2 ps, water16) of
    the q-TIP4P/F reference and the bench model's conservative head, SVR tau 10 fs."""
    structure = WATER16_XYZ if cfg.quick else WATER64_XYZ
    total_ps, n, skip = (0.2, 2, 0.05) if cfg.quick else (1.0, 4, 0.2)
    setups = [SetUp(potential=p, total_ps=total_ps, structure=structure) for p in (REFERENCE, str(cfg.model_path))]
    groups = study(setups, n, Path(cfg.out) / "equipartition", skip, jobs=2)
    return {"replicas": n, "total_ps": total_ps, "skip_ps": skip,
            "groups": {k: {kk: vv for kk, vv in v.items() if kk != "runs"} for k, v in groups.items()}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ipi_ncforces.benchmarks.equipartition",
        description="Independent NVT replicas of one set-up (different seeds), analysed together: replica "
        "mean of ΔT, ΔT_H, ΔT_O (K) with σ over replicas next to the block-averaging σ of one run.",
    )
    p.add_argument("--potential", action="append", default=None,
                   help=f"'{REFERENCE}' (q-TIP4P/F reference) or a model file; repeat for several "
                   f"(default {REFERENCE})")
    p.add_argument("--forces", choices=("conservative", "direct"), default="conservative")
    p.add_argument("--thermostat", choices=("svr", "langevin", "nve"), default="svr",
                   help="svr (global), langevin (local) or nve (none: Maxwell-Boltzmann start, then NVE)")
    p.add_argument("--tau-fs", type=float, default=10.0, help="thermostat time constant (fs; default 10)")
    p.add_argument("--dt-fs", type=float, default=0.5, help="time step (fs; default 0.5)")
    p.add_argument("--temperature", type=float, default=300.0, metavar="K", help="target (K; default 300)")
    p.add_argument("--ps", type=float, default=4.0, help="length of each replica (ps; default 4)")
    p.add_argument("--skip-ps", type=float, default=0.5, help="equilibration discarded (ps; default 0.5)")
    p.add_argument("--replicas", type=int, default=8, help="independent replicas (default 8)")
    p.add_argument("--structure", default="water64",
                   help="water64 (192 atoms, default), water16 (48 atoms) or an i-PI xyz file")
    p.add_argument("--jobs", type=int, default=2, help="replicas run at once, one thread each (default 2)")
    p.add_argument("--out", default="runs/equipartition", help="output folder (default runs/equipartition)")
    p.add_argument("--make-starts", metavar="XYZ", type=Path, default=None,
                   help="instead of replicas: write equilibrated start structures to XYZ (one per replica): "
                   "--jobs chains from --structure with --thermostat/--tau-fs (use langevin 100), each "
                   "discarding --discard-ps then keeping a frame every --spacing-ps; frames = --replicas")
    p.add_argument("--discard-ps", type=float, default=6.0, help="--make-starts: relaxation discarded (ps; default 6)")
    p.add_argument("--spacing-ps", type=float, default=1.0, help="--make-starts: time between frames (ps; default 1)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.replicas < 2 or args.jobs < 1 or args.ps <= args.skip_ps or args.skip_ps < 0:
        print("equipartition: need --replicas >= 2, --jobs >= 1 and 0 <= --skip-ps < --ps", file=sys.stderr)
        return 2
    structure = STRUCTURES.get(args.structure, Path(args.structure))
    if not Path(structure).is_file():
        print(f"equipartition: structure '{args.structure}' not found (--structure)", file=sys.stderr)
        return 2
    setups = [SetUp(potential=p, forces=args.forces, thermostat=args.thermostat, tau_fs=args.tau_fs,
                    dt_fs=args.dt_fs, temperature_k=args.temperature, total_ps=args.ps, structure=Path(structure))
              for p in (args.potential or [REFERENCE])]
    try:
        if args.make_starts is not None:  # chains of the first set-up, as many frames as replicas
            make_starts(setups[0], args.make_starts, args.jobs, -(-args.replicas // args.jobs), args.discard_ps,
                        args.spacing_ps, Path(args.out), args.jobs)
        else:
            study(setups, args.replicas, Path(args.out), args.skip_ps, args.jobs)
    except (FileNotFoundError, make.VariantError, AnalysisInputError) as exc:
        print(f"equipartition: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"equipartition: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
