"""The ``ipi-nc`` command: one entry point, one subcommand per job.

Each subcommand lives in the package that owns the job and is imported only when
called, so ``ipi-nc analyze`` never loads torch and ``ipi-nc driver`` never loads
matplotlib.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

# subcommand -> ("module:function", one-line summary). Each function takes argv.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("ipi_ncforces.models.train:main", "train a C / NC / M potential on an extxyz file"),
    "train-pet": ("ipi_ncforces.ipi_driver.train_pet:main", "train PET-C / PET-NC / PET-M water models with metatrain"),
    "reference-data": ("ipi_ncforces.ipi_driver.reference_data:main", "generate q-TIP4P/F water training data with i-PI"),
    "driver": ("ipi_ncforces.ipi_driver.cli:main", "serve model forces to a running i-PI over a socket"),
    "export": ("ipi_ncforces.models.metatomic_export:main", "write a C / NC / M model as a metatomic TorchScript file"),
    "run": ("ipi_ncforces.ipi_driver.runner:main", "start i-PI and its drivers for an input, show progress"),
    "inputs": ("ipi_ncforces.inputs.cli:main", "write and validate i-PI inputs (NVE/NVT/PIMD/MTS/geop)"),
    "analyze": ("ipi_ncforces.analysis.cli:main", "drift, temperatures, spectra, diffusion, g(r), geop, jacobian"),
    "demo": ("ipi_ncforces.inputs.demo:main", "NVE conservative vs direct vs MTS: drift table and plot"),
    "audit": ("ipi_ncforces.benchmarks.audit:main", "the paper's artifact battery for one model: report md/html/json"),
    "bench": ("ipi_ncforces.benchmarks.cli:main", "cost of conservation, MTS speed-up, driver overhead"),
}


def absolute_paths(args, *names: str) -> None:
    """Make the path options ``names`` of parsed ``args`` absolute, in place (``~`` expanded,
    relative to the current directory; lists element by element; None or absent kept; a
    str stays a str, a Path a Path). Subcommands call it right after ``parse_args``: i-PI
    and the drivers run in a workdir and i-PI inputs hold the paths, so no path the user
    typed may stay relative once anything runs in another directory."""

    def absolute(value):
        path = Path(value).expanduser().resolve()
        return path if isinstance(value, Path) else str(path)

    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            setattr(args, name, [absolute(v) for v in value] if isinstance(value, list) else absolute(value))


def _usage() -> str:
    lines = ["usage: ipi-nc <command> [options]   (ipi-nc <command> --help for details)", "", "commands:"]
    width = max(len(name) for name in SUBCOMMANDS)
    for name, (_, summary) in SUBCOMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {summary}")
    lines += ["", "Units: models use eV and Angstrom; i-PI talks atomic units (Hartree, Bohr) on the wire."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``ipi-nc <command> ...`` to the owning module; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"ipi-nc: unknown command '{name}'; run 'ipi-nc --help' for the list", file=sys.stderr)
        return 2
    module_name, func_name = SUBCOMMANDS[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
