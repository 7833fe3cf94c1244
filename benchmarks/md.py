"""i-PI MD throughput through the real socket driver: conservative, direct, MTS M=2..16.

Each variant is an NVE run of i-PI with ``ipi-nc driver`` processes on unix sockets,
served the way ``ipi-nc run --transport sockets`` serves them:
* conservative: one forcefield, F = -dE/dr, time step dt_fs.
* direct: one forcefield, direct forces, time step dt_fs.
* MTS M: i-PI's ``nmts [1, M]``; "cons" weighted [1, 0] (outer), "direct" [-1, 1]
  (inner), outer step M * dt_fs: per outer step 1 conservative + M direct evaluations
  (i-PI reuses the direct force at the shared positions). ONE driver process serves both
  sockets and runs ONE backbone pass for both heads at the outer step (``ipi-nc driver
  --mts-direct-address``), so an outer step costs (M - 1) direct passes + 1 two-head pass.
Comparison rows at the smallest size (not with --quick): ``mts8-separate`` (one driver
process per socket, each running the backbone: ``ipi-nc run --separate-mts-drivers``) and
``*-ffdirect`` (the model inside i-PI, ``<ffdirect>``, no socket; the two MTS forcefields
share one model and pass, see ``ipi_driver/pes.py``). ``ipi-nc run`` with its default
``--transport auto`` serves single-level and MTS inputs of one system on CPU in-process, so
its default paths are the ``*-ffdirect`` rows (ratios ``mtsM-ffdirect_vs_direct-ffdirect``
etc., printed as "default paths").
Throughput is per INNER step of dt_fs (the same physical time resolution for all):
steps/s = M / t(outer step), ns/day = steps/s * dt_fs * 86400 / 1e6.
Variants are interleaved round by round. Targets (issue 14): MTS M=8 >= 0.85x direct
and >= 1.8x conservative throughput; cost model with a shared pass: t_MTS / t_direct =
1 + (F - 1) / M with F = t_cons / t_direct.

Profile of one outer step (socket variants, from the drivers' exit summaries): model
passes (two-head / conservative, direct), the driver's own socket I/O, and the rest of
i-PI's step time (its integrator and force bookkeeping, the socket round trips, waiting
for a CPU): rest = t(outer step) - model - driver I/O.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from ipi_ncforces.benchmarks.common import BenchConfig, markdown_table, structure_file
from ipi_ncforces.benchmarks.ipi_run import Provider, bench_variant, checked, run_md

DT_FS = 0.5
MTS_FACTORS = (2, 4, 8, 16)
WARMUP_STEPS = 1
DRIVER_SUMMARY_RE = re.compile(r"median ([0-9.]+) ms")
# exit-summary lines of ipi-nc driver (ipi_driver/evaluator.py, client.py, shared_pass.py)
PASS_RE = re.compile(r"(\d+) requests, \d+ structures; per request: mean ([0-9.]+) ms")
MODE_RE = re.compile(r"ipi-nc driver: (conservative|direct|correction) forces of")
IO_RE = re.compile(r"socket: (\d+) requests; per request: median wait for i-PI [0-9.-]+ ms .*median socket I/O ([0-9.]+) ms")


@dataclass(frozen=True)
class MDVariant:
    """forces (inputs.make), M (1 = no MTS), transport ('unix' or 'ffdirect'), MTS drivers shared."""

    forces: str
    m: int = 1
    sockets: str = "unix"
    shared: bool = True


def variants(quick: bool, comparisons: bool = False) -> dict[str, MDVariant]:
    """name -> MDVariant. ``comparisons``: also the separate-driver and in-process rows."""
    out = {"conservative": MDVariant("conservative"), "direct": MDVariant("direct")}
    for m in (2,) if quick else MTS_FACTORS:
        out[f"mts{m}"] = MDVariant("mts", m)
    if comparisons and not quick:
        out["mts8-separate"] = MDVariant("mts", 8, shared=False)
        for name in ("conservative", "direct", "mts4", "mts8"):
            out[f"{name}-ffdirect"] = MDVariant(out[name].forces, out[name].m, "ffdirect")
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


def outer_step_profile(logs: list[str], outer_steps: int, t_outer_ms: float, m: int) -> dict | None:
    """Where one outer step's milliseconds go, from the drivers' exit summaries: model
    passes (mean ms x passes per outer step), the drivers' socket I/O (median ms x requests
    per outer step) and the rest of the step (i-PI, socket round trips, CPU waits).
    Passes per outer step = all passes of the run / outer steps (the initial force call
    included). In-process variants: the same summary, written by our PES into i-PI's log
    (no socket I/O: the rest is i-PI's own step). None when a summary is missing."""
    passes: dict[str, float] = {}
    io_ms = 0.0
    for text in logs:
        mode = MODE_RE.search(text)  # a one-mode driver: its passes are of that mode
        for line in text.splitlines():
            found = PASS_RE.search(line)
            if found:
                label = ("two-head" if "both-heads passes:" in line else "direct" if "direct-only passes:" in line
                         else mode.group(1) if mode else "model")
                passes[label] = passes.get(label, 0.0) + int(found.group(1)) * float(found.group(2)) / outer_steps
            io = IO_RE.search(line)
            if io:
                io_ms += int(io.group(1)) * float(io.group(2)) / outer_steps
    if not passes:
        return None
    model = sum(passes.values())
    return {"model_ms": passes, "driver_socket_io_ms": io_ms, "ipi_and_rest_ms": t_outer_ms - model - io_ms,
            "outer_step_ms": t_outer_ms, "mts_factor": m}


def run(cfg: BenchConfig, provider: Provider | None = None) -> dict:
    provider = provider or Provider(cfg.model_path, cfg.device, cfg.dtype, cfg.threads)
    work = Path(cfg.out) / "work" / "md"
    result: dict = {"dt_fs": DT_FS, "warmup_steps_dropped": WARMUP_STEPS, "sizes": []}
    for n_atoms in cfg.md_sizes:
        structure = structure_file(n_atoms, Path(cfg.out) / "work")
        n_inner = inner_steps(n_atoms, cfg)
        per_variant: dict[str, list[float]] = {}
        driver_ms: dict[str, list[list[float]]] = {}
        profiles: dict[str, list[dict]] = {}
        cpu: dict[str, list[float]] = {}  # CPU s per inner step, i-PI + drivers (load-robust)
        table = variants(cfg.quick, comparisons=n_atoms == min(cfg.md_sizes))
        for r in range(rounds(cfg)):
            for name, spec in table.items():
                m = spec.m
                outer = max(n_inner // m, WARMUP_STEPS + 2)
                v = bench_variant(structure, spec.forces, outer, provider, dt_fs=DT_FS, mts_m=m, sockets=spec.sockets)
                res = checked(run_md(v, provider, work / f"{n_atoms}-{name}-{r}", shared_mts=spec.shared),
                              f"{name} {n_atoms} atoms", outer)
                t_outer = statistics.median(res.step_times_s[WARMUP_STEPS:])
                per_variant.setdefault(name, []).append(t_outer / m)
                driver_ms.setdefault(name, []).append(driver_median_ms(res.driver_logs))
                if res.cpu_s_per_step is not None:
                    cpu.setdefault(name, []).append(res.cpu_s_per_step / m)
                # means on both sides: the pass counts are whole-run totals
                t_mean = statistics.mean(res.step_times_s[WARMUP_STEPS:])
                profile = outer_step_profile(res.driver_logs, len(res.step_times_s), 1e3 * t_mean, m)
                if profile:
                    profiles.setdefault(name, []).append(profile)
        entry: dict = {"n_atoms": n_atoms, "inner_steps_per_run": n_inner, "rounds": rounds(cfg), "variants": {}}
        for name, samples in per_variant.items():
            t = statistics.median(samples)
            spec = table[name]
            entry["variants"][name] = {
                "ms_per_inner_step": 1e3 * t,
                "ms_per_inner_step_runs": [1e3 * x for x in samples],
                "steps_per_s": 1.0 / t,
                "ns_per_day": DT_FS * 86400 / 1e6 / t,
                "mts_factor": spec.m,
                "transport": spec.sockets,
                "mts_drivers": ("shared" if spec.shared else "separate") if spec.m > 1 and spec.sockets == "unix" else None,
                "driver_median_request_ms": driver_ms[name],
            }
            if cpu.get(name):
                entry["variants"][name]["cpu_ms_per_inner_step"] = 1e3 * statistics.median(cpu[name])
                entry["variants"][name]["cpu_ms_per_inner_step_runs"] = [1e3 * x for x in cpu[name]]
            if name in profiles:  # the round with the median outer-step time
                runs = sorted(profiles[name], key=lambda p: p["outer_step_ms"])
                entry["variants"][name]["outer_step_profile"] = runs[len(runs) // 2]
            if spec.m == 1 and all(driver_ms[name]):
                # what i-PI's step and the socket add on top of the driver's own request time
                in_driver = statistics.median(x[0] for x in driver_ms[name])
                entry["variants"][name]["ipi_and_socket_ms_per_step"] = 1e3 * t - in_driver
        v = entry["variants"]
        speed = {name: v[name]["steps_per_s"] for name in v}
        entry["ratios"] = {f"{name}_vs_{ref}": speed[name] / speed[ref]
                           for ref in ("direct", "conservative") for name in v if name != ref}
        # per-round ratios (both variants of a round ran back to back under the same load)
        entry["ratios_per_round"] = {
            f"{name}_vs_{ref}": [b / a for a, b in zip(per_variant[name], per_variant[ref])]
            for ref in ("direct", "conservative") for name in v if name != ref
        }
        # 0 = no clock tick seen in the window (/proc counts 10 ms ticks; --quick runs 8 steps): no measurement
        cpu_ms = {name: v[name]["cpu_ms_per_inner_step"] for name in v if v[name].get("cpu_ms_per_inner_step")}
        entry["cpu_ratios"] = {  # throughput ratios from CPU time per step (what an idle machine would give)
            f"{name}_vs_{ref}{suffix}": cpu_ms[ref + suffix] / cpu_ms[name]
            for suffix in ("", "-ffdirect") for ref in ("direct", "conservative")
            for name in cpu_ms if name.endswith(suffix) and name != ref + suffix and ref + suffix in cpu_ms
            and (suffix or not name.endswith("-ffdirect"))
        }
        f_cost = speed["direct"] / speed["conservative"]
        entry["F_from_md"] = f_cost
        entry["cost_model_vs_direct"] = {f"mts{m}": 1.0 / (1.0 + (f_cost - 1.0) / m) for m in MTS_FACTORS}
        if "direct-ffdirect" in v:
            for name in v:
                if name.endswith("-ffdirect"):
                    for ref in ("direct", "conservative"):
                        if name == f"{ref}-ffdirect":
                            continue
                        entry["ratios"][f"{name}_vs_{ref}-ffdirect"] = speed[name] / speed[f"{ref}-ffdirect"]
            # what the socket + driver process add per direct step, relative to in-process
            entry["socket_overhead_direct"] = speed["direct-ffdirect"] / speed["direct"] - 1.0
        result["sizes"].append(entry)
        summary = ", ".join(f"{name} {v[name]['steps_per_s']:.3g} steps/s" for name in v)
        print(f"[md] {n_atoms} atoms: {summary}", flush=True)
        summary = ", ".join(f"{name} {x:.1f}" for name, x in cpu_ms.items())
        print(f"[md] {n_atoms} atoms: CPU ms per inner step (i-PI + drivers): {summary}", flush=True)
        for name in v:
            if name.startswith("mts"):
                print(f"[md] {n_atoms} atoms: {name} = {entry['ratios'][name + '_vs_direct']:.2f}x direct, "
                      f"{entry['ratios'][name + '_vs_conservative']:.2f}x conservative", flush=True)
            profile = v[name].get("outer_step_profile")
            if profile and name.startswith("mts"):
                print(f"[md] {n_atoms} atoms: {name} outer step {profile['outer_step_ms']:.1f} ms = "
                      + " + ".join(f"{k} {x:.1f}" for k, x in profile["model_ms"].items())
                      + f" + driver I/O {profile['driver_socket_io_ms']:.1f} + i-PI/rest {profile['ipi_and_rest_ms']:.1f}",
                      flush=True)
        for key, ratio in _default_path_ratios(entry).items():
            print(f"[md] {n_atoms} atoms: default paths of ipi-nc run: {key.replace('_vs_', ' = ')} {ratio:.2f}x", flush=True)
        if "socket_overhead_direct" in entry:
            print(f"[md] {n_atoms} atoms: socket + driver process vs <ffdirect> (direct): "
                  f"{100 * entry['socket_overhead_direct']:+.1f} %", flush=True)
    return result


def _default_path_ratios(entry: dict) -> dict[str, float]:
    """The MTS ratios along ipi-nc run's default CPU paths (all in-process): mtsM-ffdirect against
    direct-ffdirect and conservative-ffdirect."""
    return {key: x for key, x in entry["ratios"].items() if key.startswith("mts") and key.endswith("-ffdirect")}


def markdown(section: dict) -> str:
    suffix = lambda name: "-ffdirect" if name.endswith("-ffdirect") else ""  # noqa: E731
    rows = []
    for entry in section["sizes"]:
        for name, v in entry["variants"].items():
            rows.append([
                entry["n_atoms"], name, v["ms_per_inner_step"], v["steps_per_s"], v["ns_per_day"],
                # in-process rows against the in-process single-level runs
                f"{entry['ratios'].get(name + '_vs_direct' + suffix(name), 1.0):.2f}",
                f"{entry['ratios'].get(name + '_vs_conservative' + suffix(name), 1.0):.2f}",
                v.get("ipi_and_socket_ms_per_step", "-"),
                v.get("cpu_ms_per_inner_step", "-"),
                f"{entry.get('cpu_ratios', {}).get(name + '_vs_direct' + suffix(name), 1.0):.2f}",
                f"{entry.get('cpu_ratios', {}).get(name + '_vs_conservative' + suffix(name), 1.0):.2f}",
            ])
    prof_rows = []
    for entry in section["sizes"]:
        for name, v in entry["variants"].items():
            p = v.get("outer_step_profile")
            if p and v["mts_factor"] > 1:
                model = " + ".join(f"{k} {x:.1f}" for k, x in p["model_ms"].items())
                prof_rows.append([entry["n_atoms"], name, p["outer_step_ms"], model, p["driver_socket_io_ms"],
                                  p["ipi_and_rest_ms"]])
    text = (
        f"### i-PI MD throughput (NVE, inner step {section['dt_fs']} fs; socket drivers as `ipi-nc run`, "
        f"`-ffdirect` = in-process)\n\n"
        + markdown_table(
            ["atoms", "variant", "ms / inner step", "steps/s", "ns/day", "x direct", "x conservative",
             "i-PI + socket ms/step", "CPU ms / inner step", "CPU: x direct", "CPU: x conservative"],
            rows,
        )
    )
    for entry in section["sizes"]:
        if ratios := _default_path_ratios(entry):
            text += (f"\n\nDefault paths of `ipi-nc run` at {entry['n_atoms']} atoms on CPU (all in-process): "
                     + ", ".join(f"{k.replace('_vs_', ' = ')} {x:.2f}x" for k, x in ratios.items()))
    if prof_rows:
        text += "\n\nOne MTS outer step, ms (model passes per outer step from the drivers' exit summaries):\n\n"
        text += markdown_table(["atoms", "variant", "outer step", "model passes", "driver socket I/O",
                                "i-PI + round trips + CPU waits"], prof_rows)
    return text
