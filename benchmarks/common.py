"""Shared pieces of the benchmarks: systems, the model under test, timing, reports.

Timing rules (every benchmark follows them): variants that are compared are measured in
ONE process run, their repeats interleaved (A B C A B C ...), after a warm-up; we report
the median and the spread (min, max, interquartile range) in milliseconds, and ratios
as the median of the per-round ratios (each round measures all variants back to back,
so a load spike on the shared machine hits numerator and denominator alike).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ipi_ncforces.models.structure_io import read_structure, write_ipi_xyz

from ipi_ncforces.inputs import WATER64_XYZ as WATER64
from ipi_ncforces.models import SHIPPED_MODELS_DIR

SHIPPED_M_MODEL = SHIPPED_MODELS_DIR / "water-m.pt"
REFERENCE = "qtip4pf"  # model keyword: the q-TIP4P/F reference potential (energy only), saved as a model file


def model_file_or_reference(model_arg: str | Path, work: Path, option: str) -> Path:
    """The model file a model argument names: the keyword ``'qtip4pf'`` gives the q-TIP4P/F
    reference, saved once as work/qtip4pf-reference.pt; anything else must be an existing
    file (FileNotFoundError naming ``option`` otherwise). Returns an absolute path."""
    if str(model_arg) == REFERENCE:
        from ipi_ncforces.models.io import save_model
        from ipi_ncforces.models.qtip4pf import QTIP4PF

        target = Path(work) / "qtip4pf-reference.pt"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            save_model(QTIP4PF(), target, {"note": "q-TIP4P/F reference"})
        return target.resolve()
    path = Path(model_arg)
    if not path.is_file():
        raise FileNotFoundError(f"model file '{path}' does not exist ({option}; or use '{REFERENCE}')")
    return path.resolve()
# 192 atoms = the 64-molecule box; 1536 and 12288 = 2x2x2 and 4x4x4 replicas
SIZES_ATOMS = (192, 1536, 12288)
REPLICAS_FOR_SIZE = {192: 1, 1536: 2, 12288: 4}


@dataclass
class BenchConfig:
    """Options shared by every benchmark (see ``ipi_ncforces.benchmarks.cli``)."""

    out: Path
    device: str = "cpu"
    dtype: str = "float64"
    model_path: Path | None = None
    model_info: dict | None = None
    quick: bool = False
    threads: int = 1
    sizes: tuple[int, ...] = SIZES_ATOMS
    md_sizes: tuple[int, ...] = (192, 1536)
    repeats: int = 5


# --------------------------------------------------------------------------- timing


def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work so a wall-clock split measures what it claims."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: str | torch.device) -> float:
    """Seconds of wall time for one call, synchronized on GPUs before and after."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def interleaved(
    variants: dict[str, Callable[[], object]], device: str | torch.device, repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call for each variant; rounds run all variants back to back, the
    starting variant rotating from round to round so none always goes first."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    synchronize(device)
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            samples[name].append(time_call(variants[name], device))
    return samples


def stats_ms(samples_s: list[float]) -> dict:
    """Median and spread of samples given in seconds, reported in milliseconds."""
    ms = np.asarray(samples_s, dtype=float) * 1e3
    q1, q3 = np.percentile(ms, [25, 75]) if len(ms) else (float("nan"), float("nan"))
    return {
        "median_ms": float(np.median(ms)),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "iqr_ms": float(q3 - q1),
        "n": int(len(ms)),
    }


def ratio_stats(numerator_s: list[float], denominator_s: list[float]) -> dict:
    """Median of per-round ratios (dimensionless) with min/max over rounds."""
    ratios = [a / b for a, b in zip(numerator_s, denominator_s) if b > 0]
    return {
        "median": float(statistics.median(ratios)),
        "min": float(min(ratios)),
        "max": float(max(ratios)),
        "of_medians": float(statistics.median(numerator_s) / statistics.median(denominator_s)),
        "n": len(ratios),
    }


# --------------------------------------------------------------------------- systems


def base_water():
    """The shipped 192-atom box inputs/water64.xyz as ``ase.Atoms`` (A), with its source."""
    return read_structure(WATER64), f"inputs/{WATER64.name}"


def water_system(n_atoms: int):
    """Replicated water box with ``n_atoms`` atoms (192 * r^3)."""
    if n_atoms not in REPLICAS_FOR_SIZE:
        raise ValueError(f"unsupported size {n_atoms} atoms (choose from {sorted(REPLICAS_FOR_SIZE)})")
    atoms, _ = base_water()
    r = REPLICAS_FOR_SIZE[n_atoms]
    return atoms.repeat((r, r, r))


def structure_file(n_atoms: int, work: Path) -> Path:
    """i-PI xyz file of the ``n_atoms`` water system under ``work`` (written once)."""
    path = Path(work) / f"water{n_atoms}.xyz"
    if not path.is_file():
        write_ipi_xyz(water_system(n_atoms), path)
    return path


# --------------------------------------------------------------------------- model


def resolve_model(model_arg: str | None, work: Path) -> tuple[Path, dict]:
    """The model under test and a description for the JSON.

    Order: ``--model`` if given; the shipped M model; an untrained DualHeadPotential (same
    architecture, so the same cost).
    """
    from ipi_ncforces.models.io import load_model, save_model

    if model_arg:
        path = Path(model_arg)
        from ipi_ncforces.models.loader import METATOMIC, load_backend, model_format

        if model_format(path) == METATOMIC:  # raises ModelFileError (one line) for a bad file
            backend = load_backend(path)
            return path, {
                "path": str(path), "source": "--model (metatomic)", "model_type": "metatomic",
                "heads": list(backend.heads), "cutoff_ang": backend.cutoff,
                "n_parameters": int(sum(p.numel() for p in backend.atomistic.parameters())),
                "metadata_name": backend.metadata().name, "dtype": str(backend.dtype).replace("torch.", ""),
            }
        model = load_model(path)  # raises ModelFileError (one line) for a bad file
        source = "--model"
    elif SHIPPED_M_MODEL.is_file():
        path = SHIPPED_M_MODEL
        model = load_model(path)
        source = "shipped M model"
    else:
        from ipi_ncforces.models.dualhead import DualHeadPotential

        work.mkdir(parents=True, exist_ok=True)
        model = DualHeadPotential()
        source = "untrained DualHeadPotential (models/data/water-m.pt absent; same cost as trained)"
        path = work / "bench-dualhead.pt"
        save_model(model, path, {"note": "benchmark stand-in"})
    info = {
        "path": str(path), "source": source, "model_type": model.model_type, "heads": list(model.heads),
        "cutoff_ang": model.cutoff, "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "config": {k: v for k, v in model.config().items() if isinstance(v, (int, float, str, list, bool))},
    }
    return path, info


# --------------------------------------------------------------------------- reports


def machine_info(device: str) -> dict:
    """What the numbers were measured on."""
    import ipi

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "device": device,
        "ipi": getattr(ipi, "__version__", "unknown"),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def write_json(data: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    return path


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    def fmt(x):
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.0f}"
        return str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)
