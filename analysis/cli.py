"""``ipi-nc analyze <what> RUN... [--out DIR]``: analyse i-PI outputs.

RUN is an i-PI output prefix (``runs/nve/simulation``) or a directory with the outputs
of one run (``runs/nve/``): ``<prefix>.out`` for properties, ``<prefix>.<traj>_<bead>.xyz``
for trajectories (see :mod:`ipi_ncforces.analysis.readers`). Every analysis writes
``<out>/<what>.json``, ``<out>/<what>.md`` and PNG plots, and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from pathlib import Path

from ipi_ncforces.analysis.readers import AnalysisInputError, AnalysisWarning, find_run

WHAT = {
    "drift": "conserved-energy drift (meV/atom/ps) and heating rate (K/ps), with running-window slopes",
    "temperatures": "mean T, T_H, T_O (K, block-averaged errors); PIMD centroid and normal-mode T",
    "spectrum": "velocity autocorrelation and vibrational density of states per species (cm^-1, THz)",
    "diffusion": "oxygen MSD and self-diffusion coefficient (A^2/ps, 1e-5 cm^2/s) with error",
    "rdf": "radial distribution functions g_OO, g_OH, g_HH",
    "geop": "max force vs step of i-PI geop runs or ASE optimizer logs; converged or not",
    "geop-study": "success rate of ASE optimizers from displaced starts, conservative vs direct forces",
    "jacobian": "Jacobian asymmetry lambda, pair-resolved lambda_ij(r), closed-path work of a model",
    "compare": "several runs side by side: drift, heating, T/T_H/T_O, D_O",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ipi-nc analyze",
        description="Analyse i-PI outputs. RUN = output prefix (runs/nve/simulation) or a directory holding "
                    "one run's outputs. Units are read from the i-PI headers. Writes <out>/<what>.json, "
                    "<what>.md and PNG plots.",
    )
    sub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    parsers = {}
    for name, help_text in WHAT.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("--out", default="analysis-out", help="output directory (default: analysis-out)")
        parsers[name] = sp
    for name in ("drift", "temperatures", "spectrum", "diffusion", "rdf", "compare"):
        parsers[name].add_argument("runs", nargs="+", metavar="RUN", help="i-PI output prefix or directory")
    for name in ("drift", "temperatures", "diffusion", "compare"):
        parsers[name].add_argument("--skip-ps", type=float, default=0.0,
                                   help="discard the first SKIP ps as equilibration (default 0)")
    for name in ("temperatures", "spectrum", "diffusion", "compare"):
        parsers[name].add_argument("--timestep-fs", type=float, default=None,
                                   help="MD time step (fs), if the properties file has no step/time columns")
    for name in ("drift", "compare"):
        parsers[name].add_argument("--natoms", type=int, default=None,
                                   help="number of atoms (default: from a trajectory file of the run)")
    for name in ("temperatures", "compare"):
        parsers[name].add_argument("--target", type=float, default=None, metavar="K",
                                   help="target temperature (K): report deviations like paper Table 2")
    parsers["drift"].add_argument("--windows", type=int, default=8, help="running-window count (default 8)")
    parsers["temperatures"].add_argument(
        "--replicas", action="store_true",
        help="the RUNs are independent replicas of ONE set-up (different seeds): also report the replica mean "
             "with σ from the spread between replicas, next to the block σ of one run")
    parsers["temperatures"].add_argument(
        "--minus", nargs="+", metavar="RUN", default=None,
        help="with --replicas: replicas of a second set-up, paired with the RUNs by order (replica k of both "
             "started from the same structure): also report RUNs - these, with σ from the paired differences "
             "(e.g. direct minus conservative at the same dt and thermostat: the artifact)")
    parsers["temperatures"].add_argument("--target-err", type=float, default=1.5, metavar="K",
                                         help="with --replicas: σ wanted (K) for the run-length estimate (default 1.5)")
    parsers["temperatures"].add_argument("--source", choices=("auto", "properties", "velocities"), default="auto",
                                         help="where temperatures come from (default auto: properties, "
                                              "velocity trajectories for what they lack)")
    sp = parsers["spectrum"]
    sp.add_argument("--max-lag-ps", type=float, default=None, help="VACF length used (ps; default run/4)")
    sp.add_argument("--max-cm1", type=float, default=4500.0, help="upper plot limit (cm^-1)")
    sp = parsers["diffusion"]
    sp.add_argument("--species", default="O", help="chemical symbol (default O)")
    sp.add_argument("--fit-range", type=float, nargs=2, default=(0.1, 0.5), metavar=("START", "END"),
                    help="MSD fit window as fractions of the run length (default 0.1 0.5)")
    sp.add_argument("--blocks", type=int, default=5, help="blocks for the error of D (default 5)")
    sp.add_argument("--keep-com", action="store_true", help="do not remove the centre-of-mass drift")
    sp.add_argument("--temperature-k", type=float, default=None, help="T (K) for the Yeh-Hummer correction")
    sp.add_argument("--viscosity-mpas", type=float, default=None, help="viscosity (mPa s) for Yeh-Hummer")
    sp = parsers["rdf"]
    sp.add_argument("--pairs", default="O-O,O-H,H-H", help="species pairs (default O-O,O-H,H-H)")
    sp.add_argument("--r-max", type=float, default=None, help="largest r (A; default half the cell width)")
    sp.add_argument("--bins", type=int, default=200, help="histogram bins (default 200)")
    sp.add_argument("--stride", type=int, default=1, help="use every STRIDE-th frame (default 1)")
    sp = parsers["geop"]
    sp.add_argument("runs", nargs="+", metavar="RUN_OR_LOG", help="i-PI geop run (prefix/dir) or ASE log file")
    for name in ("geop", "geop-study"):
        parsers[name].add_argument("--fmax", type=float, default=1e-4,
                                   help="convergence threshold (eV/A; paper: 1e-5 molecules, 1e-4 bulk)")
        parsers[name].add_argument("--max-steps", type=int, default=1000, help="step limit (default 1000)")
    sp = parsers["geop-study"]
    sp.add_argument("--model", required=True, help="model file: ipi-ncforces .pt or metatomic export")
    sp.add_argument("--structure", required=True, help="reference structure (any ASE-readable file)")
    sp.add_argument("--starts", type=int, default=20, help="number of displaced starts (default 20)")
    sp.add_argument("--sigma", type=float, default=0.5, help="displacement standard deviation (A; default 0.5)")
    sp.add_argument("--optimizers", default="LBFGS,FIRE", help="ASE optimizers (default LBFGS,FIRE)")
    sp.add_argument("--forces", default="conservative,direct", help="force modes (default conservative,direct)")
    sp.add_argument("--seed", type=int, default=0, help="random seed of the displacements")
    sp.add_argument("--remove-net-force", action=argparse.BooleanOptionalAction, default=True,
                    help="direct forces minus their per-structure mean (default, as metatomic-ase and i-PI do); "
                    "--no-remove-net-force optimises with the raw direct head (our .pt models only)")
    sp = parsers["jacobian"]
    sp.add_argument("--model", required=True, help="model file: ipi-ncforces .pt or metatomic export")
    sp.add_argument("--structure", required=True, nargs="+", help="structure or trajectory files (i-PI xyz, keeping its cell, or anything ASE reads)")
    sp.add_argument("--max-frames", type=int, default=5, help="frames per file used (default 5)")
    sp.add_argument("--bins", type=int, default=20, help="distance bins for lambda_ij (default 20)")
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, AnalysisWarning):
        print(f"warning: {message}", file=sys.stderr)
    elif not issubclass(category, DeprecationWarning):
        print(f"warning: {category.__name__}: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> dict:
    """Dispatch parsed arguments to the analysis modules; returns the report data."""
    out = Path(args.out)
    what = args.what
    # imported on demand: each module pulls in what it needs (matplotlib, torch, ...)
    module = importlib.import_module(f"ipi_ncforces.analysis.{what.split('-')[0]}")
    if what == "geop":
        return module.analyze_outputs(args.runs, out, args.fmax, args.max_steps)
    if what == "geop-study":
        return module.analyze_study(args.model, args.structure, out, args.starts, args.sigma,
                                  [s.strip() for s in args.optimizers.split(",") if s.strip()],
                                  [s.strip() for s in args.forces.split(",") if s.strip()],
                                  args.fmax, args.max_steps, args.seed, args.remove_net_force)
    if what == "jacobian":
        return module.analyze(args.model, args.structure, out, args.max_frames, args.bins)
    runs = [find_run(r) for r in args.runs]
    if what == "drift":
        return module.analyze(runs, out, args.natoms, args.skip_ps, args.windows)
    if what == "temperatures" and args.replicas:
        minus = [find_run(r) for r in args.minus] if args.minus else None
        return module.analyze_replicas(runs, out, args.target, args.skip_ps, args.source, args.timestep_fs,
                                       args.target_err, minus)
    if what == "temperatures" and args.minus:
        raise AnalysisInputError("--minus needs --replicas (paired replicas of two set-ups)")
    if what == "temperatures":
        return module.analyze(runs, out, args.target, args.skip_ps, args.source, args.timestep_fs)
    if what == "spectrum":
        return module.analyze(runs, out, args.max_lag_ps, args.timestep_fs, args.max_cm1)
    if what == "diffusion":
        return module.analyze(runs, out, args.species, tuple(args.fit_range), args.blocks, not args.keep_com,
                              args.timestep_fs, args.skip_ps, args.temperature_k, args.viscosity_mpas)
    if what == "rdf":
        pairs = []
        for item in args.pairs.split(","):
            parts = item.strip().split("-")
            if len(parts) != 2 or not all(parts):
                raise AnalysisInputError(f"--pairs: '{item}' is not A-B (e.g. O-H)")
            pairs.append((parts[0], parts[1]))
        return module.analyze(runs, out, pairs, args.r_max, args.bins, args.stride)
    if what == "compare":
        return module.analyze(runs, out, args.target, args.skip_ps, args.natoms, args.timestep_fs)
    raise AssertionError(what)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ipi-nc analyze``; returns the exit code (2 on unusable input)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        with warnings.catch_warnings():  # restores showwarning and the filters on exit
            warnings.showwarning = _show_warning
            warnings.simplefilter("always", AnalysisWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            data = run(args)
    except AnalysisInputError as exc:
        print(f"ipi-nc analyze {args.what}: error: {exc}", file=sys.stderr)
        return 2
    print(data["markdown"])
    print(f"\nwrote {Path(args.out) / (data['what'] + '.json')}, {data['what']}.md and "
          f"{', '.join(data.get('plots', []))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
