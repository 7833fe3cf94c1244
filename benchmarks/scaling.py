"""Cost growth with atom count, from the per-evaluation timings of :mod:`ipi_ncforces.benchmarks.cost`.

For a local model the cost per evaluation should be linear in N: the log-log slope
d ln t / d ln N between consecutive sizes should be close to 1 (the time per atom flat).
A slope well above 1 points at something quadratic (e.g. a neighbour search), below 1
at fixed per-call overhead that is not yet amortized (small systems, GPU launches).
"""

from __future__ import annotations

import math

from ipi_ncforces.benchmarks.common import BenchConfig, markdown_table

SERIES = ("evaluator_direct", "evaluator_conservative", "neighbour_list")


def analyse(cost_section: dict) -> dict:
    """Slopes and time per atom (microseconds) for each series of the cost section."""
    sizes = sorted(cost_section["sizes"], key=lambda r: r["n_atoms"])
    out: dict = {"n_atoms": [r["n_atoms"] for r in sizes], "series": {}}
    for name in SERIES:
        times_ms = [r["times"][name]["median_ms"] for r in sizes]
        per_atom_us = [1e3 * t / r["n_atoms"] for t, r in zip(times_ms, sizes)]
        n = out["n_atoms"]
        slopes = [math.log(tb / ta) / math.log(b / a) for a, b, ta, tb in zip(n, n[1:], times_ms, times_ms[1:])]
        out["series"][name] = {"median_ms": times_ms, "us_per_atom": per_atom_us, "loglog_slopes": slopes}
    return out


def run(cfg: BenchConfig, cost_section: dict | None = None) -> dict:
    """Use the cost section if already measured (``run_all``), else measure it."""
    if cost_section is None:
        from ipi_ncforces.benchmarks import cost

        cost_section = cost.run(cfg)
    result = analyse(cost_section)
    for name, s in result["series"].items():
        slopes = ", ".join(f"{x:.2f}" for x in s["loglog_slopes"]) or "n/a (one size)"
        print(f"[scaling] {name}: us/atom {[round(x, 2) for x in s['us_per_atom']]}, log-log slopes {slopes}")
    return result


def markdown(section: dict) -> str:
    rows = []
    for name, s in section["series"].items():
        slopes = ", ".join(f"{x:.2f}" for x in s["loglog_slopes"]) or "n/a"
        rows.append([name] + [f"{x:.2f}" for x in s["us_per_atom"]] + [slopes])
    header = ["series"] + [f"us/atom @ {n}" for n in section["n_atoms"]] + ["log-log slopes"]
    return "### Cost growth with atom count (slope 1 = linear)\n\n" + markdown_table(header, rows)
