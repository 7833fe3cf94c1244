"""``ipi-nc bench``: run the benchmarks, print the ratios, write results.json + results.md.

Benchmarks (``--only`` picks a subset): cost (F = t_cons / t_direct per evaluation),
scaling (cost vs atom count, from cost), md (i-PI throughput: conservative, direct,
MTS M=2,4,8,16), overhead (socket + i-PI vs ffdirect vs bare model), pimd (32 beads
batched vs per-bead). Sizes: 192, 1536, 12288 atoms of replicated water.
Opt-in (never in the default set, it runs for long): soak (``--only soak``: a long NVT
run, RSS of i-PI and driver and steps/s over time; benchmarks/soak.py); metatomic
(``--only metatomic``: our driver vs i-PI's metatomic PES, socket and ffdirect, on the
exported model; benchmarks/metatomic.py); equipartition (``--only equipartition``: SVR
replicas of the reference and the bench model, T_H / T_O with replica error bars;
benchmarks/equipartition.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ipi_ncforces.benchmarks.common import SIZES_ATOMS, BenchConfig, base_water, machine_info, resolve_model, write_json
from ipi_ncforces.cli import absolute_paths

BENCHMARKS = ("cost", "scaling", "md", "overhead", "pimd")
OPT_IN = ("soak", "metatomic", "equipartition")  # only when named in --only


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated atom counts, got '{text}'") from None
    bad = [s for s in sizes if s not in SIZES_ATOMS]
    if bad or not sizes:
        raise argparse.ArgumentTypeError(f"sizes must be among {', '.join(map(str, SIZES_ATOMS))} (got '{text}')")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ipi-nc bench",
        description="Cost of conservative vs direct forces, MTS speed-up, driver overhead and PIMD batching, "
        "measured side by side in one run (interleaved repeats, median and spread). Writes OUT/results.json "
        "and OUT/results.md; times in ms, throughput in steps/s and ns/day.",
    )
    p.add_argument("--out", default="bench-out", help="output folder (default bench-out)")
    p.add_argument("--device", default="cpu", help="cpu or cuda / cuda:K (default cpu)")
    p.add_argument("--dtype", choices=("float32", "float64"), help="default float64 on cpu, float32 on cuda")
    p.add_argument(
        "--model",
        help="model file (default models/data/water-m.pt; without it an untrained DualHeadPotential; "
        "the JSON records which)",
    )
    p.add_argument("--quick", action="store_true", help="smoke version: 192 atoms, few steps, MTS M=2, 4 beads")
    p.add_argument(
        "--only", default=",".join(BENCHMARKS),
        help=f"comma-separated subset of {','.join(BENCHMARKS + OPT_IN)} (default: all but {','.join(OPT_IN)})",
    )
    p.add_argument("--soak-steps", type=int, help="steps of the soak run per model (default 20000; --quick 500)")
    p.add_argument("--sizes", type=_sizes, help="per-evaluation sizes in atoms (default 192,1536,12288)")
    p.add_argument(
        "--md-sizes", type=_sizes, help="i-PI MD sizes in atoms (default 192,1536 on cpu; all three on cuda)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads per process (default 1)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    absolute_paths(args, "model", "out")  # the drivers and i-PI run in OUT/work/...: no relative path may reach them

    def fail(message: str) -> int:
        print(f"ipi-nc bench: {message}", file=sys.stderr)
        return 2

    only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in only if b not in BENCHMARKS + OPT_IN]
    if unknown:
        return fail(f"unknown benchmark '{unknown[0]}' (--only): choose from {', '.join(BENCHMARKS + OPT_IN)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return fail(f"--device {args.device} but torch sees no CUDA GPU here; use --device cpu")
    if args.threads < 1:
        return fail("--threads must be >= 1")
    if args.soak_steps is not None and args.soak_steps < 1:
        return fail("--soak-steps must be >= 1")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = args.device.startswith("cuda")
    try:
        model_path, model_info = resolve_model(args.model, out / "work")
    except ValueError as exc:  # ModelFileError: one line naming the file
        return fail(f"{exc} (--model)")
    cfg = BenchConfig(
        out=out,
        device=args.device,
        dtype=args.dtype or model_info.get("dtype") or ("float32" if gpu else "float64"),  # metatomic: its own
        model_path=model_path,
        model_info=model_info,
        quick=args.quick,
        threads=args.threads,
        sizes=args.sizes or ((192,) if args.quick else SIZES_ATOMS),
        md_sizes=args.md_sizes or ((192,) if args.quick else (SIZES_ATOMS if gpu else (192, 1536))),
    )
    _, structure_source = base_water()
    print(f"[bench] model: {model_info['source']} ({model_path}); device {cfg.device}, {cfg.dtype}; "
          f"structure: {structure_source}", flush=True)

    from ipi_ncforces.benchmarks import cost, md, overhead, pimd, scaling, soak
    from ipi_ncforces.benchmarks import equipartition
    from ipi_ncforces.benchmarks import metatomic as metatomic_bench

    results: dict = {
        "command": "ipi-nc bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(cfg.device), "model": model_info, "structure": structure_source,
        "device": cfg.device, "dtype": cfg.dtype, "quick": cfg.quick, "threads": cfg.threads,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    markdown = [
        "# ipi-ncforces benchmarks",
        "",
        f"Model: {model_info['source']} (`{model_info['model_type']}`, {model_info['n_parameters']} parameters). "
        f"Device {cfg.device}, {cfg.dtype}, {cfg.threads} thread(s) per process. Machine: "
        f"{results['machine']['processor']}, {results['machine']['cpu_count']} CPUs, "
        f"load average {results['machine']['load_average_1min']:.2f} at start.",
    ]
    t_start = time.perf_counter()
    modules = {"cost": cost, "scaling": scaling, "md": md, "overhead": overhead, "pimd": pimd, "soak": soak,
               "metatomic": metatomic_bench, "equipartition": equipartition}
    for name in BENCHMARKS + OPT_IN:
        if name not in only:
            continue
        t0 = time.perf_counter()
        if name == "scaling":
            section = scaling.run(cfg, results.get("cost"))
        elif name == "soak":
            section = soak.run(cfg, args.soak_steps)
        else:
            section = modules[name].run(cfg)
        text = modules[name].markdown(section)
        section["elapsed_s"] = time.perf_counter() - t0
        results[name] = section
        markdown += ["", text]
        write_json(results, out / "results.json")  # partial results survive a later failure
    results["elapsed_s"] = time.perf_counter() - t_start
    write_json(results, out / "results.json")
    (out / "results.md").write_text("\n".join(markdown) + "\n")
    print(f"[bench] done in {results['elapsed_s']:.0f} s; wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
