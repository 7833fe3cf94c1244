"""i-PI MD throughput through the real socket driver: conservative, direct, MTS M=2..16.

Each variant is an NVE run of i-PI with ``ipi-nc driver`` processes on unix sockets:
* conservative: one forcefield, F = -dE/dr, time step dt_fs.
* direct: one forcefield, direct forces, time step dt_fs.
* MTS M: i-PI's ``nmts [1, M]``; "cons" weighted [1, 0] (outer), "direct" [-1, 1]
  (inner), outer step M * dt_fs: per outer step 1 conservative + M direct evaluations
  (i-PI reuses the direct force at the shared positions), each on its own driver.
Throughput is per INNER step of dt_fs (the same physical time resolution for all):
steps/s = M / t(outer step), ns/day = steps/s * dt_fs * 86400 / 1e6.
Variants are interleaved round by round. Targets (paper): MTS M=8 >= 0.85x direct
and >= 2x conservative throughput.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import torch

from ipi_ncforces.benchmarks.common import BenchConfig, markdown_table, structure_file
from ipi_ncforces.benchmarks.ipi_run import Provider, bench_variant, checked, run_md

DT_FS = 0.5
MTS_FACTORS = (2, 4, 8, 16)
WARMUP_STEPS = 1
DRIVER_SUMMARY_RE = re.compile(r"median ([0-9.]+) ms")


def variants(quick: bool) -> dict[str, tuple[str, int]]:
    """name -> (inputs.make forces, M); M = 1 means no MTS."""
    out = {"conservative": ("conservative", 1), "direct": ("direct", 1)}
    for m in (2,) if quick else MTS_FACTORS:
        out[f"mts{m}"] = ("mts", m)
    return out


def inner_steps(n_atoms: int, cfg: BenchConfig) -> int:
    """Inner steps per run: enough for a median, bounded so `make bench` fits on 2 CPU cores."""
    if cfg.quick:
        return 8
    if torch.device(cfg.device).type == "cuda":
        return {192: 400, 1536: 200}.get(n_atoms, 64)
    return {192: 64, 1536: 32}.get(n_atoms, 16)


def rounds(cfg: BenchConfig) -> int:
    if cfg.quick:
        return 1
    return 3 if torch.device(cfg.device).type == "cuda" else 2


def driver_median_ms(logs: list[str]) -> list[float]:
    """Median request time (ms) each driver reported on exit (its own model + copies)."""
    matches = (DRIVER_SUMMARY_RE.search(text) for text in logs)
    return [float(match.group(1)) for match in matches if match]


def run(cfg: BenchConfig, provider: Provider | None = None) -> dict:
    provider = provider or Provider(cfg.model_path, cfg.device, cfg.dtype, cfg.threads)
    work = Path(cfg.out) / "work" / "md"
    result: dict = {"dt_fs": DT_FS, "warmup_steps_dropped": WARMUP_STEPS, "sizes": []}
    for n_atoms in cfg.md_sizes:
        structure = structure_file(n_atoms, Path(cfg.out) / "work")
        n_inner = inner_steps(n_atoms, cfg)
        per_variant: dict[str, list[float]] = {}
        driver_ms: dict[str, list[list[float]]] = {}
        table = variants(cfg.quick)
        for r in range(rounds(cfg)):
            for name, (forces, m) in table.items():
                outer = max(n_inner // m, WARMUP_STEPS + 2)
                v = bench_variant(structure, forces, outer, provider, dt_fs=DT_FS, mts_m=m)
                res = checked(run_md(v, provider, work / f"{n_atoms}-{name}-{r}"), f"{name} {n_atoms} atoms", outer)
                t_outer = statistics.median(res.step_times_s[WARMUP_STEPS:])
                per_variant.setdefault(name, []).append(t_outer / m)
                driver_ms.setdefault(name, []).append(driver_median_ms(res.driver_logs))
        entry: dict = {"n_atoms": n_atoms, "inner_steps_per_run": n_inner, "rounds": rounds(cfg), "variants": {}}
        for name, samples in per_variant.items():
            t = statistics.median(samples)
            entry["variants"][name] = {
                "ms_per_inner_step": 1e3 * t,
                "ms_per_inner_step_runs": [1e3 * x for x in samples],
                "steps_per_s": 1.0 / t,
                "ns_per_day": DT_FS * 86400 / 1e6 / t,
                "mts_factor": table[name][1],
                "driver_median_request_ms": driver_ms[name],
            }
            if table[name][1] == 1 and all(driver_ms[name]):
                # what i-PI's step and the socket add on top of the driver's own request time
                in_driver = statistics.median(x[0] for x in driver_ms[name])
                entry["variants"][name]["ipi_and_socket_ms_per_step"] = 1e3 * t - in_driver
        v = entry["variants"]
        speed = {name: v[name]["steps_per_s"] for name in v}
        entry["ratios"] = {f"{name}_vs_{ref}": speed[name] / speed[ref]
                           for ref in ("direct", "conservative") for name in v if name != ref}
        result["sizes"].append(entry)
        summary = ", ".join(f"{name} {v[name]['steps_per_s']:.3g} steps/s" for name in v)
        print(f"[md] {n_atoms} atoms: {summary}", flush=True)
        for name in v:
            if name.startswith("mts"):
                print(f"[md] {n_atoms} atoms: {name} = {entry['ratios'][name + '_vs_direct']:.2f}x direct, "
                      f"{entry['ratios'][name + '_vs_conservative']:.2f}x conservative", flush=True)
    return result


def markdown(section: dict) -> str:
    rows = []
    for entry in section["sizes"]:
        for name, v in entry["variants"].items():
            rows.append([
                entry["n_atoms"], name, v["ms_per_inner_step"], v["steps_per_s"], v["ns_per_day"],
                f"{entry['ratios'].get(name + '_vs_direct', 1.0):.2f}",
                f"{entry['ratios'].get(name + '_vs_conservative', 1.0):.2f}",
                v.get("ipi_and_socket_ms_per_step", "-"),
            ])
    return (
        f"### i-PI MD throughput (NVE, inner step {section['dt_fs']} fs, socket driver)\n\n"
        + markdown_table(
            ["atoms", "variant", "ms / inner step", "steps/s", "ns/day", "x direct", "x conservative",
             "i-PI + socket ms/step"],
            rows,
        )
    )
