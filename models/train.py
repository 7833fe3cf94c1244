"""``ipi-nc train``: fit a C / NC / M dual-head potential to an extxyz file.

    ipi-nc train --data water.extxyz --variant M --out water-m.pt --epochs 40

Reads any extended-xyz file with per-frame energies (eV) and per-atom forces (eV/A), as
ASE reads them (``--energy-key`` / ``--forces-key`` for custom column names, e.g. a
user's DFT data). Frames are split into train / validation / test sets; the loss is the
mean squared per-atom energy error plus the mean squared force error of each force head
(both heads for M), in units of the data's force scale. Every epoch prints the losses,
validation MAEs, elapsed time and an ETA; the best model on the validation set is
written to ``--out`` as soon as it improves, a resumable checkpoint to
``--out``.ckpt. At the end the test-set MAEs (meV/atom, meV/A per head) are printed and
stored in the model metadata together with the SHA-256 of the data file.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ipi_ncforces.models.base import ENERGY_HEAD, Batch
from ipi_ncforces.models.modes import CONSERVATIVE, DIRECT, SINGLE_FORCE_MODES
from ipi_ncforces.models.dualhead import VARIANT_HEADS, DualHeadPotential, count_parameters
from ipi_ncforces.models.io import save_model
from ipi_ncforces.models.neighbors import build_edges


class TrainingDataError(ValueError):
    """Unusable training data; the message is one line naming the file."""


@dataclass
class Frame:
    """One structure: species (N,), positions (N,3) A, cell (3,3) A rows (zeros if not
    periodic), energy eV (NaN if unknown), forces (N,3) eV/A."""

    species: torch.Tensor
    positions: torch.Tensor
    cell: torch.Tensor
    energy_ev: float
    forces: torch.Tensor


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (identifies the training data in model metadata)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_frames(
    path: str | Path, *, need_energy: bool = True, energy_key: str | None = None, forces_key: str | None = None
) -> list[Frame]:
    """Frames of an extxyz file with forces (eV/A) and, if ``need_energy``, energies (eV).

    ``energy_key`` / ``forces_key`` name an ``info`` / ``arrays`` entry to use instead
    of the calculator results ASE attaches to standard ``energy`` / ``forces`` columns.
    """
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise TrainingDataError(f"training data '{path}' does not exist; pass an extxyz file with --data")
    try:
        atoms_list = ase.io.read(path, index=":", format="extxyz")
    except Exception as exc:
        raise TrainingDataError(f"cannot read '{path}' as extxyz: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not atoms_list:
        raise TrainingDataError(f"'{path}' holds no frames")
    frames = []
    for index, atoms in enumerate(atoms_list):
        calc = atoms.calc
        results = calc.results if calc is not None else {}
        forces = atoms.arrays.get(forces_key) if forces_key else results.get("forces", atoms.arrays.get("forces"))
        if forces is None:
            hint = f"no '{forces_key}' array" if forces_key else "no forces"
            raise TrainingDataError(f"frame {index} of '{path}' has {hint}; every frame needs per-atom forces "
                                    "in eV/A (see --forces-key)")
        energy = atoms.info.get(energy_key) if energy_key else results.get("energy", atoms.info.get("energy"))
        if energy is None:
            if need_energy:
                raise TrainingDataError(f"frame {index} of '{path}' has no energy; variants C and M need "
                                        "energies in eV (see --energy-key)")
            energy = float("nan")
        cell = atoms.cell.array if atoms.pbc.any() else 0.0 * atoms.cell.array
        frames.append(Frame(species=torch.as_tensor(atoms.numbers, dtype=torch.long),
                            positions=torch.as_tensor(atoms.positions, dtype=torch.float64),
                            cell=torch.as_tensor(cell, dtype=torch.float64), energy_ev=float(energy),
                            forces=torch.as_tensor(forces, dtype=torch.float64)))
    return frames


def split_indices(n_frames: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[list[int], list[int], list[int]]:
    """Random train / validation / test frame indices (at least one frame in each)."""
    if n_frames < 3:
        raise TrainingDataError(f"need at least 3 frames for train/validation/test, got {n_frames}")
    order = torch.randperm(n_frames, generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = max(1, round(test_fraction * n_frames))
    n_val = max(1, round(val_fraction * n_frames))
    if n_test + n_val >= n_frames:
        raise TrainingDataError(f"--val-fraction {val_fraction} and --test-fraction {test_fraction} leave no "
                                f"training frames out of {n_frames}")
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]


def make_batches(frames: list[Frame], indices: list[int], batch_size: int, shuffle: bool, generator: torch.Generator | None = None) -> list[list[int]]:
    """Groups of at most ``batch_size`` frame indices sharing one species list (a Batch needs that)."""
    if shuffle:
        indices = [indices[k] for k in torch.randperm(len(indices), generator=generator).tolist()]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in indices:
        groups.setdefault(tuple(frames[i].species.tolist()), []).append(i)
    batches = []
    for members in groups.values():
        batches += [members[k : k + batch_size] for k in range(0, len(members), batch_size)]
    if shuffle:
        batches = [batches[k] for k in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def to_batch(frames: list[Frame], indices: list[int], device: torch.device, dtype: torch.dtype) -> tuple[Batch, torch.Tensor, torch.Tensor]:
    """(Batch, energies (B,) eV, forces (B,N,3) eV/A) on ``device`` in ``dtype``."""
    chosen = [frames[i] for i in indices]
    batch = Batch(
        species=chosen[0].species.to(device),
        positions=torch.stack([f.positions for f in chosen]).to(device=device, dtype=dtype),
        cells=torch.stack([f.cell for f in chosen]).to(device=device, dtype=dtype),
    )
    energies = torch.tensor([f.energy_ev for f in chosen], device=device, dtype=dtype)
    forces = torch.stack([f.forces for f in chosen]).to(device=device, dtype=dtype)
    return batch, energies, forces


def data_statistics(frames: list[Frame], indices: list[int], species: tuple[int, ...], cutoff: float, need_energy: bool) -> dict:
    """Per-species energy offsets (eV/atom, least squares on composition), force RMS
    (eV/A) as output scale, and the mean neighbour count within ``cutoff``."""
    counts = torch.stack([torch.stack([(frames[i].species == z).sum() for z in species]) for i in indices]).to(torch.float64)
    if need_energy:
        energies = torch.tensor([frames[i].energy_ev for i in indices], dtype=torch.float64)
        # minimum-norm solution: with one composition (bulk water) the offsets are not unique
        offsets = (torch.linalg.pinv(counts) @ energies).tolist()
    else:
        offsets = [0.0] * len(species)
    force_rms = torch.sqrt(torch.cat([frames[i].forces.reshape(-1) for i in indices]).pow(2).mean()).item()
    sample = [frames[i] for i in indices[:5]]
    n_pairs = sum(
        int(build_edges(Batch(f.species, f.positions.unsqueeze(0), f.cell.unsqueeze(0)), cutoff).centers.numel())
        for f in sample
    )
    n_atoms = sum(int(f.species.numel()) for f in sample)
    return {
        "energy_offsets_ev": offsets,
        "scale_ev": force_rms if force_rms > 0 else 1.0,
        "avg_neighbors": max(1.0, n_pairs / n_atoms),
    }


def predict(model: DualHeadPotential, batch: Batch, create_graph: bool) -> dict[str, torch.Tensor]:
    """Energy (B,) eV, conservative forces and direct forces (B,N,3) eV/A with their graph
    kept (``create_graph``) for training. Unlike :func:`ipi_ncforces.models.base.evaluate` this
    does not detach the direct forces, so one loss can train both heads."""
    positions = batch.positions.detach().clone().requires_grad_(ENERGY_HEAD in model.heads)
    with torch.enable_grad():
        out = model(Batch(batch.species, positions, batch.cells), model.heads)
        if ENERGY_HEAD in model.heads:
            (grad,) = torch.autograd.grad(out["energy"].sum(), positions, create_graph=create_graph)
            out["forces"] = -grad
    return out


def batch_loss(model, batch, energies, forces, energy_weight: float, force_weight: float) -> tuple[torch.Tensor, dict]:
    """Weighted MSE loss (dimensionless, in units of the model's force scale) and the
    absolute errors summed for MAEs: energy eV/atom, forces eV/A per head."""
    out = predict(model, batch, create_graph=model.training)
    scale = model.scale_ev
    n_atoms = batch.n_atoms
    loss = torch.zeros((), dtype=batch.positions.dtype, device=batch.positions.device)
    sums: dict[str, float] = {}
    if "energy" in out:
        de = (out["energy"] - energies) / n_atoms
        loss = loss + energy_weight * (de / scale).pow(2).mean()
        sums["energy"] = de.abs().sum().item()
    for key, head in (("forces", CONSERVATIVE), ("direct_forces", DIRECT)):
        if key in out:
            df = out[key] - forces
            loss = loss + force_weight * (df / scale).pow(2).mean()
            sums[head] = df.abs().sum().item()
    return loss, sums


def mean_absolute_errors(model, frames, indices, batch_size, device, dtype) -> dict[str, float]:
    """MAEs over ``indices``: energy_mev_per_atom, forces_conservative_mev_per_ang,
    forces_direct_mev_per_ang (those the model has)."""
    model.eval()
    totals: dict[str, float] = {}
    n_frames = n_components = 0
    for members in make_batches(frames, indices, batch_size, shuffle=False):
        batch, energies, forces = to_batch(frames, members, device, dtype)
        _, sums = batch_loss(model, batch, energies, forces, 1.0, 1.0)
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + v
        n_frames += len(members)
        n_components += forces.numel()
    result = {}
    if "energy" in totals:
        result["energy_mev_per_atom"] = 1000.0 * totals["energy"] / n_frames
    for head in SINGLE_FORCE_MODES:
        if head in totals:
            result[f"forces_{head}_mev_per_ang"] = 1000.0 * totals[head] / n_components
    return result


def format_maes(maes: dict[str, float]) -> str:
    labels = {
        "energy_mev_per_atom": ("E", "meV/atom"),
        "forces_conservative_mev_per_ang": ("F_cons", "meV/A"),
        "forces_direct_mev_per_ang": ("F_direct", "meV/A"),
    }
    return "  ".join(f"{labels[k][0]} {v:.2f} {labels[k][1]}" for k, v in maes.items())


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipi-nc train",
        description="Train a dual-head potential (C: energy head, NC: direct-force head, M: both) on an extxyz "
        "file with energies (eV) and forces (eV/A). Writes the best-validation model to --out and "
        "reports test-set MAEs in meV/atom and meV/A.",
    )
    parser.add_argument("--data", required=True, help="extended-xyz file with energies and forces (ASE-readable)")
    parser.add_argument("--variant", required=True, choices=sorted(VARIANT_HEADS), help="C, NC or M")
    parser.add_argument("--out", required=True, help="output model file (.pt); a resumable checkpoint goes to OUT.ckpt")
    parser.add_argument("--epochs", type=int, default=40, help="passes over the training frames (default 40)")
    parser.add_argument("--time-limit-min", type=float, default=None,
                        help="stop after this many minutes; the learning-rate schedule follows the clock (default: none)")
    parser.add_argument("--batch-size", type=int, default=4, help="frames per optimizer step (default 4)")
    parser.add_argument("--lr", type=float, default=3e-3, help="initial Adam learning rate (default 3e-3), cosine-decayed to 2%%")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="fraction of frames for validation (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="fraction of frames held out for the test MAE (default 0.1)")
    parser.add_argument("--max-frames", type=int, default=None, help="use at most this many frames of the file (random subset)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, initialisation and shuffling (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:K (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="training precision (default float32)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--cutoff", type=float, default=5.0, help="neighbour cutoff in Angstrom (default 5.0)")
    parser.add_argument("--width", type=int, default=32, help="feature channels (default 32)")
    parser.add_argument("--vector-width", type=int, default=8, help="vector feature channels (default 8)")
    parser.add_argument("--layers", type=int, default=2, help="message-passing layers (default 2)")
    parser.add_argument("--n-rbf", type=int, default=16, help="radial basis functions (default 16)")
    parser.add_argument("--energy-weight", type=float, default=1.0, help="weight of the per-atom energy loss (default 1)")
    parser.add_argument("--force-weight", type=float, default=1.0, help="weight of each force-head loss (default 1)")
    parser.add_argument("--energy-key", default=None, help="info key of the energies in eV (default: ASE's 'energy')")
    parser.add_argument("--forces-key", default=None, help="array name of the forces in eV/A (default: ASE's 'forces')")
    parser.add_argument("--checkpoint-every", type=int, default=1, help="write OUT.ckpt every N epochs (default 1)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT.ckpt if it exists")
    parser.add_argument("--quiet", action="store_true", help="print only the final report")
    return parser


def _learning_rate(lr0: float, progress: float) -> float:
    """Cosine decay from lr0 to 2 % of it as progress goes 0 -> 1."""
    progress = min(max(progress, 0.0), 1.0)
    return lr0 * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train(args: argparse.Namespace) -> dict:
    """Run the training described by parsed ``args``; returns the metadata written."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float32 if args.dtype == "float32" else torch.float64
    heads = VARIANT_HEADS[args.variant]
    need_energy = ENERGY_HEAD in heads
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))

    frames = read_frames(args.data, need_energy=need_energy, energy_key=args.energy_key, forces_key=args.forces_key)
    if args.max_frames and args.max_frames < len(frames):
        keep = torch.randperm(len(frames), generator=torch.Generator().manual_seed(args.seed + 1))[: args.max_frames]
        frames = [frames[i] for i in sorted(keep.tolist())]
    train_idx, val_idx, test_idx = split_indices(len(frames), args.val_fraction, args.test_fraction, args.seed)
    species = tuple(sorted(set(z for f in frames for z in f.species.tolist())))
    stats = data_statistics(frames, train_idx, species, args.cutoff, need_energy)
    torch.manual_seed(args.seed)
    model = DualHeadPotential(
        species=species, cutoff=args.cutoff, width=args.width, vector_width=args.vector_width, layers=args.layers, n_rbf=args.n_rbf,
        variant=args.variant, **stats,
    ).to(device=device, dtype=dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    log(
        f"ipi-nc train: {len(frames)} frames from '{args.data}' (train {len(train_idx)}, validation {len(val_idx)}, "
        f"test {len(test_idx)}); variant {args.variant} heads {','.join(heads)}; {count_parameters(model)} parameters; "
        f"species {list(species)}; force scale {stats['scale_ev']:.3f} eV/A; {stats['avg_neighbors']:.1f} neighbours "
        f"within {args.cutoff} A"
    )

    out_path = Path(args.out)
    ckpt_path = out_path.with_name(out_path.name + ".ckpt")
    start_epoch, best_val, best_state, spent_s = 0, math.inf, None, 0.0
    if args.resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, best_val, best_state, spent_s = ckpt["epoch"], ckpt["best_val"], ckpt["best_state"], ckpt["elapsed_s"]
        log(f"resumed from '{ckpt_path}' at epoch {start_epoch}")

    data_hash = file_sha256(args.data)
    generator = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = len(make_batches(frames, train_idx, args.batch_size, shuffle=False))
    total_steps = max(1, args.epochs * steps_per_epoch)
    time_limit_s = None if args.time_limit_min is None else 60.0 * args.time_limit_min
    t0 = time.perf_counter() - spent_s
    step = start_epoch * steps_per_epoch
    history = []
    epoch = start_epoch
    for epoch in range(start_epoch + 1, args.epochs + 1):
        model.train()
        running, n_batches = 0.0, 0
        for members in make_batches(frames, train_idx, args.batch_size, shuffle=True, generator=generator):
            elapsed = time.perf_counter() - t0
            progress = step / total_steps
            if time_limit_s:
                progress = max(progress, elapsed / time_limit_s)
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(args.lr, progress)
            batch, energies, forces = to_batch(frames, members, device, dtype)
            loss, _ = batch_loss(model, batch, energies, forces, args.energy_weight, args.force_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item()
            n_batches += 1
            step += 1
        val = mean_absolute_errors(model, frames, val_idx, args.batch_size, device, dtype)
        val_score = sum(v for k, v in val.items() if k.startswith("forces")) + val.get("energy_mev_per_atom", 0.0)
        if val_score < best_val:
            best_val = val_score
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            save_model(model, out_path, {"variant": args.variant, "status": f"best validation model after epoch {epoch} (training unfinished)"})
        elapsed = time.perf_counter() - t0
        remaining = (args.epochs - epoch) * elapsed / epoch  # elapsed includes the time before a resume
        if time_limit_s:
            remaining = min(remaining, max(0.0, time_limit_s - elapsed))
        history.append({"epoch": epoch, "train_loss": running / max(1, n_batches), **val})
        log(
            f"epoch {epoch:3d}/{args.epochs}  loss {running / max(1, n_batches):.4g}  val {format_maes(val)}  "
            f"lr {optimizer.param_groups[0]['lr']:.2e}  elapsed {_duration(elapsed)}  ETA {_duration(remaining)}"
        )
        if args.checkpoint_every and epoch % args.checkpoint_every == 0:
            torch.save(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                 "best_val": best_val, "best_state": best_state, "elapsed_s": elapsed},
                ckpt_path,
            )
        if time_limit_s and elapsed >= time_limit_s:
            log(f"time limit of {args.time_limit_min} min reached after epoch {epoch}")
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    train_time_s = time.perf_counter() - t0
    test = mean_absolute_errors(model, frames, test_idx, args.batch_size, device, dtype)
    val = mean_absolute_errors(model, frames, val_idx, args.batch_size, device, dtype)
    metadata = {
        "variant": args.variant,
        "status": "trained",
        "training_data": str(args.data),
        "training_data_sha256": data_hash,
        "n_frames": {"train": len(train_idx), "validation": len(val_idx), "test": len(test_idx)},
        "epochs": epoch,
        "training_time_s": train_time_s,
        "n_parameters": count_parameters(model),
        "test_mae": test,
        "validation_mae": val,
        "history": history,
        "hyperparameters": {k: getattr(args, k) for k in ("lr", "batch_size", "energy_weight", "force_weight", "seed", "dtype")},
    }
    save_model(model, out_path, metadata)
    print(f"test MAE on {len(test_idx)} held-out frames: {format_maes(test)}", flush=True)
    print(f"model written to '{out_path}' ({_duration(train_time_s)} training)", flush=True)
    return metadata


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ipi-nc train``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except TrainingDataError as exc:
        print(f"ipi-nc train: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
