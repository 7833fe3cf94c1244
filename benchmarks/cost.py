"""Cost of conservation per evaluation: F = t(conservative) / t(direct).

Both modes run through :class:`ipi_ncforces.ipi_driver.evaluator.ForceEvaluator` (what the driver
and ``<ffdirect>`` run per i-PI request: Bohr in, unit conversion, copies, model,
checks, Hartree out) and as a bare :func:`ipi_ncforces.models.base.evaluate` on a batch already on
the device; the neighbour list (``ipi_ncforces.models.neighbors.build_edges``) is timed alone.
All five are interleaved in one loop per size. Paper: F = 2-3 (PET 2.3).
"""

from __future__ import annotations

import numpy as np
import torch

from ipi_ncforces.benchmarks.common import BenchConfig, interleaved, markdown_table, ratio_stats, stats_ms, water_system
from ipi_ncforces.ipi_driver.evaluator import ForceEvaluator
from ipi_ncforces.models.units import BOHR_PER_ANGSTROM
from ipi_ncforces.models.base import DTYPES, Batch
from ipi_ncforces.models.neighbors import build_edges



def repeats_for(n_atoms: int, cfg: BenchConfig) -> int:
    """Fewer rounds for the big systems on CPU (each 12288-atom round takes seconds)."""
    if cfg.quick:
        return 3
    if torch.device(cfg.device).type == "cuda":
        return {192: 30, 1536: 20}.get(n_atoms, 10)
    return {192: 15, 1536: 7}.get(n_atoms, 3)


def load(cfg: BenchConfig):
    """The model under test as a backend (our .pt or a metatomic file, which keeps its own dtype)."""
    from ipi_ncforces.models.loader import NATIVE, load_backend, model_format

    dtype = DTYPES[cfg.dtype] if model_format(cfg.model_path) == NATIVE else None
    return load_backend(cfg.model_path, device=cfg.device, dtype=dtype)


def ipi_request(atoms) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The arrays i-PI sends for one structure: cell (columns, Bohr), positions (Bohr)."""
    cell = np.ascontiguousarray(atoms.cell.array.T) * BOHR_PER_ANGSTROM
    return [cell], [atoms.positions.reshape(-1) * BOHR_PER_ANGSTROM]


def profile_top_ops(model, batch: Batch, conservative: bool, device: str, top: int = 8) -> list[dict]:
    """Top operators by self time (ms) for one evaluation, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.device(device).type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    model.evaluate(batch, conservative=conservative, direct=not conservative)  # warm-up
    with profile(activities=activities) as prof:
        model.evaluate(batch, conservative=conservative, direct=not conservative)
    sort_key = "self_cuda_time_total" if torch.device(device).type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, sort_key, 0.0), reverse=True)
    return [
        {"op": event.key, "calls": int(event.count), "self_cpu_ms": float(event.self_cpu_time_total) / 1e3,
         "self_device_ms": float(getattr(event, "self_device_time_total", 0.0)) / 1e3}
        for event in events[:top]
    ]


def measure_size(model, n_atoms: int, cfg: BenchConfig) -> dict:
    atoms = water_system(n_atoms)
    cells, positions = ipi_request(atoms)
    direct_eval = ForceEvaluator(model, atoms.numbers, "direct")
    cons_eval = ForceEvaluator(model, atoms.numbers, "conservative")
    batch = Batch.from_ase([atoms]).to(cfg.device, model.dtype)
    variants = {
        "evaluator_direct": lambda: direct_eval(cells, positions),
        "evaluator_conservative": lambda: cons_eval(cells, positions),
        "bare_direct": lambda: model.evaluate(batch, conservative=False, direct=True),
        "bare_conservative": lambda: model.evaluate(batch, conservative=True, direct=False),
        "neighbour_list": lambda: build_edges(batch, model.cutoff),
    }
    repeats = repeats_for(n_atoms, cfg)
    samples = interleaved(variants, cfg.device, repeats, warmup=1)
    result = {
        "n_atoms": n_atoms,
        "repeats": repeats,
        "times": {name: stats_ms(s) for name, s in samples.items()},
        "F_evaluator": ratio_stats(samples["evaluator_conservative"], samples["evaluator_direct"]),
        "F_bare": ratio_stats(samples["bare_conservative"], samples["bare_direct"]),
        "neighbour_list_fraction_of_direct": ratio_stats(samples["neighbour_list"], samples["bare_direct"]),
    }
    # the evaluator's own splits (host->device, model, device->host), warm-up excluded
    result["evaluator_splits"] = {
        name: {"copy_in_ms": 1e3 * float(np.median(ev.timings.to_device[1:])),
               "model_ms": 1e3 * float(np.median(ev.timings.model[1:])),
               "copy_out_ms": 1e3 * float(np.median(ev.timings.to_host[1:]))}
        for name, ev in (("direct", direct_eval), ("conservative", cons_eval))
    }
    for mode in ("direct", "conservative"):
        times = result["times"][f"evaluator_{mode}"]
        times["us_per_atom"] = 1e3 * times["median_ms"] / n_atoms
    return result


def run(cfg: BenchConfig) -> dict:
    """Per-evaluation cost at each size in ``cfg.sizes``; returns the JSON section."""
    model = load(cfg)
    out = {"sizes": [], "dtype": cfg.dtype, "device": cfg.device}
    for n_atoms in cfg.sizes:
        res = measure_size(model, n_atoms, cfg)
        out["sizes"].append(res)
        f = res["F_evaluator"]
        print(
            f"[cost] {n_atoms:6d} atoms: direct {res['times']['evaluator_direct']['median_ms']:.2f} ms, "
            f"conservative {res['times']['evaluator_conservative']['median_ms']:.2f} ms, "
            f"F = {f['median']:.2f} (range {f['min']:.2f}-{f['max']:.2f}), "
            f"neighbour list {res['times']['neighbour_list']['median_ms']:.2f} ms",
            flush=True,
        )
    smallest = min(cfg.sizes)
    batch = Batch.from_ase([water_system(smallest)]).to(cfg.device, model.dtype)
    out["profile"] = {
        "n_atoms": smallest,
        "direct": profile_top_ops(model, batch, False, cfg.device),
        "conservative": profile_top_ops(model, batch, True, cfg.device),
    }
    return out


def markdown(section: dict) -> str:
    rows = []
    for res in section["sizes"]:
        t, f, splits = res["times"], res["F_evaluator"], res["evaluator_splits"]["direct"]
        rows.append([
            res["n_atoms"], t["evaluator_direct"]["median_ms"], t["evaluator_conservative"]["median_ms"],
            f"{f['median']:.2f} ({f['min']:.2f}-{f['max']:.2f})", f"{res['F_bare']['median']:.2f}",
            t["neighbour_list"]["median_ms"], splits["copy_in_ms"] + splits["copy_out_ms"], res["repeats"],
        ])
    text = "### Cost of conservation per evaluation (F = t_cons / t_direct)\n\n" + markdown_table(
        ["atoms", "direct ms", "conservative ms", "F (min-max)", "F bare model", "neighbour list ms",
         "copies+conversion ms (direct)", "rounds"],
        rows,
    )
    prof = section.get("profile")
    if prof:
        for mode in ("direct", "conservative"):
            text += f"\n\nTop operators, {mode}, {prof['n_atoms']} atoms (torch.profiler, self time):\n\n"
            text += markdown_table(
                ["op", "calls", "self CPU ms", "self device ms"],
                [[r["op"], r["calls"], r["self_cpu_ms"], r["self_device_ms"]] for r in prof[mode]],
            )
    return text
