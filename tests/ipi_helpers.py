"""Helpers for tests that run a real i-PI: small inputs, process start/stop, output reading.

Typical use::

    box = write_water_box(tmp_path / "init.xyz")
    model = write_toy_model(tmp_path / "toy.pt")
    name = unique_socket_name()
    xml = write_ipi_input(tmp_path / "input.xml", init_file=box, address=name, steps=5)
    ipi = start_ipi(xml, tmp_path)            # Popen; i-PI writes its outputs in tmp_path
    wait_for_socket(name, ipi)
    drv = start_driver(["--model", model, ...])
    assert wait_process(ipi, 60) == 0
    ...
    kill_processes(ipi, drv)                  # in a fixture's teardown / finally

All processes are started in their own session so that ``kill_processes`` can remove
them (and their children) even when a test fails halfway.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from ipi_ncforces.models.structure_io import write_ipi_xyz

BIN = Path(sys.executable).parent
IPI = str(BIN / "i-pi")
IPI_NC = str(BIN / "ipi-nc")
IPI_PY_DRIVER = str(BIN / "i-pi-py_driver")
SOCKETS_PREFIX = "/tmp/ipi_"

# one H2O molecule (A): O at the origin, H-O-H 104.5 deg, r(OH) 0.9572 A
_WATER = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])


def unique_socket_name(tag: str = "t") -> str:
    """A unix socket name no other test (or engineer) uses at the same time."""
    return f"ncf-{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def socket_path(name: str, prefix: str = SOCKETS_PREFIX) -> Path:
    return Path(prefix + name)


def water_box(n_side: int = 2, density_g_cm3: float = 1.0, seed: int = 0):
    """ase.Atoms: n_side**3 randomly oriented water molecules on a cubic grid (periodic)."""
    import ase
    from scipy.spatial.transform import Rotation

    n_mol = n_side**3
    mass_g = n_mol * 18.015 / 6.02214076e23
    length_ang = (mass_g / density_g_cm3) ** (1 / 3) * 1e8
    spacing = length_ang / n_side
    rng = np.random.default_rng(seed)
    positions, symbols = [], []
    rotations = Rotation.random(n_mol, random_state=rng)
    k = 0
    for ix in range(n_side):
        for iy in range(n_side):
            for iz in range(n_side):
                centre = (np.array([ix, iy, iz]) + 0.5) * spacing
                positions.extend(rotations[k].apply(_WATER) + centre)
                symbols.extend("OHH")
                k += 1
    return ase.Atoms(symbols, positions=positions, cell=[length_ang] * 3, pbc=True)


def write_water_box(path: str | Path, n_side: int = 2, seed: int = 0) -> Path:
    """Small periodic water box (n_side**3 molecules, 1 g/cm^3) in i-PI xyz format."""
    return write_ipi_xyz(water_box(n_side=n_side, seed=seed), path)


def write_toy_model(path: str | Path, **kwargs) -> Path:
    """Save a PairToyModel (kwargs go to its constructor) and return the path."""
    from ipi_ncforces.models.io import save_model
    from ipi_ncforces.models.pair_toy import PairToyModel

    return save_model(PairToyModel(**kwargs), path)


def write_ipi_input(
    path: str | Path,
    *,
    init_file: str | Path,
    address: str | None = None,
    steps: int = 5,
    nbeads: int = 1,
    dt_fs: float = 0.5,
    temperature_k: float = 300.0,
    batch_size: int = 1,
    latency_s: float = 1e-4,
    consolidate_messages: bool = True,
    fixcom: bool = True,
    velocities: bool = True,
    ffdirect_pes: str | None = None,
    ffdirect_parameters: str = "",
    prefix: str = "sim",
    stride: int = 1,
    seed: int = 12345,
) -> Path:
    """An NVE (or PIMD-NVE with ``nbeads`` > 1) i-PI input: one forcefield called "model",
    a unix <ffsocket> named ``address`` or, with ``ffdirect_pes`` (a .py path), an
    <ffdirect> custom PES. Outputs: ``PREFIX.out`` (step, time in fs, potential and
    conserved energy in Hartree), ``PREFIX.pos_*.extxyz`` / ``PREFIX.for_*.extxyz``
    (positions in A and forces in eV/A per bead: i-PI's extxyz writer only allows ASE
    units; 8 decimals).

    consolidate_messages=False makes i-PI 3.3.1 survive a driver killed by SIGKILL: with
    the default (True) a connection reset kills i-PI's polling thread and i-PI hangs."""
    path = Path(path)
    if ffdirect_pes is not None:
        forcefield = f"""  <ffdirect name="model">
    <pes>custom</pes>
    <pes_path>{ffdirect_pes}</pes_path>
    <parameters>{ffdirect_parameters}</parameters>
    <batch_size>{batch_size}</batch_size>
  </ffdirect>"""
    else:
        forcefield = f"""  <ffsocket name="model" mode="unix" pbc="false">
    <address>{address}</address>
    <latency>{latency_s}</latency>
    <batch_size>{batch_size}</batch_size>
    <consolidate_messages>{consolidate_messages}</consolidate_messages>
  </ffsocket>"""
    vel = f'<velocities mode="thermal" units="kelvin">{temperature_k}</velocities>' if velocities else ""
    xml = f"""<simulation verbosity="low" safe_stride="100000">
  <output prefix="{prefix}">
    <properties filename="out" stride="{stride}" flush="1">[ step, time{{femtosecond}}, potential, conserved ]</properties>
    <trajectory filename="pos" stride="{stride}" format="ase" flush="1">positions</trajectory>
    <trajectory filename="for" stride="{stride}" format="ase" flush="1">forces</trajectory>
    <checkpoint stride="100000"/>
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>{seed}</seed></prng>
{forcefield}
  <system>
    <initialize nbeads="{nbeads}">
      <file mode="xyz">{init_file}</file>
      {vel}
    </initialize>
    <forces><force forcefield="model"/></forces>
    <motion mode="dynamics">
      <fixcom>{fixcom}</fixcom>
      <dynamics mode="nve"><timestep units="femtosecond">{dt_fs}</timestep></dynamics>
    </motion>
    <ensemble><temperature units="kelvin">{temperature_k}</temperature></ensemble>
  </system>
</simulation>
"""
    path.write_text(xml)
    return path


def _popen(cmd: list[str], cwd: str | Path, log_name: str) -> subprocess.Popen:
    cwd = Path(cwd)
    log = open(cwd / log_name, "w")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [str(c) for c in cmd], cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    proc.log_path = cwd / log_name  # type: ignore[attr-defined]
    log.close()
    return proc


def start_ipi(input_xml: str | Path, cwd: str | Path, log_name: str = "ipi.log") -> subprocess.Popen:
    """Start ``i-pi input.xml`` in ``cwd`` (stdout+stderr to cwd/log_name)."""
    return _popen([IPI, Path(input_xml).resolve()], cwd, log_name)


def start_driver(args: list, cwd: str | Path, log_name: str = "driver.log") -> subprocess.Popen:
    """Start ``ipi-nc driver ARGS`` in ``cwd`` (stdout+stderr to cwd/log_name)."""
    return _popen([IPI_NC, "driver", *args], cwd, log_name)


def start_command(cmd: list, cwd: str | Path, log_name: str) -> subprocess.Popen:
    return _popen(cmd, cwd, log_name)


def log_text(proc: subprocess.Popen) -> str:
    return Path(proc.log_path).read_text()  # type: ignore[attr-defined]


def wait_for_socket(name: str, ipi: subprocess.Popen, timeout_s: float = 60.0, prefix: str = SOCKETS_PREFIX) -> None:
    """Block until i-PI has created its unix socket file (raise if i-PI dies first)."""
    deadline = time.monotonic() + timeout_s
    path = socket_path(name, prefix)
    while not path.exists():
        if ipi.poll() is not None:
            raise RuntimeError(f"i-PI exited ({ipi.returncode}) before opening {path}:\n{log_text(ipi)[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"i-PI did not open {path} within {timeout_s} s")
        time.sleep(0.05)


def wait_process(proc: subprocess.Popen, timeout_s: float = 60.0) -> int:
    """Return code of ``proc``; raise TimeoutError (with its log) if it does not end in time."""
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{proc.args[:2]} still running after {timeout_s} s:\n{log_text(proc)[-2000:]}") from None


def wait_for_step(properties: str | Path, step: int, procs: list[subprocess.Popen], timeout_s: float = 60.0) -> None:
    """Block until i-PI's properties file holds a line for ``step`` (first column)."""
    deadline = time.monotonic() + timeout_s
    path = Path(properties)
    while True:
        if path.exists():
            rows = [ln.split() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            if rows and len(rows[-1]) > 1 and int(float(rows[-1][0])) >= step:
                return
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[:2]} exited ({p.returncode}) early:\n{log_text(p)[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"step {step} not reached in {path} within {timeout_s} s")
        time.sleep(0.05)


def kill_processes(*procs: subprocess.Popen | None, sockets: tuple[str, ...] = ()) -> None:
    """Kill each still-running process group (SIGKILL) and reap it; remove socket files."""
    for proc in procs:
        if proc is None or proc.poll() is not None:
            continue
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    for name in sockets:
        try:
            socket_path(name).unlink()
        except FileNotFoundError:
            pass


def read_properties(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Columns of an i-PI properties file by name, and the unit of each column."""
    from ipi.scripting import read_output

    values, info = read_output(str(path))
    return {k: np.atleast_1d(v) for k, v in values.items()}, {k: u for k, (u, _) in info.items()}


def read_frames(path: str | Path) -> list:
    """Frames of an i-PI ``format="ase"`` trajectory (ase.Atoms; quantity in .arrays)."""
    import ase.io

    return ase.io.read(str(path), index=":", format="extxyz")


def frame_array(atoms, quantity: str) -> np.ndarray:
    """(N,3) array i-PI stored under ``quantity`` ('positions' or 'forces'), atomic units."""
    if quantity == "positions":
        return atoms.positions.copy()
    if quantity in atoms.arrays:
        return np.asarray(atoms.arrays[quantity]).copy()
    return np.asarray(atoms.calc.results[quantity]).copy()
