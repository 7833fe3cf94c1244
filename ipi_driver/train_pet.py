"""``ipi-nc train-pet``: PET-C, PET-NC and PET-M water models in one command.

Steps, each skipped when its output already exists (so an interrupted run continues):
1. q-TIP4P/F data with ``ipi-nc reference-data`` (unless ``--data`` is given);
2. a seeded train / validation / test split (OUT/split/*.extxyz);
3. one metatrain run per model kind (OUT/pet-KIND/, ``models/pet_training.py``), each in
   its own process, its epochs shown as one line each with the elapsed time and an ETA;
4. test-set MAEs of each exported model with our own metatomic evaluator, the parameter
   count, the file size, the training time and the data hash, written to
   OUT/water-models.json (the layout of models/data/water-models.json) and printed.

The models are metatomic files: ``ipi-nc run --model OUT/pet-m.pt``, i-PI's ``metatomic``
PES and LAMMPS serve them as they are.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from ipi_ncforces.cli import absolute_paths
from ipi_ncforces.inputs import WATER64_XYZ
from ipi_ncforces.ipi_driver import launch
from ipi_ncforces.models.pet_training import KINDS, PET_HYPERS, split_frames
from ipi_ncforces.models.train import file_sha256

PROG = "ipi-nc train-pet"
_EPOCH_LINE = re.compile(r"Epoch:\s+(\d+) \|.*")
_VAL_FORCES = re.compile(r"validation (forces|non_conservative_force) MAE(?: \(per atom\))?:\s+([\d.]+) meV/A")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Train PET water models with metatrain (needs `pip install ipi-ncforces[pet]`): PET-C (energy; "
            "forces and stress by autograd), PET-NC (direct forces and stress) and PET-M (both on one backbone), "
            "on q-TIP4P/F data (energy eV, forces eV/A, stress eV/A^3). Writes OUT/pet-c.pt, pet-nc.pt, pet-m.pt "
            "(metatomic) and OUT/water-models.json with test-set MAEs (meV/atom, meV/A). Rerun the same command "
            "to continue after an interruption: finished steps are kept."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=["M", "C", "NC"], help="models to train")
    data = p.add_argument_group("data")
    data.add_argument("--data", type=Path, help="labelled extxyz to use (default: generate OUT/water-train.extxyz)")
    data.add_argument("--frames", type=int, default=1200, help="frames to generate (192 atoms each with the default box)")
    data.add_argument("--structure", type=Path, default=WATER64_XYZ, help="start structure of the data generation")
    data.add_argument("--validation-fraction", type=float, default=0.05)
    data.add_argument("--test-fraction", type=float, default=0.1)
    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=1000, help="epochs (an upper bound with --time-budget-s)")
    train.add_argument("--time-budget-s", type=float, help="wall seconds per model; the learning rate follows the clock")
    train.add_argument("--batch-size", type=int, default=8, help="structures per step")
    train.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    train.add_argument("--d-pet", type=int, default=PET_HYPERS["d_pet"],
                       help="PET width d_pet (= d_head; d_node = d_feedforward = 2 d_pet)")
    train.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    train.add_argument("--threads", type=int, default=2, help="torch threads per training process")
    train.add_argument("--num-workers", type=int, default=0, help="data-loader processes per training")
    train.add_argument("--seed", type=int, default=42)
    return p


def _fail(message: str, code: int = 2) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def _train_one(kind: str, split: dict[str, Path], workdir: Path, args: argparse.Namespace) -> float:
    """Run one metatrain training in a subprocess; returns its wall time (s). Prints one
    line per epoch; raises RuntimeError with the log's last line when it fails."""
    cmd = [
        sys.executable, "-m", "ipi_ncforces.models.pet_training", kind,
        "--train", split["train"], "--validation", split["validation"], "--test", split["test"],
        "--workdir", workdir, "--epochs", args.epochs, "--batch-size", args.batch_size, "--lr", args.lr,
        "--seed", args.seed, "--num-workers", args.num_workers, "--d-pet", args.d_pet,
    ]
    if args.time_budget_s:
        cmd += ["--time-budget-s", args.time_budget_s]
    if args.device:
        cmd += ["--device", args.device]
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "train-stdout.log"
    t0 = time.monotonic()
    first_epoch_s = None
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=launch.thread_env(args.threads))
        for line in proc.stdout:
            log.write(line)
            match = _EPOCH_LINE.search(line)
            if not match:
                continue
            epoch = int(match.group(1))
            elapsed = time.monotonic() - t0
            first_epoch_s = first_epoch_s or elapsed
            if args.time_budget_s:
                eta = max(0.0, args.time_budget_s - elapsed + first_epoch_s)
            else:
                eta = elapsed / (epoch + 1) * (args.epochs - epoch - 1)
            val = _VAL_FORCES.findall(line)
            val_text = "  ".join(f"val {'F_cons' if k == 'forces' else 'F_direct'} {v} meV/A" for k, v in val)
            print(f"  PET-{kind} epoch {epoch + 1}: {val_text}  [{elapsed:.0f} s, ETA {eta:.0f} s]", flush=True)
        code = proc.wait()
    if code != 0:
        tail = [ln for ln in log_path.read_text().splitlines() if ln.strip()][-1:]
        raise RuntimeError(f"metatrain failed for PET-{kind} (exit {code}): {tail[0] if tail else ''} (see {log_path})")
    return time.monotonic() - t0


def _evaluation_set(split: dict[str, Path], data: Path) -> dict:
    """What every model's record is measured on: validation and test frames, the split
    sizes and the data hash (read once per command)."""
    import ase.io

    frames = {name: ase.io.read(path, ":") for name, path in split.items()}
    return {"frames": frames, "n_frames": {name: len(f) for name, f in frames.items()},
            "training_data_sha256": file_sha256(data)}


def _record(model: Path, evaluation: dict, training_time_s: float, args) -> dict:
    from ipi_ncforces.models.errors import mean_absolute_errors
    from ipi_ncforces.models.loader import load_backend

    backend = load_backend(model)
    return {
        "architecture": "PET (metatrain)",
        "test_mae": mean_absolute_errors(backend, evaluation["frames"]["test"]),
        "validation_mae": mean_absolute_errors(backend, evaluation["frames"]["validation"]),
        "n_frames": evaluation["n_frames"],
        "training_time_s": training_time_s,
        "time_budget_s": args.time_budget_s,
        "device": args.device or "default",
        "n_parameters": sum(p.numel() for p in backend.atomistic.parameters()),
        "file_size_mb": model.stat().st_size / 1e6,
        "hypers": {**PET_HYPERS, "d_pet": args.d_pet, "batch_size": args.batch_size, "lr": args.lr},
        "training_data_sha256": evaluation["training_data_sha256"],
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    absolute_paths(args, "out", "data", "structure")  # metatrain runs in OUT/pet-KIND
    try:
        import metatrain  # noqa: F401
    except ImportError:
        return _fail("metatrain is not installed: pip install 'ipi-ncforces[pet]'")
    for name in ("frames", "epochs", "batch_size", "d_pet", "threads"):
        if getattr(args, name) < 1:
            return _fail(f"--{name.replace('_', '-')} must be at least 1")
    if args.data is not None and not args.data.is_file():
        return _fail(f"data file '{args.data}' (--data) does not exist")
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data or args.out / "water-train.extxyz"
    if not data.is_file():
        print(f"{PROG}: generating {args.frames} q-TIP4P/F frames -> {data}", flush=True)
        from ipi_ncforces.ipi_driver.reference_data import main as reference_data

        code = reference_data(["--out", str(data), "--frames", str(args.frames), "--structure", str(args.structure)])
        if code:
            return code
    split_dir = args.out / "split"
    split = {name: split_dir / f"{name}.extxyz" for name in ("train", "validation", "test")}
    if not all(p.is_file() for p in split.values()):
        split = split_frames(data, split_dir, args.validation_fraction, args.test_fraction, seed=args.seed)
        if set(split) != {"train", "validation", "test"}:
            return _fail(f"'{data}' has too few frames for a train / validation / test split")
    record_path = args.out / "water-models.json"
    records = json.loads(record_path.read_text()) if record_path.is_file() else {}
    evaluation = None
    for kind in args.kinds:
        model = args.out / f"pet-{kind.lower()}.pt"
        if model.is_file() and f"PET-{kind}" in records:
            print(f"{PROG}: PET-{kind} already trained ({model}), kept")
            continue
        print(f"{PROG}: training PET-{kind} (log: {args.out / f'pet-{kind.lower()}'}/train-stdout.log)", flush=True)
        try:
            seconds = _train_one(kind, split, args.out / f"pet-{kind.lower()}", args)
        except RuntimeError as exc:
            return _fail(str(exc), 1)
        (args.out / f"pet-{kind.lower()}" / "model.pt").replace(model)
        evaluation = evaluation or _evaluation_set(split, data)
        records[f"PET-{kind}"] = _record(model, evaluation, seconds, args)
        record_path.write_text(json.dumps(records, indent=2) + "\n")
        maes = "  ".join(f"{k} {v:.2f}" for k, v in records[f"PET-{kind}"]["test_mae"].items())
        print(f"{PROG}: PET-{kind} -> {model}: test {maes}; {seconds:.0f} s")
    print(f"{PROG}: records in {record_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
