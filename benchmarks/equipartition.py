"""Equipartition study: independent NVT replicas of one set-up, T, T_H, T_O with replica error bars.

One command repeats the measurement of issue 13 ("Trustworthy artifact numbers")::

    nice -n 19 python -m ipi_ncforces.benchmarks.equipartition --potential qtip4pf \\
        --replicas 8 --ps 4 --skip-ps 0.5 --out runs/equipartition

or ``ipi-nc bench --only equipartition`` (a short version on the bench model and the
reference). Each replica is one i-PI run (``<ffdirect>`` with ``ipi_driver/pes.py``, the
model inside i-PI, one thread) with its own seed, which sets both the Maxwell-Boltzmann
start velocities and the thermostat noise; all start from the same structure, so the
first ``--skip-ps`` ps are discarded. Inputs come from :mod:`ipi_ncforces.inputs.make`,
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
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ipi_ncforces.analysis.readers import AnalysisInputError, find_run
from ipi_ncforces.analysis.temperatures import analyze_replicas
from ipi_ncforces.inputs import WATER16_XYZ, WATER64_XYZ, make
from ipi_ncforces.ipi_driver import launch
from ipi_ncforces.ipi_driver.runner import PES_PATH

REFERENCE = "qtip4pf"  # --potential keyword: the q-TIP4P/F reference potential
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
        return (f"{name}-{self.forces}-{self.thermostat}{self.tau_fs:g}-dt{self.dt_fs:g}-"
                f"{Path(self.structure).stem}")


def _log(text: str) -> None:
    print(text, flush=True)  # live progress also when stdout is a file


def replica_seed(k: int) -> int:
    """Seed of replica k (0-based)."""
    return FIRST_SEED + 7919 * k


def model_file(setup: SetUp, work: Path) -> Path:
    """The model file i-PI loads: the reference saved under ``work``, or the given file."""
    if setup.potential != REFERENCE:
        path = Path(setup.potential)
        if not path.is_file():
            raise FileNotFoundError(f"model file '{path}' does not exist (--potential; or use '{REFERENCE}')")
        return path.resolve()
    target = work / "qtip4pf-reference.pt"
    if not target.is_file():
        from ipi_ncforces.models.io import save_model
        from ipi_ncforces.models.qtip4pf import QTIP4PF

        work.mkdir(parents=True, exist_ok=True)
        save_model(QTIP4PF(), target, {"note": "equipartition study reference"})
    return target.resolve()


def replica_variant(setup: SetUp, k: int, model: Path) -> make.Variant:
    """The i-PI input of replica k: NVT, ``<ffdirect>`` with our PES, properties only."""
    base = make.Variant(name="sim", dt_fs=setup.dt_fs)
    steps = make.steps_for_time(setup.total_ps, base)
    return make.Variant(
        name="sim", ensemble="nvt", thermostat=setup.thermostat, tau_fs=setup.tau_fs, forces=setup.forces,
        dt_fs=setup.dt_fs, steps=steps, temperature_k=setup.temperature_k, seed=replica_seed(k),
        structure=str(Path(setup.structure).resolve()), sockets="ffdirect", pes_path=str(PES_PATH),
        model=str(model), safe_stride=1000000,
        outputs=(make.Output("properties", "out", PROPERTIES, base.stride(setup.properties_fs)),),
    )


def finished(run_dir: Path, v: make.Variant) -> bool:
    """True when the replica's properties file holds the last step it will write."""
    stride = v.outputs[0].stride
    return launch.StepFollower(run_dir / "sim.out").poll() >= v.steps - v.steps % stride


def run_replicas(setup: SetUp, n: int, out: Path, jobs: int = 2, log=_log) -> list[Path]:
    """Run (or resume) ``n`` replicas of ``setup`` under out/<label>/rep<k>, ``jobs`` at a time.

    Returns the replica directories. RuntimeError naming the log if an i-PI run fails."""
    group = Path(out) / setup.label
    model = model_file(setup, Path(out))
    variants = [replica_variant(setup, k, model) for k in range(n)]
    dirs = [group / f"rep{k:02d}" for k in range(n)]
    pending = [(d, v) for d, v in zip(dirs, variants) if not finished(d, v)]
    if len(pending) < n:
        log(f"[equipartition] {setup.label}: {n - len(pending)} of {n} replicas already done")
    running: list[tuple[Path, make.Variant, launch.Process]] = []
    t0 = time.perf_counter()
    last = t0
    total_steps = sum(v.steps for _, v in pending)
    try:
        while pending or running:
            while pending and len(running) < jobs:
                d, v = pending.pop(0)
                for stale in d.glob("sim.*"):
                    stale.unlink()  # an interrupted replica starts over (no checkpoint kept)
                xml = make.write(v, d / "input.xml")
                running.append((d, v, launch.start_ipi(xml, d, threads=1)))
            time.sleep(1.0)
            for item in list(running):
                d, v, proc = item
                if proc.running():
                    continue
                running.remove(item)
                if proc.returncode != 0 or not finished(d, v):
                    raise RuntimeError(f"i-PI failed for {d} (exit {proc.returncode}; see {proc.log_path}): "
                                       f"{proc.log_tail(3)}")
                log(f"[equipartition] {d.relative_to(out)} done ({time.perf_counter() - t0:.0f} s)")
            now = time.perf_counter()
            if running and now - last > 60:
                last = now
                left = sum(v.steps for _, v in pending) + sum(
                    v.steps - max(0, launch.StepFollower(d / "sim.out").poll()) for d, v, _ in running)
                done = total_steps - left
                rate = done / (now - t0) if done > 0 else 0.0
                eta = f", ETA {left / rate / 60:.0f} min" if rate else ""
                log(f"[equipartition] {setup.label}: {done}/{total_steps} steps, {rate:.1f} steps/s{eta}")
    finally:
        for _, _, proc in running:
            proc.stop()
    return dirs


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
    p.add_argument("--thermostat", choices=("svr", "langevin"), default="svr")
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
