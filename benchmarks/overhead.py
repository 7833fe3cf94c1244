"""Overhead of serving the model to i-PI: socket + i-PI vs in-process ffdirect vs bare model.

Direct forces at 192 atoms (the cheapest model call, so overhead shows most):
* bare: ``ipi_ncforces.models.base.evaluate`` on a batch already on the device;
* evaluator: ``ForceEvaluator`` (Bohr -> A, host->device, model, checks, device->host, Ha);
* ffdirect: one i-PI NVE step with ``<ffdirect>`` running ``ipi_driver/pes.py`` in i-PI;
* socket: one i-PI NVE step with ``<ffsocket mode="unix">`` + an ``ipi-nc driver`` process.
The neighbour-list skin is 0 everywhere (the in-process PES has none), so all four
run the same model work; differences are conversion/copies, i-PI's step, and the socket.
Target: socket + i-PI overhead <= 5 % of the model time on GPU.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from ipi_ncforces.benchmarks import cost
from ipi_ncforces.benchmarks.common import BenchConfig, interleaved, markdown_table, structure_file, water_system
from ipi_ncforces.benchmarks.ipi_run import Provider, bench_variant, checked, run_md
from ipi_ncforces.benchmarks.md import WARMUP_STEPS, driver_median_ms
from ipi_ncforces.ipi_driver.evaluator import ForceEvaluator
from ipi_ncforces.models.base import Batch

N_ATOMS = 192


def steps(cfg: BenchConfig) -> int:
    if cfg.quick:
        return 8
    return 400 if torch.device(cfg.device).type == "cuda" else 64


def run(cfg: BenchConfig) -> dict:
    model = cost.load(cfg)
    atoms = water_system(N_ATOMS)
    cells, positions = cost.ipi_request(atoms)
    evaluator = ForceEvaluator(model, atoms.numbers, "direct")
    batch = Batch.from_ase([atoms]).to(cfg.device, model.dtype)
    in_process = {
        "bare": lambda: model.evaluate(batch, conservative=False, direct=True),
        "evaluator": lambda: evaluator(cells, positions),
    }
    structure = structure_file(N_ATOMS, Path(cfg.out) / "work")
    provider = Provider(cfg.model_path, cfg.device, cfg.dtype, cfg.threads, neighbor_skin_ang=0.0)
    work = Path(cfg.out) / "work" / "overhead"
    n_steps = steps(cfg)
    n_rounds = 1 if cfg.quick else 3
    samples: dict[str, list[float]] = {"bare": [], "evaluator": [], "ffdirect": [], "socket": []}
    driver_ms: list[float] = []
    for r in range(n_rounds):
        rep = interleaved(in_process, cfg.device, repeats=5 if cfg.quick else 20, warmup=1)
        for name in in_process:
            samples[name].append(statistics.median(rep[name]))
        for transport in ("ffdirect", "socket"):
            v = bench_variant(structure, "direct", n_steps, provider, sockets="unix" if transport == "socket" else "ffdirect")
            res = checked(run_md(v, provider, work / f"{transport}-{r}"), f"overhead {transport}", n_steps)
            samples[transport].append(statistics.median(res.step_times_s[WARMUP_STEPS:]))
            if transport == "socket":
                driver_ms += driver_median_ms(res.driver_logs)
    ms = {name: 1e3 * statistics.median(s) for name, s in samples.items()}
    result = {
        "n_atoms": N_ATOMS, "mode": "direct", "rounds": n_rounds, "steps_per_run": n_steps, "ms": ms,
        "ms_runs": {name: [1e3 * x for x in s] for name, s in samples.items()},
        "driver_median_request_ms": driver_ms,
        "overhead_fraction_of_model": {
            # (t - t_bare) / t_bare: what each serving layer adds on top of the model call
            name: (ms[name] - ms["bare"]) / ms["bare"] for name in ("evaluator", "ffdirect", "socket")
        },
        "socket_minus_ffdirect_ms": ms["socket"] - ms["ffdirect"],
        "ipi_step_ms_ffdirect_minus_evaluator": ms["ffdirect"] - ms["evaluator"],
    }
    o = result["overhead_fraction_of_model"]
    print(
        f"[overhead] {N_ATOMS} atoms direct: bare {ms['bare']:.2f} ms, evaluator {ms['evaluator']:.2f} ms, "
        f"ffdirect step {ms['ffdirect']:.2f} ms, socket step {ms['socket']:.2f} ms; overhead vs bare: "
        f"evaluator {100 * o['evaluator']:.1f} %, ffdirect {100 * o['ffdirect']:.1f} %, socket {100 * o['socket']:.1f} %",
        flush=True,
    )
    return result


def markdown(section: dict) -> str:
    ms, o = section["ms"], section["overhead_fraction_of_model"]
    rows = [
        ["bare model call (evaluate)", ms["bare"], "-"],
        ["ForceEvaluator (units, copies, checks)", ms["evaluator"], f"{100 * o['evaluator']:.1f} %"],
        ["i-PI step, <ffdirect> in-process", ms["ffdirect"], f"{100 * o['ffdirect']:.1f} %"],
        ["i-PI step, <ffsocket> + ipi-nc driver", ms["socket"], f"{100 * o['socket']:.1f} %"],
    ]
    return (
        f"### Serving overhead, {section['n_atoms']} atoms, direct forces\n\n"
        + markdown_table(["path", "ms per evaluation / step", "overhead vs bare model"], rows)
    )
