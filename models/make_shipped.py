"""Train the shipped water models ``models/data/water-{c,nc,m}.pt`` (reproducibly).

    .venv/bin/python -m ipi_ncforces.models.make_shipped --data data/water-train.extxyz

Trains the C (energy head), NC (direct head) and M (both heads) variants of
:class:`ipi_ncforces.models.dualhead.DualHeadPotential` with ``ipi-nc train`` on the q-TIP4P/F
reference water data (``ipi-nc reference-data``), the three in parallel as separate
single-threaded processes (one thread each is much faster than sharing threads on a busy
CPU), each under a wall-clock limit. All three use the same seed, hence the same
train / validation / test split. Afterwards it writes ``models/data/water-models.json``
with the test-set MAEs (meV/atom, meV/A per head) and prints the README table.

Without the reference data set, ``--generate-frames N`` first writes N interim
q-TIP4P/F frames (ASE Langevin MD at 300 K and 450 K, :func:`generate_interim_data`)
to ``--data``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from ipi_ncforces.models.io import load_model

VARIANTS = ("C", "NC", "M")
HERE = Path(__file__).resolve().parent


def generate_interim_data(
    path: Path, n_frames: int, seed: int = 0, temperatures_k: tuple[float, ...] = (300.0, 300.0, 450.0), stride: int = 6
) -> None:
    """Stand-in for ``ipi-nc reference-data`` when it is not available: ASE Langevin MD
    (0.5 fs steps, friction 0.01/fs) of ``inputs/water64.xyz`` with q-TIP4P/F, an equal
    share of the frames at each of ``temperatures_k`` (independent trajectories), one frame
    every ``stride`` steps after 50 fs, labelled with the reference (energy eV, forces eV/A)."""
    import ase.io
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    import torch

    from ipi_ncforces.models.ase_calculator import ModelCalculator
    from ipi_ncforces.models.qtip4pf import QTIP4PF
    from ipi_ncforces.models.structure_io import read_structure
    from ipi_ncforces.models.units import ASE_TIME_PER_FS

    torch.set_num_threads(1)
    start = read_structure(HERE.parent / "inputs" / "water64.xyz")
    frames = []
    shares = [n_frames // len(temperatures_k)] * len(temperatures_k)
    shares[0] += n_frames - sum(shares)
    for k, (temperature_k, count) in enumerate(zip(temperatures_k, shares)):
        atoms = start.copy()
        atoms.calc = ModelCalculator(QTIP4PF(), forces="conservative")
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_k, rng=np.random.default_rng(seed + 2 * k))
        dynamics = Langevin(atoms, 0.5 * ASE_TIME_PER_FS, temperature_K=temperature_k, friction=0.01 / ASE_TIME_PER_FS,
                            rng=np.random.default_rng(seed + 2 * k + 1))
        dynamics.run(100)  # 50 fs to leave the start structure / heat up
        for _ in range(count):
            dynamics.run(stride)
            frame = atoms.copy()
            frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
            frame.info["temperature_K"] = temperature_k
            frames.append(frame)
    ase.io.write(path, frames, format="extxyz")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ipi_ncforces.models.make_shipped", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/water-train.extxyz", help="reference extxyz (default data/water-train.extxyz)")
    parser.add_argument("--out-dir", default=str(HERE / "data"), help="where water-{c,nc,m}.pt go (default models/data)")
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-clock training limit per model in minutes (default 20)")
    parser.add_argument("--epochs", type=int, default=60, help="upper limit on epochs (default 60)")
    parser.add_argument("--generate-frames", type=int, default=None,
                        help="if --data does not exist, write this many interim q-TIP4P/F MD frames there first")
    parser.add_argument("--max-frames", type=int, default=None, help="use a random subset of this many frames")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of C,NC,M")
    parser.add_argument("--sequential", action="store_true", help="train one variant after the other instead of in parallel")
    parser.add_argument("--train-args", default="", help="extra options passed to every 'ipi-nc train' (quoted string)")
    return parser


def train_command(args: argparse.Namespace, variant: str, out: Path) -> list[str]:
    command = [
        sys.executable, "-m", "ipi_ncforces.models.train", "--data", args.data, "--variant", variant, "--out", str(out),
        "--epochs", str(args.epochs), "--time-limit-min", str(args.minutes), "--threads", "1",
        "--width", "32", "--vector-width", "8", "--layers", "2", "--n-rbf", "16", "--cutoff", "5.0",
        "--batch-size", "2", "--lr", "5e-3", "--energy-weight", "10", "--seed", "0",
        "--val-fraction", "0.05", "--test-fraction", "0.1",
    ]
    if args.max_frames:
        command += ["--max-frames", str(args.max_frames)]
    return command + args.train_args.split()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not Path(args.data).is_file() and args.generate_frames:
        print(f"generating {args.generate_frames} interim q-TIP4P/F frames -> {args.data}", flush=True)
        Path(args.data).parent.mkdir(parents=True, exist_ok=True)
        generate_interim_data(Path(args.data), args.generate_frames)
    if not Path(args.data).is_file():
        print(f"make_shipped: training data '{args.data}' not found; generate it with 'ipi-nc reference-data'", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    outputs = {v: out_dir / f"water-{v.lower()}.pt" for v in variants}
    logs = {v: out_dir / f"water-{v.lower()}.log" for v in variants}
    t0 = time.perf_counter()
    running = []
    for variant in variants:
        with open(logs[variant], "w") as log:
            process = subprocess.Popen(train_command(args, variant, outputs[variant]), stdout=log, stderr=subprocess.STDOUT)
        running.append((variant, process))
        print(f"training {variant} -> {outputs[variant]} (log {logs[variant]})", flush=True)
        if args.sequential:
            process.wait()
    failed = [v for v, p in running if p.wait() != 0]
    if failed:
        print(f"make_shipped: training failed for {', '.join(failed)}; see the logs in {out_dir}", file=sys.stderr)
        return 1
    summary = {}
    for variant in variants:
        meta = load_model(outputs[variant]).metadata
        summary[variant] = {k: meta[k] for k in ("test_mae", "validation_mae", "n_frames", "epochs", "training_time_s", "n_parameters", "training_data_sha256")}
        outputs[variant].with_name(outputs[variant].name + ".ckpt").unlink(missing_ok=True)
    (out_dir / "water-models.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"all models trained in {(time.perf_counter() - t0) / 60:.1f} min\n")
    print("| model | parameters | epochs | training (min) | E MAE (meV/atom) | F conservative MAE (meV/A) | F direct MAE (meV/A) |")
    print("|---|---|---|---|---|---|---|")
    for variant, s in summary.items():
        mae = s["test_mae"]
        cells = [f"{mae[k]:.1f}" if k in mae else "-" for k in ("energy_mev_per_atom", "forces_conservative_mev_per_ang", "forces_direct_mev_per_ang")]
        print(f"| water-{variant.lower()} | {s['n_parameters']} | {s['epochs']} | {s['training_time_s'] / 60:.1f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
