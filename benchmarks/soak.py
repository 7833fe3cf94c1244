"""Soak benchmark: one long i-PI NVT run, memory and speed sampled over time.

Runs ``ipi-nc run`` (a subprocess: i-PI plus one ``ipi-nc driver``, or i-PI alone with
``<ffdirect>``) on a Langevin NVT input built with :mod:`ipi_ncforces.inputs.make`, and
every ``--sample-every`` seconds records, from ``/proc/<pid>/status``, the resident set
size (MB) of i-PI and of the driver(s), and from i-PI's properties file the step reached;
steps/s is the step difference over the sample interval. Writes ``soak-<label>.csv`` and
``soak-<label>.png`` (matplotlib) and prints a summary: RSS after warm-up and at the end,
growth in MB per 1,000 steps (least-squares slope over the second half of the run) and
steps/s in the first and last quarter. Linux only (/proc).

A flat run shows ~0 MB per 1,000 steps and the same steps/s at the start and the end.
Measured numbers are in README ("Long runs"). Not a test: it takes minutes to hours.

    python -m ipi_ncforces.benchmarks.soak --model models/data/water-m.pt --steps 20000
    python -m ipi_ncforces.benchmarks.soak --model qtip4pf --transport ffdirect
    ipi-nc bench --only soak --soak-steps 20000
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ipi_ncforces.benchmarks.common import REFERENCE, model_file_or_reference
from ipi_ncforces.ipi_driver import launch

TRANSPORTS = ("socket", "ffdirect")
PROPERTIES = "[ step, time{picosecond}, temperature{kelvin}, potential{electronvolt} ]"
PROPERTIES_STRIDE = 10  # steps between properties rows (the step counter the sampler reads)


@dataclass
class Sample:
    """One observation of the run. RSS in MB (0 when the process is not running)."""

    elapsed_s: float
    step: int
    steps_per_s: float
    rss_ipi_mb: float
    rss_driver_mb: float


# --------------------------------------------------------------------------- /proc


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text()
            kids += [int(x) for x in text.split()]
    except OSError:
        pass
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/<pid>/task/*/children)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += _children(p)
    return tree


def rss_mb(pid: int) -> float:
    """Resident set size (MB) of ``pid`` from /proc/<pid>/status; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def role(pid: int) -> str:
    """'ipi', 'driver' or 'other', from the process command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "other"
    names = [Path(a.decode(errors="replace")).name for a in argv if a]
    if "driver" in names or "i-pi-py_driver" in names:
        return "driver"
    if "i-pi" in names:
        return "ipi"
    return "other"


def last_step(properties: Path) -> int:
    """Step column of the last complete row of an i-PI properties file (-1 if none yet)."""
    try:
        with open(properties, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return -1
    for line in reversed(tail.splitlines()[:-1] if not tail.endswith("\n") else tail.splitlines()):
        fields = line.split()
        if fields and not line.lstrip().startswith("#"):
            try:
                return int(float(fields[0]))
            except ValueError:
                continue
    return -1


# --------------------------------------------------------------------------- run


def write_input(work: Path, structure: Path, steps: int, transport: str, label: str) -> Path:
    """Langevin NVT (300 K, tau 100 fs, dt 0.5 fs), conservative forces; properties every
    PROPERTIES_STRIDE steps, no trajectories (their I/O would blur the speed)."""
    from ipi_ncforces.inputs import make

    variant = make.Variant(
        name=f"soak-{label}",
        ensemble="nvt",
        thermostat="langevin",
        tau_fs=100.0,
        forces="conservative",
        steps=steps,
        structure=str(Path(structure).resolve()),
        sockets="unix" if transport == "socket" else "ffdirect",
        socket_address=f"soak{os.getpid()}-{label}",
        safe_stride=100,
        outputs=(make.Output("properties", "out", PROPERTIES, stride=PROPERTIES_STRIDE),),
    )
    return make.write(variant, Path(work) / f"soak-{label}.xml")


def soak(
    model: Path,
    *,
    label: str,
    work: Path,
    structure: Path,
    steps: int,
    transport: str = "socket",
    device: str = "cpu",
    sample_every_s: float = 2.0,
    threads: int = 1,
    timeout_s: float | None = None,
    log=print,
) -> list[Sample]:
    """Run the soak and return the samples (also while i-PI finishes); RuntimeError with
    the tail of the run log when ``ipi-nc run`` fails."""
    work = Path(work)
    run_dir = work / f"run-{label}"
    xml = write_input(work, structure, steps, transport, label)
    cmd = [launch.find_executable("ipi-nc"), "run", xml, "--model", model, "--workdir", run_dir, "--device", device, "--quiet",
           "--transport", "sockets" if transport == "socket" else "in-process"]
    run_log = work / f"soak-{label}.log"
    run_log.unlink(missing_ok=True)
    properties = run_dir / f"soak-{label}.out"
    samples: list[Sample] = []
    t0 = time.monotonic()
    proc = launch.start_process(cmd, work, run_log.name, threads, label=f"ipi-nc run ({label})")
    try:
        previous_t, previous_step, last_report = t0, 0, t0
        while proc.running():
            time.sleep(sample_every_s)
            now = time.monotonic()
            if timeout_s is not None and now - t0 > timeout_s:
                raise RuntimeError(f"soak '{label}' ran past {timeout_s:g} s")
            rss = {"ipi": 0.0, "driver": 0.0}
            for pid in process_tree(proc.popen.pid)[1:]:
                kind = role(pid)
                if kind in rss:
                    rss[kind] += rss_mb(pid)
            step = last_step(properties)
            if step < 0 or rss["ipi"] == 0.0 or (transport == "socket" and rss["driver"] == 0.0):
                continue  # still starting (no properties row or driver yet) or already finishing
            rate = (step - previous_step) / (now - previous_t) if samples else float("nan")
            samples.append(Sample(now - t0, step, rate, rss["ipi"], rss["driver"]))
            previous_t, previous_step = now, step
            if now - last_report > 30:
                log(f"[soak {label}] step {step}/{steps}, {rate:.1f} steps/s, "
                    f"RSS i-PI {rss['ipi']:.0f} MB, driver {rss['driver']:.0f} MB")
                last_report = now
    finally:
        if proc.running():
            proc.stop(grace_s=60)
    if proc.returncode != 0:
        tail = "\n".join(run_log.read_text(errors="replace").splitlines()[-10:])
        raise RuntimeError(f"soak '{label}': ipi-nc run exited {proc.returncode}:\n{tail}")
    return samples


# --------------------------------------------------------------------------- report


def summarize(samples: list[Sample], steps: int) -> dict:
    """RSS after warm-up (first sample past 10% of the steps) and at the end (MB), growth
    (MB per 1,000 steps, slope over the second half), steps/s in the first and last quarter."""
    rows = [s for s in samples if s.step > 0]
    if len(rows) < 4:
        return {"samples": len(samples), "note": "too few samples (run longer or sample more often)"}
    step = np.array([s.step for s in rows], dtype=float)
    out: dict = {"samples": len(samples), "steps": steps, "wall_s": rows[-1].elapsed_s}
    warm = next((i for i, s in enumerate(step) if s >= 0.1 * steps), 0)
    half = step >= step[-1] / 2
    for key in ("ipi", "driver"):
        rss = np.array([getattr(s, f"rss_{key}_mb") for s in rows])
        if not rss.any():
            continue
        slope = np.polyfit(step[half], rss[half], 1)[0] * 1000.0 if half.sum() >= 2 else float("nan")
        out[key] = {
            "rss_after_warmup_mb": float(rss[warm]),
            "rss_end_mb": float(rss[-1]),
            "rss_max_mb": float(rss.max()),
            "growth_mb_per_1000_steps": float(slope),
        }
    elapsed = np.array([s.elapsed_s for s in rows])
    # steps/s over each quarter as a whole: i-PI writes its properties in bursts, so
    # the per-sample rates (in the CSV) scatter by +-1 burst per sampling period
    for name, chosen in (("first", step <= 0.25 * steps), ("last", step >= 0.75 * steps)):
        idx = np.flatnonzero(chosen)
        if name == "first" and len(idx):
            idx = np.append(idx, idx[-1] + 1) if idx[-1] + 1 < len(rows) else idx
        if name == "last" and len(idx) and idx[0] > 0:
            idx = np.insert(idx, 0, idx[0] - 1)
        span_s = elapsed[idx[-1]] - elapsed[idx[0]] if len(idx) > 1 else 0.0
        rate = (step[idx[-1]] - step[idx[0]]) / span_s if span_s > 0 else float("nan")
        out[f"steps_per_s_{name}_quarter"] = float(rate)
    return out


def summary_line(label: str, summary: dict) -> str:
    if "steps_per_s_first_quarter" not in summary:
        return f"{label}: {summary.get('note', 'no data')}"
    parts = [f"{label}:"]
    for key, name in (("driver", "driver"), ("ipi", "i-PI")):
        if key in summary:
            s = summary[key]
            parts.append(
                f"{name} RSS {s['rss_after_warmup_mb']:.0f} -> {s['rss_end_mb']:.0f} MB "
                f"({s['growth_mb_per_1000_steps']:+.2f} MB/1000 steps);"
            )
    parts.append(
        f"{summary['steps_per_s_first_quarter']:.1f} -> {summary['steps_per_s_last_quarter']:.1f} steps/s "
        f"(first -> last quarter of {summary['steps']} steps)"
    )
    return " ".join(parts)


def write_csv(samples: list[Sample], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(samples[0]).keys()) if samples else ["elapsed_s"])
        writer.writeheader()
        for s in samples:
            writer.writerow(asdict(s))
    return path


RATE_WINDOW = 5  # samples per plotted speed point (i-PI writes rows in bursts)


def windowed_rate(samples: list[Sample], window: int = RATE_WINDOW) -> list[float]:
    """steps/s over the last ``window`` sampling periods at each sample (NaN before)."""
    rates = []
    for k, s in enumerate(samples):
        j = max(0, k - window)
        span_s = s.elapsed_s - samples[j].elapsed_s
        rates.append((s.step - samples[j].step) / span_s if k > 0 and span_s > 0 else float("nan"))
    return rates


def plot(runs: dict[str, list[Sample]], path: Path) -> Path:
    """RSS (MB) of driver and i-PI, and steps/s (over RATE_WINDOW samples), against the MD
    step; one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rss, ax_rate) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for i, (label, samples) in enumerate(runs.items()):
        step = [s.step for s in samples]
        colour = f"C{i}"
        if any(s.rss_driver_mb for s in samples):
            ax_rss.plot(step, [s.rss_driver_mb for s in samples], color=colour, label=f"{label}: driver")
        ax_rss.plot(step, [s.rss_ipi_mb for s in samples], color=colour, linestyle="--", label=f"{label}: i-PI")
        ax_rate.plot(step, windowed_rate(samples), color=colour, label=label)
    ax_rss.set_ylabel("resident memory (MB)")
    ax_rss.legend(fontsize=8)
    ax_rate.set_ylabel(f"speed (steps/s, {RATE_WINDOW} samples)")
    ax_rate.set_xlabel("MD step")
    ax_rate.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- entry points


def resolve(model_arg: str, work: Path) -> tuple[Path, str]:
    """(model file, label) for a --model value: a .pt path or the keyword 'qtip4pf'."""
    path = model_file_or_reference(model_arg, work, "--model")
    return path, REFERENCE if model_arg == REFERENCE else path.stem


def soak_all(
    models: list[str], *, out: Path, structure: Path, steps: int, transport: str, device: str,
    sample_every_s: float, threads: int, log=print,
) -> dict:
    """Soak every model in turn; CSVs, one plot and a dict of summaries under ``out``."""
    out = Path(out).resolve()
    work = out / "soak-work"
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[Sample]] = {}
    summaries: dict[str, dict] = {}
    for model_arg in models:
        path, label = resolve(model_arg, work)
        label = f"{label}-{transport}"
        log(f"[soak] {label}: {steps} steps of NVT with {path} ({transport}, {device})")
        samples = soak(
            path, label=label, work=work, structure=structure, steps=steps, transport=transport,
            device=device, sample_every_s=sample_every_s, threads=threads, log=log,
        )
        runs[label] = samples
        write_csv(samples, out / f"soak-{label}.csv")
        summaries[label] = summarize(samples, steps)
        log("[soak] " + summary_line(label, summaries[label]))
    figure = plot(runs, out / "soak.png")
    return {"transport": transport, "device": device, "steps": steps, "structure": str(structure),
            "runs": summaries, "plot": str(figure)}


def markdown(section: dict) -> str:
    lines = [f"## Soak: {section['steps']} steps of NVT ({section['transport']}, {section['device']})", ""]
    lines += [f"- {summary_line(label, s)}" for label, s in section["runs"].items()]
    lines += ["", f"Plot: `{section['plot']}`"]
    return "\n".join(lines)


def run(cfg, steps: int | None = None) -> dict:
    """``ipi-nc bench --only soak``: the bench model and the q-TIP4P/F reference, socket driver."""
    from ipi_ncforces.benchmarks.common import WATER64

    steps = steps or (500 if cfg.quick else 20000)
    return soak_all(
        [str(cfg.model_path), REFERENCE], out=cfg.out, structure=WATER64, steps=steps, transport="socket",
        device=cfg.device, sample_every_s=2.0, threads=cfg.threads,
    )


def build_parser() -> argparse.ArgumentParser:
    from ipi_ncforces.benchmarks.common import WATER64

    p = argparse.ArgumentParser(
        prog="python -m ipi_ncforces.benchmarks.soak",
        description="Long i-PI NVT run(s) through 'ipi-nc run', sampling resident memory (MB) of i-PI and of "
        "the driver and the speed (steps/s) over time; writes OUT/soak-<model>.csv, OUT/soak.png and prints "
        "growth in MB per 1,000 steps.",
    )
    p.add_argument(
        "--model", action="append", default=None,
        help=f"model file (.pt), or '{REFERENCE}' for the q-TIP4P/F reference; repeat for several "
        f"(default: models/data/water-m.pt and {REFERENCE})",
    )
    p.add_argument("--steps", type=int, default=20000, help="MD steps of 0.5 fs per run (default 20000)")
    p.add_argument("--transport", choices=TRANSPORTS, default="socket",
                   help="socket: i-PI + 'ipi-nc driver' over a unix socket; ffdirect: the model inside i-PI")
    p.add_argument("--structure", default=str(WATER64), help="i-PI xyz start structure (default inputs/water64.xyz)")
    p.add_argument("--device", default="cpu", help="torch device of the driver (default cpu)")
    p.add_argument("--sample-every", type=float, default=2.0, metavar="SECONDS", help="sampling period (default 2 s)")
    p.add_argument("--threads", type=int, default=1, help="OpenMP/torch threads per process (default 1)")
    p.add_argument("--out", default="bench-out", help="output folder (default bench-out)")
    return p


def main(argv: list[str] | None = None) -> int:
    from ipi_ncforces.benchmarks.common import SHIPPED_M_MODEL

    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.sample_every <= 0 or args.threads < 1:
        print("soak: --steps and --threads must be >= 1 and --sample-every > 0", file=sys.stderr)
        return 2
    if not sys.platform.startswith("linux"):
        print("soak: needs Linux (/proc) to read memory", file=sys.stderr)
        return 2
    models = args.model or [str(SHIPPED_M_MODEL), REFERENCE]
    try:
        section = soak_all(
            models, out=Path(args.out), structure=Path(args.structure), steps=args.steps,
            transport=args.transport, device=args.device, sample_every_s=args.sample_every, threads=args.threads,
        )
    except FileNotFoundError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 1
    print(markdown(section))
    return 0


if __name__ == "__main__":
    sys.exit(main())
