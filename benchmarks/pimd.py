"""PIMD with 32 beads: one batched request per step vs one request per bead.

i-PI 3.3.1 batches through ``<ffsocket><batch_size>32</batch_size>``: it announces
``batch_size:32`` in the INIT string and sends all beads in one POSDATA; the
``ipi-nc driver`` evaluates them as ONE model call (``ForceEvaluator`` on a (32, N, 3)
batch). ``batch_size`` 1 is the classic protocol: 32 round trips per step to one driver.
Measured both inside i-PI (time per PIMD step) and in-process (the evaluator alone),
direct forces, 192 atoms. Target: >= 8x on GPU (on CPU the model work per atom
dominates and batching mostly saves per-call overhead).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from ipi_ncforces.benchmarks import cost
from ipi_ncforces.benchmarks.common import BenchConfig, interleaved, markdown_table, structure_file, water_system
from ipi_ncforces.benchmarks.ipi_run import Provider, bench_variant, checked, run_md
from ipi_ncforces.benchmarks.md import WARMUP_STEPS

N_ATOMS = 192
DT_FS = 0.25


def steps(cfg: BenchConfig) -> int:
    if cfg.quick:
        return 3
    return 40 if torch.device(cfg.device).type == "cuda" else 4


def run(cfg: BenchConfig) -> dict:
    from ipi_ncforces.ipi_driver.evaluator import ForceEvaluator

    beads = 4 if cfg.quick else 32
    model = cost.load(cfg)
    atoms = water_system(N_ATOMS)
    cells, positions = cost.ipi_request(atoms)
    rng = torch.Generator().manual_seed(0)
    # beads = the structure with small independent displacements (0.01 Bohr rms)
    bead_pos = [positions[0] + 0.01 * torch.randn(positions[0].shape, generator=rng, dtype=torch.float64).numpy()
                for _ in range(beads)]
    bead_cells = cells * beads
    evaluator = ForceEvaluator(model, atoms.numbers, "direct")
    in_process = {
        "evaluator_batched": lambda: evaluator(bead_cells, bead_pos),
        "evaluator_per_bead": lambda: [evaluator([c], [p]) for c, p in zip(bead_cells, bead_pos)],
    }
    structure = structure_file(N_ATOMS, Path(cfg.out) / "work")
    provider = Provider(cfg.model_path, cfg.device, cfg.dtype, cfg.threads)
    work = Path(cfg.out) / "work" / "pimd"
    n_steps = steps(cfg)
    n_rounds = 1 if cfg.quick else 2
    samples: dict[str, list[float]] = {k: [] for k in ("evaluator_batched", "evaluator_per_bead", "socket_batched", "socket_per_bead")}
    cpu: dict[str, list[float]] = {}  # CPU s per step, i-PI + driver (load-robust, see ipi_run)
    for r in range(n_rounds):
        rep = interleaved(in_process, cfg.device, repeats=2 if cfg.quick else 3, warmup=1)
        for name in in_process:
            samples[name].append(statistics.median(rep[name]))
        for name, batch_size in (("socket_batched", beads), ("socket_per_bead", 1)):
            v = bench_variant(structure, "direct", n_steps, provider, dt_fs=DT_FS, beads=beads, batch_size=batch_size)
            res = checked(run_md(v, provider, work / f"{name}-{r}"), f"PIMD {name}", n_steps)
            samples[name].append(statistics.median(res.step_times_s[WARMUP_STEPS:]))
            if res.cpu_s_per_step is not None:
                cpu.setdefault(name, []).append(res.cpu_s_per_step)
    ms = {name: 1e3 * statistics.median(s) for name, s in samples.items()}
    result = {
        "n_atoms": N_ATOMS, "n_beads": beads, "mode": "direct", "steps_per_run": n_steps, "rounds": n_rounds,
        "ms_per_step": ms, "ms_runs": {name: [1e3 * x for x in s] for name, s in samples.items()},
        "speedup_socket": ms["socket_per_bead"] / ms["socket_batched"],
        "speedup_evaluator": ms["evaluator_per_bead"] / ms["evaluator_batched"],
        "cpu_ms_per_step": {name: 1e3 * statistics.median(x) for name, x in cpu.items()},
    }
    if len(result["cpu_ms_per_step"]) == 2:
        result["speedup_socket_cpu"] = result["cpu_ms_per_step"]["socket_per_bead"] / result["cpu_ms_per_step"]["socket_batched"]
    print(
        f"[pimd] {beads} beads x {N_ATOMS} atoms: i-PI step batched {ms['socket_batched']:.1f} ms vs per-bead "
        f"{ms['socket_per_bead']:.1f} ms -> {result['speedup_socket']:.2f}x; evaluator alone "
        f"{result['speedup_evaluator']:.2f}x; CPU time per step: {result.get('speedup_socket_cpu', float('nan')):.2f}x",
        flush=True,
    )
    return result


def markdown(section: dict) -> str:
    ms = section["ms_per_step"]
    rows = [
        ["i-PI step, socket driver", ms["socket_batched"], ms["socket_per_bead"], f"{section['speedup_socket']:.2f}"],
        ["ForceEvaluator alone", ms["evaluator_batched"], ms["evaluator_per_bead"], f"{section['speedup_evaluator']:.2f}"],
    ]
    return (
        f"### PIMD, {section['n_beads']} beads x {section['n_atoms']} atoms, direct forces\n\n"
        + markdown_table(["path", "batched ms/step", "per-bead ms/step", "speed-up"], rows)
    )
