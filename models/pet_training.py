"""Train the PET-C, PET-NC and PET-M water models with metatrain (``mtt train``).

PET-C has one target, ``energy`` (forces and stress by autograd); PET-NC has the direct
targets ``non_conservative_force`` (eV/A, per atom) and ``non_conservative_stress``
(eV/A^3); PET-M has all three on one backbone. All three read the same extxyz that
``ipi-nc reference-data`` writes (energy in eV, forces in eV/A, stress in eV/A^3).

This module only writes metatrain options and runs metatrain in-process; it imports
nothing from ipi_ncforces, so ``python models/pet_training.py`` runs on a machine where
only metatrain is installed (the GPU machine the shipped models were trained on).

With a time budget, two pieces of metatrain 2026.4's PET trainer are replaced for the
run: the learning-rate schedule (linear warm-up, then cosine decay to zero) follows the
clock instead of the step count, and the epoch loop ends when the budget is spent; the
final checkpoint, export and test evaluation then run as usual.
"""

from __future__ import annotations

import argparse
import builtins
import math
import sys
import time
from pathlib import Path

KINDS = ("C", "NC", "M")

#: PET size of the shipped models (metatrain's defaults are d_pet 128, d_node 256, 8 heads).
PET_HYPERS = dict(
    cutoff=4.5, d_pet=64, d_head=64, d_node=128, d_feedforward=128,
    num_heads=4, num_attention_layers=2, num_gnn_layers=2,
)

_ENERGY = {"quantity": "energy", "key": "energy", "unit": "eV", "forces": {"key": "forces"}, "stress": {"key": "stress"}}
_NC_FORCE = {"key": "forces", "unit": "eV/Angstrom", "sample_kind": "atom", "type": {"cartesian": {"rank": 1}}}
_NC_STRESS = {"key": "stress", "unit": "eV/Angstrom^3", "sample_kind": "system", "type": {"cartesian": {"rank": 2}}}


def targets_for(kind: str) -> dict:
    """metatrain ``targets`` of model kind C, NC or M."""
    if kind not in KINDS:
        raise ValueError(f"model kind '{kind}' is not one of {', '.join(KINDS)}")
    targets = {}
    if kind in ("C", "M"):
        targets["energy"] = _ENERGY
    if kind in ("NC", "M"):
        targets["non_conservative_force"] = _NC_FORCE
        targets["non_conservative_stress"] = _NC_STRESS
    return targets


def _dataset(path: str | Path, kind: str) -> dict:
    return {"systems": {"read_from": str(path), "length_unit": "angstrom"}, "targets": targets_for(kind)}


def options_for(
    kind: str,
    train_xyz: str | Path,
    validation_xyz: str | Path,
    test_xyz: str | Path | None = None,
    *,
    epochs: int = 1000,
    batch_size: int = 8,
    learning_rate: float = 3e-4,
    seed: int = 42,
    device: str | None = None,
    num_workers: int = 2,
    hypers: dict | None = None,
) -> dict:
    """metatrain options (the content of ``options.yaml``) for model kind C, NC or M.

    Losses are MSE with weight 1 on every target and gradient (metatrain scales the
    targets). ``device`` None lets metatrain choose (CUDA when there is one)."""
    loss = {}
    if kind in ("C", "M"):
        loss["energy"] = {"type": "mse", "weight": 1.0, "forces": {"type": "mse", "weight": 1.0}, "stress": {"type": "mse", "weight": 1.0}}
    if kind in ("NC", "M"):
        loss["non_conservative_force"] = {"type": "mse", "weight": 1.0}
        loss["non_conservative_stress"] = {"type": "mse", "weight": 1.0}
    options = {
        "seed": seed,
        "base_precision": 32,
        "architecture": {
            "name": "pet",
            "model": {**PET_HYPERS, **(hypers or {})},
            "training": {
                "batch_size": batch_size, "num_epochs": epochs, "learning_rate": learning_rate,
                "num_workers": num_workers, "checkpoint_interval": 10, "log_interval": 1, "loss": loss,
            },
        },
        "training_set": _dataset(train_xyz, kind),
        "validation_set": _dataset(validation_xyz, kind),
        "test_set": _dataset(test_xyz, kind) if test_xyz else 0.0,
    }
    if device:
        options["device"] = device
    return options


class _Budget:
    """Clock of a time-budgeted run: starts when the trainer builds its scheduler."""

    def __init__(self, budget_s: float, warmup_fraction: float):
        self.budget_s = budget_s
        self.warmup_fraction = warmup_fraction
        self.t0: float | None = None
        self.epochs_run = 0

    def fraction(self) -> float:
        return 0.0 if self.t0 is None else (time.monotonic() - self.t0) / self.budget_s

    def lr_factor(self, _step: int) -> float:
        """Linear warm-up over ``warmup_fraction`` of the budget, then cosine decay to 0."""
        f = self.fraction()
        if f < self.warmup_fraction:
            return max(f / self.warmup_fraction, 1e-3)
        progress = min(1.0, (f - self.warmup_fraction) / (1.0 - self.warmup_fraction))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def epochs(self, start: int, stop: int):
        """The trainer's epoch loop: epochs from ``start`` until ``stop`` or the budget."""
        for epoch in builtins.range(start, stop):
            if self.fraction() >= 1.0:
                return
            self.epochs_run += 1
            yield epoch


def _install_budget(budget: _Budget) -> None:
    """Make metatrain's PET trainer follow ``budget`` (see the module docstring)."""
    from torch.optim.lr_scheduler import LambdaLR

    import metatrain.pet.trainer as pet_trainer

    def get_scheduler(optimizer, train_hypers, steps_per_epoch):
        budget.t0 = time.monotonic()
        return LambdaLR(optimizer, lr_lambda=budget.lr_factor)

    def budget_range(*args):
        if len(args) == 2:  # only the epoch loop calls range(start, stop) in that module
            return budget.epochs(*args)
        return builtins.range(*args)

    pet_trainer.get_scheduler = get_scheduler
    pet_trainer.range = budget_range


def train(options: dict, workdir: str | Path, out_name: str = "model.pt", time_budget_s: float | None = None) -> Path:
    """Run ``mtt train`` on ``options`` in ``workdir``; returns the exported model path
    (``workdir/out_name``; the checkpoint is beside it as ``.ckpt``). metatrain's log is
    ``workdir/outputs/*/*/train.log``."""
    import os

    import yaml

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "options.yaml").write_text(yaml.safe_dump(options, sort_keys=False))
    if time_budget_s:
        _install_budget(_Budget(time_budget_s, warmup_fraction=0.03))
    from metatrain.__main__ import main as mtt_main

    cwd = os.getcwd()
    argv = sys.argv
    try:
        os.chdir(workdir)
        sys.argv = ["mtt", "train", "options.yaml", "-o", out_name]
        mtt_main()
    finally:
        sys.argv = argv
        os.chdir(cwd)
    return workdir / out_name


def split_frames(data_xyz: str | Path, out_dir: str | Path, validation_fraction: float = 0.05,
                 test_fraction: float = 0.1, seed: int = 0) -> dict[str, Path]:
    """Split an extxyz at random (``seed``) into train / validation / test files in
    ``out_dir``; returns their paths by name. The frames keep their order within each file."""
    import ase.io
    import numpy as np

    frames = ase.io.read(data_xyz, ":")
    order = np.random.default_rng(seed).permutation(len(frames))
    n_val = max(1, round(validation_fraction * len(frames)))
    n_test = round(test_fraction * len(frames))
    parts = {"test": order[:n_test], "validation": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, idx in parts.items():
        if len(idx):
            paths[name] = out_dir / f"{name}.extxyz"
            ase.io.write(paths[name], [frames[i] for i in sorted(idx)], format="extxyz")
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="pet_training",
        description="Train one PET water model (C, NC or M) with metatrain; writes WORKDIR/model.pt and model.ckpt.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--train", required=True, help="training extxyz (eV, eV/A, eV/A^3)")
    p.add_argument("--validation", required=True, help="validation extxyz")
    p.add_argument("--test", help="test extxyz (metatrain reports its MAEs at the end)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--epochs", type=int, default=1000, help="epochs (an upper bound with --time-budget-s)")
    p.add_argument("--time-budget-s", type=float, help="wall seconds of training; the learning rate follows the clock")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", help="cpu or cuda (default: metatrain's choice)")
    p.add_argument("--num-workers", type=int, default=2, help="data-loader processes")
    p.add_argument("--d-pet", type=int, help="override PET width d_pet (and d_head); d_node = d_feedforward = 2 d_pet")
    args = p.parse_args(argv)
    hypers = {}
    if args.d_pet:
        hypers = dict(d_pet=args.d_pet, d_head=args.d_pet, d_node=2 * args.d_pet, d_feedforward=2 * args.d_pet)
    opts = options_for(
        args.kind, Path(args.train).resolve(), Path(args.validation).resolve(),
        Path(args.test).resolve() if args.test else None, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.lr, seed=args.seed, device=args.device, num_workers=args.num_workers, hypers=hypers,
    )
    train(opts, args.workdir, time_budget_s=args.time_budget_s)
    return 0


if __name__ == "__main__":
    # run as a script, this folder is first on sys.path and its metatomic.py would shadow
    # the metatomic package
    sys.path = [d for d in sys.path if Path(d or ".").resolve() != Path(__file__).resolve().parent]
    sys.exit(main())
