"""Write a small i-PI input, run i-PI with its force providers, read the time per step.

The input is an :class:`ipi_ncforces.inputs.make.Variant` (:func:`bench_variant`: knobs
such as ``batch_size``, ``<ffdirect>`` vs ``<ffsocket>``); the processes are run by
:mod:`ipi_ncforces.ipi_driver.launch`.

Time per step comes from i-PI itself: with ``verbosity="high"`` it prints
``Average timings at MD step N. t/step: T`` (seconds) after every step, covering the
force requests (socket + driver, or the in-process PES) and i-PI's own integrator
and output work. Start-up (imports, socket connection) is thus excluded; the first
``warmup_steps`` steps (neighbour list, allocations) are dropped as well.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ipi_ncforces.inputs import make
from ipi_ncforces.ipi_driver import launch
from ipi_ncforces.ipi_driver.runner import PES_PATH

STEP_RE = re.compile(r"Average timings at MD step\s+(\d+)\. t/step:\s+([0-9.eE+-]+)")


@dataclass
class Provider:
    """How the model is served: file, device, dtype, neighbour-list skin (A; None = driver default)."""

    model: Path
    device: str = "cpu"
    dtype: str = "float64"
    threads: int = 1
    neighbor_skin_ang: float | None = None


@dataclass
class MDResult:
    step_times_s: list[float]
    wall_s: float
    returncode: int
    log_tail: str = ""
    driver_logs: list[str] = field(default_factory=list)
    cpu_s_per_step: float | None = None  # i-PI + drivers, CPU seconds per step after warm-up (see _cpu_between_steps)


_runs = itertools.count(1)
DRIVER_MODE = {"cons": "conservative", "direct": "direct"}  # inputs.make forcefield names


def bench_variant(structure: Path, forces: str, steps: int, provider: Provider, **changes) -> make.Variant:
    """An i-PI input for a benchmark: NVE from a thermal start at 300 K, one request per
    structure unless ``batch_size`` says otherwise, properties every 1000 steps only (output
    cost stays out of the per-step time), ``verbosity="high"`` for i-PI's per-step timings.
    ``changes``: any other make.Variant field (dt_fs is the inner step, mts_m, beads, sockets...)."""
    fields = dict(
        name=f"nb{os.getpid()}_{next(_runs)}", forces=forces, steps=steps, structure=str(structure), seed=12345,
        pes_path=str(PES_PATH), model=str(provider.model), device=provider.device, dtype=provider.dtype,
        batch_size=1, verbosity="high", safe_stride=1000,
        outputs=(make.Output("properties", "out", "[ step, time{picosecond}, conserved{electronvolt}, temperature{kelvin} ]", 1000),),
    )
    return make.Variant(**{**fields, **changes})


def driver_args(v: make.Variant, forcefield: str, provider: Provider) -> list[str]:
    args = [
        "--model", str(provider.model), "--structure", v.structure, "--mode", DRIVER_MODE[forcefield], "--unix",
        "--address", make.unix_address(v, forcefield), "--device", provider.device, "--dtype", provider.dtype,
        "--connect-timeout", "120",
    ]
    if provider.neighbor_skin_ang is not None:
        args += ["--neighbor-skin", str(provider.neighbor_skin_ang)]
    return args


def shared_driver_args(v: make.Variant, provider: Provider) -> list[str]:
    """ONE driver for both sockets of an MTS variant (shared backbone pass, as ``ipi-nc run``)."""
    return driver_args(v, "cons", provider) + ["--mts-direct-address", make.unix_address(v, "direct")]


def run_md(v: make.Variant, provider: Provider, workdir: Path, timeout_s: float = 900.0,
           shared_mts: bool = False) -> MDResult:
    """Run i-PI (+ one driver per socket forcefield) on ``v`` in ``workdir``; per-step times in s.
    ``shared_mts``: an MTS variant on unix sockets gets ONE driver serving both sockets."""
    workdir = Path(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    xml = make.write(v, workdir / "input.xml")
    t0 = time.perf_counter()
    ipi = launch.start_ipi(xml, workdir, threads=provider.threads)
    drivers = []
    try:
        if v.sockets == "unix" and shared_mts and v.forces == "mts":
            drivers.append(launch.start_driver(shared_driver_args(v, provider), workdir, "driver-cons+direct.log", provider.threads))
        elif v.sockets == "unix":
            for ff in make.forcefield_names(v):
                drivers.append(launch.start_driver(driver_args(v, ff, provider), workdir, f"driver-{ff}.log", provider.threads))
        cpu_window = _cpu_between_steps([ipi, *drivers], ipi, v.steps, timeout_s)
        try:
            rc = ipi.wait(timeout_s)
        except TimeoutError:
            ipi.kill()
            rc = ipi.returncode
        for d in drivers:
            try:
                d.wait(30)
            except TimeoutError:
                d.kill()
    finally:
        launch.kill_processes([ipi, *drivers])
    wall = time.perf_counter() - t0
    log = ipi.log_text()
    times = [float(t) for _, t in STEP_RE.findall(log)]
    return MDResult(step_times_s=times, wall_s=wall, returncode=rc, log_tail="\n".join(log.splitlines()[-15:]),
                    driver_logs=[d.log_text()[-4000:] for d in drivers] or _in_process_summary(log),
                    cpu_s_per_step=cpu_window)


def _in_process_summary(ipi_log: str) -> list[str]:
    """The exit summary our in-process PES writes into i-PI's log (``<ffdirect>`` runs), as a
    'driver log' for the profile; empty when there is none."""
    from ipi_ncforces.ipi_driver.pes import SUMMARY_PREFIX

    lines = [ln for ln in ipi_log.splitlines() if ln.startswith(SUMMARY_PREFIX)]
    return ["\n".join(lines)] if lines else []


def _cpu_s(processes: list[launch.Process]) -> float:
    """CPU seconds (user + system) used so far by the running ``processes`` (/proc; 0 where unreadable)."""
    total = 0.0
    for proc in processes:
        try:
            fields = Path(f"/proc/{proc.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        except (OSError, ValueError, IndexError):
            pass
    return total


def _cpu_between_steps(processes: list[launch.Process], ipi: launch.Process, steps: int, timeout_s: float) -> float | None:
    """CPU seconds per step that i-PI and its drivers use together from the end of step 1
    (warm-up) to the end of step ``steps - 2`` (before i-PI's last step, after which the
    drivers exit), read from i-PI's per-step timing lines while it runs. On a loaded
    machine wall-clock times include waiting for a core; CPU time does not, so it is the
    load-robust cost of a step. None if the window was missed (fewer than 4 steps, or
    i-PI ended first)."""
    first, last = 1, steps - 2  # "MD step N" is printed when step N (from 0) is done
    if last <= first:
        return None
    deadline = time.monotonic() + timeout_s
    cpu: dict[int, tuple[float, int]] = {}  # mark -> (CPU s, steps done when sampled)
    offset, done = 0, -1
    while ipi.running() and time.monotonic() < deadline and last not in cpu:
        with open(ipi.log_path, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        offset += len(complete)
        done += len(STEP_RE.findall(complete.decode(errors="replace")))
        for mark in (first, last):
            if done >= mark and mark not in cpu and (mark == first or first in cpu):
                cpu[mark] = (_cpu_s(processes), done)  # a late sample counts the steps it saw
        time.sleep(0.002)
    if first not in cpu or last not in cpu or cpu[last][1] <= cpu[first][1]:
        return None
    return (cpu[last][0] - cpu[first][0]) / (cpu[last][1] - cpu[first][1])


def checked(result: MDResult, what: str, steps: int) -> MDResult:
    """Raise with the tails of the logs when i-PI did not complete ``steps`` steps."""
    if result.returncode != 0 or len(result.step_times_s) < steps:
        detail = result.log_tail + "\n" + "\n".join(result.driver_logs)
        raise RuntimeError(
            f"i-PI run '{what}' failed (exit {result.returncode}, {len(result.step_times_s)}/{steps} steps):\n{detail}"
        )
    return result
