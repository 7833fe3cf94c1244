"""Write a small i-PI input, run i-PI with its force providers, read the time per step.

Local template (not ``inputs/make.py``): the benchmarks need knobs the shipped inputs do
not expose (``batch_size``, ``<ffdirect>`` vs ``<ffsocket>``, no outputs, per-step
timing), and must not change when the shipped inputs do.

Time per step comes from i-PI itself: with ``verbosity="high"`` it prints
``Average timings at MD step N. t/step: T`` (seconds) after every step, covering the
force requests (socket + driver, or the in-process PES) and i-PI's own integrator
and output work. Start-up (imports, socket connection) is thus excluded; the first
``warmup_steps`` steps (neighbour list, allocations) are dropped as well.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import ipi_ncforces.ipi_driver.pes as _pes

STEP_RE = re.compile(r"Average timings at MD step\s+(\d+)\. t/step:\s+([0-9.eE+-]+)")
PES_PATH = Path(_pes.__file__).resolve()


@dataclass
class ForceField:
    """One i-PI forcefield served by our model.

    transport: "socket" (``<ffsocket mode="unix">`` + an ``ipi-nc driver`` process) or
    "ffdirect" (``<ffdirect>`` with ``ipi_driver/pes.py`` inside i-PI).
    mts_weights: per-level weights, outer level first (None = no MTS).
    batch_size: structures per request (i-PI ``batch_size``; 1 = one request per bead).
    """

    name: str
    mode: str
    transport: str = "socket"
    mts_weights: list[float] | None = None
    batch_size: int = 1


@dataclass
class MDSpec:
    """What to simulate. dt_fs is the OUTER time step (fs) when nmts is set."""

    structure: Path
    forcefields: list[ForceField]
    steps: int
    dt_fs: float = 0.5
    nmts: list[int] | None = None
    nbeads: int = 1
    temperature_k: float = 300.0
    seed: int = 12345


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


def _forcefield_xml(ff: ForceField, address: str, provider: Provider, structure: Path) -> str:
    if ff.transport == "socket":
        return (
            f'  <ffsocket name="{ff.name}" mode="unix">\n'
            f"    <address>{address}</address>\n    <latency>1e-4</latency>\n"
            f"    <batch_size>{ff.batch_size}</batch_size>\n  </ffsocket>\n"
        )
    if ff.transport == "ffdirect":
        params = (
            f"{{model: {provider.model}, template: {structure}, mode: {ff.mode}, "
            f"device: {provider.device}, dtype: {provider.dtype}}}"
        )
        return (
            f'  <ffdirect name="{ff.name}">\n    <pes>custom</pes>\n    <pes_path>{PES_PATH}</pes_path>\n'
            f"    <parameters>{params}</parameters>\n    <batch_size>{ff.batch_size}</batch_size>\n"
            "  </ffdirect>\n"
        )
    raise ValueError(f"unknown transport '{ff.transport}'")


def input_xml(spec: MDSpec, provider: Provider, addresses: dict[str, str]) -> str:
    """i-PI input (NVE, thermal start at ``temperature_k``; properties every 1000 steps only,
    so output cost does not enter the per-step time)."""
    ffs = "".join(_forcefield_xml(ff, addresses.get(ff.name, ""), provider, spec.structure) for ff in spec.forcefields)
    forces = ""
    for ff in spec.forcefields:
        weights = f"<mts_weights>{list(ff.mts_weights)}</mts_weights>" if ff.mts_weights else ""
        forces += f'      <force forcefield="{ff.name}">{weights}</force>\n'
    nmts = f"<nmts>{list(spec.nmts)}</nmts>" if spec.nmts else ""
    return f"""<simulation verbosity="high" safe_stride="1000">
  <output prefix="bench">
    <properties stride="1000" filename="out"> [ step, time{{picosecond}}, conserved{{electronvolt}}, temperature{{kelvin}} ] </properties>
  </output>
  <total_steps>{spec.steps}</total_steps>
  <prng><seed>{spec.seed}</seed></prng>
{ffs}  <system>
    <initialize nbeads="{spec.nbeads}">
      <file mode="xyz"> {spec.structure} </file>
      <velocities mode="thermal" units="kelvin"> {spec.temperature_k} </velocities>
    </initialize>
    <forces>
{forces}    </forces>
    <ensemble><temperature units="kelvin"> {spec.temperature_k} </temperature></ensemble>
    <motion mode="dynamics">
      <dynamics mode="nve">
        <timestep units="femtosecond"> {spec.dt_fs} </timestep>
        {nmts}
      </dynamics>
    </motion>
  </system>
</simulation>
"""


def _bin(name: str) -> str:
    """Console script next to this interpreter (the venv), else on PATH."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"'{name}' not found next to {sys.executable} nor on PATH; run 'make install'")
    return found


def driver_command(ff: ForceField, address: str, provider: Provider, structure: Path) -> list[str]:
    cmd = [
        _bin("ipi-nc"), "driver", "--model", str(provider.model), "--structure", str(structure),
        "--mode", ff.mode, "--unix", "--address", address, "--device", provider.device,
        "--dtype", provider.dtype, "--connect-timeout", "120",
    ]
    if provider.neighbor_skin_ang is not None:
        cmd += ["--neighbor-skin", str(provider.neighbor_skin_ang)]
    return cmd


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


_counter = 0


def run_md(spec: MDSpec, provider: Provider, workdir: Path, timeout_s: float = 900.0) -> MDResult:
    """Run i-PI (+ one driver per socket forcefield) in ``workdir``; per-step times in s."""
    global _counter
    _counter += 1
    workdir = Path(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    addresses = {ff.name: f"nb{os.getpid()}_{_counter}_{ff.name}" for ff in spec.forcefields}
    (workdir / "input.xml").write_text(input_xml(spec, provider, addresses))
    env = thread_env(provider.threads)
    t0 = time.perf_counter()
    ipi_log = open(workdir / "ipi.log", "w")
    ipi = subprocess.Popen([_bin("i-pi"), "input.xml"], cwd=workdir, stdout=ipi_log, stderr=subprocess.STDOUT, env=env)
    drivers, driver_logs = [], []
    try:
        for ff in spec.forcefields:
            if ff.transport != "socket":
                continue
            log_path = workdir / f"driver-{ff.name}.log"
            driver_logs.append(log_path)
            drivers.append(
                subprocess.Popen(
                    driver_command(ff, addresses[ff.name], provider, spec.structure),
                    cwd=workdir, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env,
                )
            )
        try:
            rc = ipi.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            ipi.kill()
            rc = ipi.wait()
        for d in drivers:
            try:
                d.wait(timeout=30)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait()
    finally:
        for p in [ipi, *drivers]:
            if p.poll() is None:
                p.kill()
                p.wait()
        ipi_log.close()
    wall = time.perf_counter() - t0
    log = (workdir / "ipi.log").read_text(errors="replace")
    times = [float(t) for _, t in STEP_RE.findall(log)]
    return MDResult(
        step_times_s=times,
        wall_s=wall,
        returncode=rc,
        log_tail="\n".join(log.splitlines()[-15:]),
        driver_logs=[p.read_text(errors="replace")[-2000:] for p in driver_logs],
    )


def checked(result: MDResult, what: str, steps: int) -> MDResult:
    """Raise with the tails of the logs when i-PI did not complete ``steps`` steps."""
    if result.returncode != 0 or len(result.step_times_s) < steps:
        detail = result.log_tail + "\n" + "\n".join(result.driver_logs)
        raise RuntimeError(
            f"i-PI run '{what}' failed (exit {result.returncode}, {len(result.step_times_s)}/{steps} steps):\n{detail}"
        )
    return result
