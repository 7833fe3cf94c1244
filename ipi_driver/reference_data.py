"""Reference data for training: q-TIP4P/F water boxes sampled with i-PI, labelled exactly.

``ipi-nc reference-data`` runs i-PI (``<ffdirect>`` with ipi_driver/pes.py serving a saved
:class:`ipi_ncforces.models.qtip4pf.QTIP4PF`, mode conservative, so no socket) in several segments:

* classical NVT at 300 K (two independent Langevin trajectories),
* path-integral NVT at 300 K (PILE-L thermostat; every bead becomes an independent frame),
* classical NVT at hotter temperatures (default 450 K and 600 K),

and writes every sampled frame with its q-TIP4P/F energy (eV), forces (eV/A), stress
(eV/A^3, ASE convention) and virial (eV) as extxyz via ASE: ``ase.io.read(path, ":")``
gives ``atoms.get_potential_energy()``, ``get_forces()``, ``get_stress()``, and
``atoms.info`` holds ``virial`` (3x3 eV), ``temperature_K``, ``kind`` (classical | pimd |
hot), ``bead``, ``step``, ``segment``. The dynamics runs with looser Ewald settings
(SAMPLING_EWALD, forces within ~1e-3 eV/A) unless ``--exact-sampling``; labels are always
computed with the converged :class:`QTIP4PF` on the positions exactly as i-PI wrote them.

``ipi-nc reference-data --start-structure inputs/water64.xyz --molecules 64`` makes the
equilibrated start structures shipped in inputs/ (lattice of randomly oriented monomers at
0.997 g/cm^3, FIRE relaxation, then ASE Langevin MD at 300 K with the reference potential;
:mod:`ipi_ncforces.models.water_box`), written in i-PI's xyz format.

The i-PI inputs come from :mod:`ipi_ncforces.inputs.make` and the processes are run by
:mod:`ipi_ncforces.ipi_driver.launch`.
"""

from __future__ import annotations

import argparse
import collections
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ipi_ncforces.cli import absolute_paths
from ipi_ncforces.inputs import WATER64_XYZ, make
from ipi_ncforces.ipi_driver import launch
from ipi_ncforces.ipi_driver.runner import PES_PATH
from ipi_ncforces.models.structure_io import read_structure
from ipi_ncforces.models.water_box import DEFAULT_DENSITY_G_CM3, make_start_structure


@dataclass
class Segment:
    """One i-PI run. temperature_k: K; nbeads: 1 = classical; frames: frames wanted (all beads);
    stride_steps: MD steps between samples; equil_steps: steps discarded first; tau_fs: thermostat."""

    name: str
    kind: str
    temperature_k: float
    nbeads: int
    frames: int
    stride_steps: int
    equil_steps: int
    tau_fs: float
    seed: int

    @property
    def samples(self) -> int:
        return math.ceil(self.frames / self.nbeads)

    @property
    def total_steps(self) -> int:
        return self.equil_steps + self.samples * self.stride_steps


# Ewald settings of the model that drives i-PI's dynamics (labels always use QTIP4PF())
SAMPLING_EWALD = {"real_cutoff": 8.0, "ewald_alpha": 0.35, "kspace_cutoff": 2.8}

def plan_segments(
    frames: int, stride_fs: float, dt_fs: float, seed: int, nbeads: int, hot_temperatures_k: list[float],
    classical_fraction: float = 0.4, pimd_fraction: float = 0.4,
) -> list[Segment]:
    """Split ``frames`` into classical 300 K, PIMD 300 K and hot classical segments."""
    stride = max(1, round(stride_fs / dt_fs))
    n_classical = round(frames * classical_fraction)
    n_pimd = round(frames * pimd_fraction) if nbeads > 1 else 0
    n_hot = frames - n_classical - n_pimd
    if not hot_temperatures_k:
        n_classical, n_hot = n_classical + n_hot, 0
    # two independent classical trajectories: better decorrelated, and they run in parallel
    half = n_classical // 2
    segments = [
        Segment(f"classical-300K-{k}", "classical", 300.0, 1, n, stride, round(50 / dt_fs), 100.0, seed + 10 * k)
        for k, n in enumerate((n_classical - half, half))
    ]
    if n_pimd:
        # beads start collapsed on the classical structure: discard ~100 fs while PILE-L expands them
        segments.append(
            Segment(f"pimd-300K-{nbeads}beads", "pimd", 300.0, nbeads, n_pimd, stride, round(100 / dt_fs), 100.0, seed + 1)
        )
    for k, temp in enumerate(hot_temperatures_k):
        share = n_hot // len(hot_temperatures_k) + (1 if k < n_hot % len(hot_temperatures_k) else 0)
        if share:
            # a stiffer thermostat (tau 25 fs) heats the box within the ~200 fs discarded
            segments.append(
                Segment(f"hot-{temp:.0f}K", "hot", temp, 1, share, stride, round(200 / dt_fs), 25.0, seed + 2 + k)
            )
    return [s for s in segments if s.frames > 0]


def segment_variant(segment: Segment, model_path: Path, structure: Path, dt_fs: float) -> make.Variant:
    """The i-PI input of one segment: NVT (Langevin, or PILE-L for beads) with our PES in
    ``<ffdirect>`` (all beads in one call), properties and every bead's positions (A) each
    ``stride_steps``."""
    stride = segment.stride_steps
    return make.Variant(
        name="sim", ensemble="nvt", thermostat="pile_l" if segment.nbeads > 1 else "langevin",
        tau_fs=segment.tau_fs, pile_lambda=1.0, dt_fs=dt_fs, beads=segment.nbeads, steps=segment.total_steps,
        temperature_k=segment.temperature_k, seed=segment.seed, structure=str(structure.resolve()),
        sockets="ffdirect", pes_path=str(PES_PATH), model=str(model_path.resolve()), batch_size=segment.nbeads,
        safe_stride=1000000,
        outputs=(
            make.Output("properties", "out", "[ step, time{picosecond}, temperature{kelvin}, potential{electronvolt} ]", stride),
            make.Output("trajectory", "pos", "positions{angstrom}", stride),
        ),
    )


def start_segment(segment: Segment, workdir: Path, model_path: Path, structure: Path, dt_fs: float) -> launch.Process:
    """Write the i-PI input for ``segment`` into workdir/<name>/ and start i-PI there (one thread)."""
    run_dir = workdir / segment.name
    xml = make.write(segment_variant(segment, model_path, structure, dt_fs), run_dir / "input.xml")
    return launch.start_ipi(xml, run_dir, threads=1)


def read_segment_frames(segment: Segment, run_dir: Path) -> list:
    """ase.Atoms frames (after equilibration) from every bead's position trajectory, with info."""
    files = sorted(run_dir.glob("sim.pos_*.xyz"))
    if len(files) != segment.nbeads:
        raise RuntimeError(f"i-PI run '{run_dir}' wrote {len(files)} position files, expected {segment.nbeads}")
    frames = []
    for bead, path in enumerate(files):
        for index, atoms in enumerate(read_structure(path, ":")):
            step = atoms.info.get("step", index * segment.stride_steps)
            if step <= segment.equil_steps:
                continue
            atoms.info.update(
                {"kind": segment.kind, "temperature_K": segment.temperature_k, "bead": bead,
                 "nbeads": segment.nbeads, "step": step, "segment": segment.name}
            )
            frames.append((step, bead, atoms))
    frames.sort(key=lambda item: (item[0], item[1]))
    return [atoms for _, _, atoms in frames][: segment.frames]


def label_frames(frames: list, model, chunk: int = 8) -> list:
    """Attach q-TIP4P/F energy (eV), forces (eV/A), stress (eV/A^3) and info['virial'] (eV)."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.stress import full_3x3_to_voigt_6_stress

    from ipi_ncforces.models.base import Batch, evaluate

    for start in range(0, len(frames), chunk):
        group = frames[start : start + chunk]
        p = evaluate(model, Batch.from_ase(group))
        for k, atoms in enumerate(group):
            virial = p.virial[k].numpy()
            sigma = -virial / atoms.cell.volume  # ASE: stress = -W / V
            atoms.info["virial"] = virial
            atoms.calc = SinglePointCalculator(atoms, energy=float(p.energy[k]), forces=p.forces[k].numpy(),
                                               stress=full_3x3_to_voigt_6_stress(sigma))
    return frames


def _run_all(pending, running, results, timings, workdir, model_path, structure, dt_fs, jobs, start, log) -> None:
    """Keep ``jobs`` i-PI runs going until all segments are done; fills results/timings."""
    last_report = 0.0
    while pending or running:
        while pending and len(running) < jobs:
            s = pending.pop(0)
            running[s.name] = (s, start_segment(s, workdir, model_path, structure, dt_fs), time.perf_counter())
        time.sleep(0.5)
        for name, (s, ipi, t0) in list(running.items()):
            if ipi.running():
                continue
            del running[name]
            if ipi.returncode != 0:
                raise RuntimeError(
                    f"i-PI failed for segment {name} (exit {ipi.returncode}; see {ipi.log_path}): {ipi.log_tail(5)}"
                )
            timings[name] = time.perf_counter() - t0
            results[name] = read_segment_frames(s, workdir / name)
            log(f"segment {name} done: {len(results[name])} frames in {timings[name]:.0f} s")
        if running and time.perf_counter() - last_report > 15:
            last_report = time.perf_counter()
            progress = ", ".join(
                f"{n} {max(0, launch.StepFollower(workdir / n / 'sim.out').poll())}/{s.total_steps}"
                for n, (s, _, _) in running.items()
            )
            log(f"  [{last_report - start:5.0f} s] steps: {progress}")


def generate(
    out: Path, structure: Path, frames: int, seed: int, stride_fs: float, dt_fs: float, nbeads: int,
    hot_temperatures_k: list[float], jobs: int, workdir: Path | None, exact_sampling: bool = False, log=print,
) -> dict:
    """Run all segments with i-PI (``jobs`` at a time), label and write ``out``. Returns timings (s)."""
    import ase.io
    import torch

    from ipi_ncforces.models.io import save_model
    from ipi_ncforces.models.qtip4pf import QTIP4PF, check_water_order

    torch.set_num_threads(1)
    atoms = read_structure(structure)
    check_water_order(torch.as_tensor(atoms.numbers))
    segments = plan_segments(frames, stride_fs, dt_fs, seed, nbeads, hot_temperatures_k)
    keep = workdir is not None
    workdir = Path(workdir) if keep else Path(tempfile.mkdtemp(prefix="ipi-nc-refdata-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model = QTIP4PF()
    # the dynamics may use looser Ewald settings (forces within ~1e-3 eV/A, ~2x cheaper):
    # only the sampled configurations depend on them, every label uses the converged model
    sampler = model if exact_sampling else QTIP4PF(**SAMPLING_EWALD)
    model_path = save_model(sampler, workdir / "qtip4pf.pt", {"note": "q-TIP4P/F reference potential (sampling)"})
    for s in segments:
        log(
            f"segment {s.name}: {s.frames} frames = {s.samples} samples x {s.nbeads} bead(s), every "
            f"{s.stride_steps * dt_fs:g} fs, {s.total_steps} steps of {dt_fs:g} fs ({s.equil_steps} discarded)"
        )
    timings: dict[str, float] = {}
    start = time.perf_counter()
    pending = sorted(segments, key=lambda s: -s.total_steps * s.nbeads)  # longest first
    running: dict[str, tuple[Segment, launch.Process, float]] = {}
    results: dict[str, list] = {}
    try:
        _run_all(pending, running, results, timings, workdir, model_path, structure, dt_fs, jobs, start, log)
    finally:  # never leave i-PI processes behind (error, Ctrl-C)
        for _, ipi, _ in running.values():
            ipi.stop()
    timings["md_total"] = time.perf_counter() - start

    t0 = time.perf_counter()
    all_frames = [atoms for s in segments for atoms in results[s.name]]
    label_frames(all_frames, model)
    timings["labelling"] = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".part")
    ase.io.write(tmp_out, all_frames, format="extxyz")
    tmp_out.replace(out)  # a reader never sees a half-written data set
    timings["total"] = time.perf_counter() - start
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    counts = collections.Counter(atoms.info["segment"] for atoms in all_frames)
    log(
        f"wrote {len(all_frames)} frames to {out} ({', '.join(f'{k}: {v}' for k, v in counts.items())}); "
        f"MD {timings['md_total']:.0f} s, labelling {timings['labelling']:.0f} s, total {timings['total']:.0f} s"
    )
    return timings


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipi-nc reference-data",
        description=(
            "Generate q-TIP4P/F water training data with i-PI (<ffdirect>, no sockets): classical NVT at "
            "300 K, path-integral NVT at 300 K (each bead one frame) and hotter classical NVT, labelled with "
            "energy (eV), forces (eV/A), stress (eV/A^3) and virial (eV), written as extxyz (ase.io.read "
            "returns them via get_potential_energy/get_forces/get_stress; info['virial'], info['kind'], "
            "info['temperature_K']). With --start-structure: build and equilibrate a start box instead."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("data/water-train.extxyz"), help="extxyz file to write")
    parser.add_argument("--frames", type=int, default=1200, help="total frames (40%% classical, 40%% PIMD beads, 20%% hot)")
    parser.add_argument("--structure", type=Path, default=WATER64_XYZ,
                        help="start structure (i-PI xyz with CELL(abcABC) comment, atoms O H H per molecule)")
    parser.add_argument("--seed", type=int, default=12345, help="random seed of i-PI's thermostats/velocities")
    parser.add_argument("--stride-fs", type=float, default=10.0, help="time between sampled frames (fs)")
    parser.add_argument("--dt-fs", type=float, default=0.5, help="MD time step (fs)")
    parser.add_argument("--nbeads", type=int, default=8, help="path-integral beads (1 = no PIMD segment)")
    parser.add_argument("--hot-temperatures", type=float, nargs="*", default=[450.0, 600.0],
                        help="temperatures (K) of the hot classical segments")
    parser.add_argument("--jobs", type=int, default=2, help="i-PI runs at a time (one CPU core each)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep i-PI inputs/outputs here (default: temporary)")
    parser.add_argument("--exact-sampling", action="store_true",
                        help="drive the MD with the converged Ewald settings too (default: looser, ~2x faster, "
                        "forces within ~1e-3 eV/A; labels are always converged)")
    start = parser.add_argument_group("start structure (instead of data)")
    start.add_argument("--start-structure", type=Path, metavar="XYZ", help="write an equilibrated start box here")
    start.add_argument("--molecules", type=int, default=64, help="water molecules in the start box")
    start.add_argument("--density", type=float, default=DEFAULT_DENSITY_G_CM3, help="density (g/cm^3)")
    start.add_argument("--equilibrate-ps", type=float, default=10.0,
                       help="ASE Langevin time at 300 K (ps; default 10: a melted lattice of 64 waters is still "
                       "relaxing after 3 ps, its potential energy falls ~20 meV/molecule over 2-6 ps)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``ipi-nc reference-data``: returns the exit code."""
    args = build_parser().parse_args(argv)
    absolute_paths(args, "out", "structure", "workdir", "start_structure")  # i-PI runs in WORKDIR/<segment>

    def fail(message: str) -> int:
        print(f"ipi-nc reference-data: {message}", file=sys.stderr)
        return 2

    if args.start_structure is not None:
        if args.molecules < 1 or args.density <= 0 or args.equilibrate_ps < 0:
            return fail("--molecules, --density and --equilibrate-ps must be positive")
        import torch

        torch.set_num_threads(1)
        path = make_start_structure(
            args.start_structure, args.molecules, seed=args.seed, time_ps=args.equilibrate_ps,
            density_g_cm3=args.density,
        )
        print(f"wrote {path}")
        return 0
    if args.frames < 1:
        return fail(f"--frames must be at least 1 (got {args.frames})")
    if args.stride_fs < args.dt_fs or args.dt_fs <= 0:
        return fail(f"--stride-fs ({args.stride_fs}) must be >= --dt-fs ({args.dt_fs}) > 0")
    if args.nbeads < 1 or args.jobs < 1:
        return fail("--nbeads and --jobs must be at least 1")
    if not args.structure.is_file():
        return fail(f"structure file '{args.structure}' (--structure) does not exist; make one with --start-structure")
    try:
        generate(
            out=args.out, structure=args.structure, frames=args.frames, seed=args.seed, stride_fs=args.stride_fs,
            dt_fs=args.dt_fs, nbeads=args.nbeads, hot_temperatures_k=list(args.hot_temperatures), jobs=args.jobs,
            workdir=args.workdir, exact_sampling=args.exact_sampling,
        )
    except (ValueError, FileNotFoundError) as exc:
        return fail(str(exc).splitlines()[0])
    except RuntimeError as exc:  # an i-PI run failed (LaunchError is a RuntimeError)
        print(f"ipi-nc reference-data: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
