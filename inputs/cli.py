"""``ipi-nc inputs``: write, list and validate i-PI inputs.

    ipi-nc inputs list
    ipi-nc inputs make --out nvt.xml --ensemble nvt --thermostat svr --tau-fs 10 --forces mts --mts-m 8
    ipi-nc inputs make --shipped            # regenerate every shipped input under inputs/
    ipi-nc inputs validate inputs/nve/*.xml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ipi_ncforces.cli import absolute_paths
from ipi_ncforces.inputs import make
from ipi_ncforces.inputs.validate import InputValidationError, validate_file


def _make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ipi-nc inputs", description="Write, list and validate i-PI inputs.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the shipped inputs with their settings")
    v = sub.add_parser("validate", help="parse inputs with i-PI's own input classes (no run)")
    v.add_argument("files", nargs="+", type=Path)
    v.add_argument("--no-structure-check", action="store_true", help="do not require the structure file to exist")

    m = sub.add_parser("make", help="write one input (or --shipped: all shipped ones)")
    m.add_argument("--shipped", action="store_true", help="regenerate all shipped inputs (into --out-dir)")
    m.add_argument("--out-dir", type=Path, default=None, help="folder for --shipped (default: the inputs package)")
    m.add_argument("--out", type=Path, help="output XML file (single variant)")
    m.add_argument("--from-shipped", metavar="REL", help="start from a shipped variant, e.g. nvt/svr-tau10-mts.xml")
    m.add_argument("--name", help="run name: output prefix and socket addresses (default: --out stem)")
    m.add_argument("--motion", choices=("md", "geop"))
    m.add_argument("--ensemble", choices=("nve", "nvt"))
    m.add_argument("--thermostat", choices=make.MD_THERMOSTATS + make.PIMD_THERMOSTATS)
    m.add_argument("--tau-fs", type=float, help="thermostat time constant (fs)")
    m.add_argument("--forces", choices=make.FORCES)
    m.add_argument("--mts-m", type=int, help="MTS inner steps per outer step M")
    m.add_argument("--dt-fs", type=float, help="inner time step (fs); MTS outer step = M * dt")
    m.add_argument("--beads", type=int, help="number of path-integral beads")
    m.add_argument("--contract-beads", type=int, help="evaluate the (slow) forces on this many beads")
    m.add_argument("--steps", type=int, help="total (outer) steps, or optimizer iterations for geop")
    m.add_argument("--temperature-k", type=float, help="target / initial temperature (K)")
    m.add_argument("--seed", type=int, help="random seed")
    m.add_argument("--structure", help="structure file as written into the XML (relative to the XML's folder)")
    m.add_argument("--sockets", choices=make.SOCKETS, help="unix / inet sockets, or ffdirect (in-process, no driver)")
    m.add_argument("--host", help="inet host")
    m.add_argument("--port", type=int, help="inet port of the first forcefield (next: +1)")
    m.add_argument("--latency-s", type=float, help="i-PI socket polling latency (s)")
    m.add_argument("--model", help="model file (ffdirect only)")
    m.add_argument("--species", help="comma-separated species for per-species temperatures, e.g. H,O")
    m.add_argument("--geop-mode", choices=make.GEOP_MODES)
    m.add_argument("--geop-fmax-ev-ang", type=float, help="force convergence (eV/A, max component)")
    m.add_argument("--geop-energy-ev", type=float, help="energy-change convergence per atom (eV)")
    m.add_argument("--geop-step-ang", type=float, help="position-change convergence (A)")
    for out in ("properties", "positions", "velocities", "forces", "checkpoint"):
        m.add_argument(f"--{out}-fs", type=float, help=f"{out} output period (fs)")
    return p


_FIELDS = {f.name for f in make.dataclasses.fields(make.Variant)}


def _variant_from_args(args: argparse.Namespace) -> make.Variant:
    changes = {k: v for k, v in vars(args).items() if k in _FIELDS and v is not None and k != "species"}
    if args.species:
        changes["species"] = tuple(s.strip() for s in args.species.split(",") if s.strip())
    if args.from_shipped:
        shipped = make.shipped_variants()
        if args.from_shipped not in shipped:
            raise make.VariantError(f"--from-shipped '{args.from_shipped}' is not a shipped input (see 'ipi-nc inputs list')")
        base = shipped[args.from_shipped]
    else:
        base = make.Variant(name="run")
    if "name" not in changes:
        changes["name"] = args.out.stem
    if "beads" in changes and changes["beads"] > 1 and "contract_beads" not in changes:
        changes["contract_beads"] = 0
    return make.with_changes(base, **changes)


def main(argv: list[str] | None = None) -> int:
    args = _make_parser().parse_args(argv)
    # --model goes into <ffdirect> parameters, read by i-PI wherever it runs; --structure stays
    # as typed: it is written relative to the XML's folder, as the shipped inputs are
    absolute_paths(args, "model")
    try:
        if args.command == "list":
            for rel, v in make.shipped_variants().items():
                extra = f" {v.thermostat} tau={v.tau_fs:g} fs" if v.thermostat else ""
                if v.motion == "geop":
                    extra = f" {v.geop_mode} fmax={v.geop_fmax_ev_ang:g} eV/A"
                print(f"{rel:32s} {v.motion}/{v.ensemble if v.motion == 'md' else 'geop'} forces={v.forces}"
                      f"{extra} beads={v.beads} dt={v.outer_dt_fs:g} fs steps={v.steps}")
            return 0
        if args.command == "validate":
            bad = 0
            for f in args.files:
                try:
                    validate_file(f, check_structure=not args.no_structure_check)
                    print(f"ok   {f}")
                except InputValidationError as exc:
                    print(f"FAIL {exc}", file=sys.stderr)
                    bad += 1
            return 2 if bad else 0
        if args.shipped:
            for path in make.write_shipped(args.out_dir):
                print(path)
            return 0
        if args.out is None:
            print("ipi-nc inputs make: give --out FILE.xml (or --shipped)", file=sys.stderr)
            return 2
        path = make.write(_variant_from_args(args), args.out)
        print(path)
        return 0
    except (make.VariantError, InputValidationError) as exc:
        print(f"ipi-nc inputs: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
