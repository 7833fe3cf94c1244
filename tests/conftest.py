"""Shared fixtures: small water boxes, toy models, and a ``session`` that runs a real i-PI
with real ``ipi-nc driver`` processes (inputs from inputs.make, processes from
ipi_driver.launch).

Typical use::

    def test_something(session):
        ipi = session.ipi(steps=5)               # i-PI writes sim.out, sim.pos_0.extxyz, ... in session.dir
        launch.wait_for_sockets(ipi, [("unix", session.name, 0)])
        driver = session.driver("direct")
        assert ipi.wait(60) == 0
        session.check_recorded_against_model("direct")

Test modules never import each other: what they share lives here as fixtures.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ipi.utils.units import unit_to_internal, unit_to_user

from ipi_ncforces.inputs import make
from ipi_ncforces.ipi_driver import launch
from ipi_ncforces.ipi_driver.runner import PES_PATH
from ipi_ncforces.models.base import Batch, evaluate
from ipi_ncforces.models.dualhead import DualHeadPotential
from ipi_ncforces.models.io import load_model, save_model
from ipi_ncforces.models.pair_toy import PairToyModel
from ipi_ncforces.models.structure_io import write_ipi_xyz
from ipi_ncforces.models.water_box import lattice_water_box

HARTREE_PER_EV = unit_to_internal("energy", "electronvolt", 1.0)


# ----------------------------------------------------------------------------- files


@pytest.fixture(scope="session")
def box_file(tmp_path_factory):
    """i-PI xyz of 8 randomly oriented waters (24 atoms) in a periodic ~6.2 A box."""
    return write_ipi_xyz(lattice_water_box(8), tmp_path_factory.mktemp("box") / "w8.xyz")


@pytest.fixture(scope="session")
def toy_model_file(tmp_path_factory):
    """A saved PairToyModel (energy + non-conservative direct head, H and O, cutoff 3 A)."""
    return save_model(PairToyModel(species=(1, 8), cutoff=3.0), tmp_path_factory.mktemp("toy") / "toy.pt")


def _jittered_water_box(
    n_side: int = 2, spacing_ang: float = 3.1, seed: int = 0, jitter_ang: float = 0.1, periodic: bool = True
) -> Atoms:
    """n_side^3 randomly oriented water molecules (O, H, H) on a jittered cubic grid."""
    rng = np.random.default_rng(seed)
    half_angle = math.radians(104.5) / 2
    positions, numbers = [], []
    for corner in np.ndindex(n_side, n_side, n_side):
        oxygen = np.array(corner) * spacing_ang + rng.normal(0, jitter_ang, 3)
        rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        h1 = oxygen + 0.96 * rotation @ np.array([math.sin(half_angle), math.cos(half_angle), 0.0])
        h2 = oxygen + 0.96 * rotation @ np.array([-math.sin(half_angle), math.cos(half_angle), 0.0])
        positions += [oxygen, h1, h2]
        numbers += [8, 1, 1]
    length = n_side * spacing_ang
    return Atoms(numbers=numbers, positions=np.array(positions), cell=[length] * 3, pbc=periodic)


def _tiny_model(variant: str, seed: int = 0, **kwargs) -> DualHeadPotential:
    torch.manual_seed(seed)
    options = dict(width=8, vector_width=4, layers=2, n_rbf=6, cutoff=4.0, scale_ev=1.0, avg_neighbors=20.0)
    options.update(kwargs)
    return DualHeadPotential(variant=variant, **options).double()


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """10 jittered 8-water boxes labelled by the toy pair potential (energies eV, forces
    eV/A), as an extxyz file."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    reference = PairToyModel(cutoff=3.5, eps_ev=1.0, sigma_ang=0.5).double()
    frames = []
    for seed in range(10):
        atoms = _jittered_water_box(seed=seed, jitter_ang=0.15)
        prediction = evaluate(reference, Batch.from_ase([atoms]), virial=False)
        atoms.calc = SinglePointCalculator(atoms, energy=float(prediction.energy[0]), forces=prediction.forces[0].numpy())
        frames.append(atoms)
    path = tmp_path_factory.mktemp("data") / "toy.extxyz"
    ase.io.write(path, frames, format="extxyz")
    return path


@pytest.fixture(scope="session")
def jittered_water_box():
    """Builder ``(n_side=2, spacing_ang=3.1, seed=0, jitter_ang=0.1, periodic=True) -> ase.Atoms``:
    distorted geometries for model tests (not a liquid)."""
    return _jittered_water_box


@pytest.fixture(scope="session")
def tiny_model():
    """Builder ``(variant, seed=0, **options) -> DualHeadPotential`` (float64, a few hundred weights)."""
    return _tiny_model


# ----------------------------------------------------------------------------- synthetic i-PI outputs


def write_properties(path: Path, columns: dict[str, np.ndarray], descriptions: str = "synthetic") -> Path:
    """An i-PI properties file: header '# column N --> name{unit} : text', then %e columns."""
    lines = []
    for i, name in enumerate(columns, start=1):
        lines.append(f"# column {i:3d}     --> {name} : {descriptions}\n")
    data = np.column_stack(list(columns.values()))
    for row in data:
        lines.append("".join(f"{x:18.8e} " for x in row) + "\n")
    path.write_text("".join(lines))
    return path


def write_trajectory(path: Path, symbols: list[str], frames: np.ndarray, cell_a: np.ndarray | float,
                     what: str = "positions", unit: str = "angstrom", steps: np.ndarray | None = None,
                     bead: int = 0, cell_unit: str = "angstrom") -> Path:
    """An i-PI xyz trajectory (comment: CELL(abcABC), Step, Bead, what{unit}, cell{unit})."""
    import ase

    cell = np.diag([cell_a] * 3) if np.isscalar(cell_a) else np.asarray(cell_a)
    par = ase.Atoms(cell=cell, pbc=True).cell.cellpar()
    par[:3] = unit_to_user("length", cell_unit, unit_to_internal("length", "angstrom", par[:3]))
    steps = np.arange(len(frames)) if steps is None else steps
    out = []
    for step, x in zip(steps, frames):
        out.append(f"{len(symbols)}\n# CELL(abcABC): {'  '.join(f'{p:.5f}' for p in par)}  Step: {step:11d}  "
                   f"Bead: {bead:7d} {what}{{{unit}}}  cell{{{cell_unit}}}\n")
        for s, r in zip(symbols, x):
            out.append(f"{s:>8s} {r[0]:14.8e} {r[1]:14.8e} {r[2]:14.8e}\n")
    path.write_text("".join(out))
    return path


@pytest.fixture(name="write_properties")
def write_properties_fixture():
    """Writer of a synthetic i-PI properties file (see :func:`write_properties`)."""
    return write_properties


@pytest.fixture(name="write_trajectory")
def write_trajectory_fixture():
    """Writer of a synthetic i-PI xyz trajectory (see :func:`write_trajectory`)."""
    return write_trajectory


# ----------------------------------------------------------------------------- i-PI sessions


class Session:
    """Files and processes of one i-PI run in ``dir``; ``close`` kills what still runs.

    The input is an NVE (ring-polymer NVE with beads) :class:`make.Variant` with one
    forcefield "direct" on unix socket ``name``; outputs ``sim.out`` (step, time in fs,
    potential and conserved energy in Hartree) and per bead ``sim.pos_<b>.extxyz`` /
    ``sim.for_<b>.extxyz`` (positions in A, forces in eV/A: i-PI's extxyz writer only
    allows ASE units; 8 decimals)."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.box = write_ipi_xyz(lattice_water_box(8), tmp_path / "init.xyz")
        self.model = save_model(PairToyModel(), tmp_path / "toy.pt")
        self.base = launch.unique_address("t")
        self.name = f"{self.base}-direct"  # = make.unix_address of the variant below
        self.procs: list[launch.Process] = []

    def ipi(self, **changes) -> launch.Process:
        """Start i-PI on the session's input; ``changes`` are make.Variant fields (steps, beads,
        batch_size, dt_fs, fixcom, thermal_velocities, consolidate_messages, sockets="ffdirect", ...)."""
        v = make.Variant(
            name="sim", forces="direct", socket_address=self.base, structure=str(self.box), model=str(self.model),
            pes_path=str(PES_PATH), steps=5, seed=12345, safe_stride=100000, batch_size=1,
            outputs=(
                make.Output("properties", "out", "[ step, time{femtosecond}, potential, conserved ]"),
                make.Output("trajectory", "pos", "positions", format="ase"),
                make.Output("trajectory", "for", "forces", format="ase"),
            ),
        )
        v = make.with_changes(v, **changes)
        assert make.unix_address(v, "direct") == self.name
        proc = launch.start_ipi(make.write(v, self.dir / "input.xml"), self.dir)
        self.procs.append(proc)
        return proc

    def driver(self, mode, *extra, model=None, structure=None, log="driver.log") -> launch.Process:
        args = ["--model", model or self.model, "--structure", structure or self.box, "--mode", mode]
        args += ["--unix", "--address", self.name, "--connect-timeout", "60", *extra]
        proc = launch.start_driver(args, self.dir, log)
        self.procs.append(proc)
        return proc

    def wait_for_socket(self, ipi: launch.Process, timeout_s: float = 60.0) -> None:
        launch.wait_for_sockets(ipi, [("unix", self.name, 0)], timeout_s)

    def properties(self, prefix: str = "sim") -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Columns of the properties file by name, and the unit of each column."""
        from ipi.scripting import read_output

        values, info = read_output(str(self.dir / f"{prefix}.out"))
        return {k: np.atleast_1d(v) for k, v in values.items()}, {k: u for k, (u, _) in info.items()}

    def frames(self, name: str) -> list:
        """Frames of an i-PI ``format="ase"`` trajectory file in ``dir`` (ase.Atoms)."""
        import ase.io

        return ase.io.read(str(self.dir / name), index=":", format="extxyz")

    def model_prediction(self, frames, mode, model_path=None, remove_net_force=True):
        """(energies eV (B,), forces eV/A (B,N,3)) of the saved model in ``mode``, float64; direct
        and correction forces minus their per-structure mean unless ``remove_net_force`` is False
        (the driver's default and its --no-remove-net-force)."""
        model = load_model(model_path or self.model, dtype=torch.float64)
        batch = Batch.from_ase(frames)
        if mode == "direct":
            p = evaluate(model, batch, conservative=False, direct=True)
            energy, forces = p.energy.numpy(), p.direct_forces.numpy()
        else:
            p = evaluate(model, batch, conservative=True, direct=(mode == "correction"))
            if mode != "correction":
                return p.energy.numpy(), p.forces.numpy()
            energy, forces = np.zeros(len(frames)), (p.forces - p.direct_forces).numpy()
        return energy, forces - forces.mean(axis=1, keepdims=True) if remove_net_force else forces

    def check_recorded_against_model(self, mode, nbeads=1, prefix="sim") -> int:
        """Compare every recorded frame of every bead with the model; returns the number of frames."""
        props, units = self.properties(prefix)
        assert units["potential"] in (None, "atomic_unit")  # Hartree
        energies_ev = []
        n_frames = None
        for bead in range(nbeads):
            positions = self.frames(f"{prefix}.pos_{bead}.extxyz")  # A (ASE units)
            forces = self.frames(f"{prefix}.for_{bead}.extxyz")  # eV/A (ASE units)
            n_frames = len(positions)
            assert len(forces) == n_frames == len(props["step"])
            energy_ev, expected = self.model_prediction(positions, mode)
            recorded = np.stack([_forces_of(f) for f in forces])
            # extxyz keeps 8 decimals (5e-9 eV/A) of forces and positions (5e-9 A, times force
            # gradients < 1 eV/A^2 for the toy model): 1e-6 eV/A leaves a wide margin
            np.testing.assert_allclose(recorded, expected, rtol=0, atol=1e-6)
            energies_ev.append(energy_ev)
        # i-PI's potential is the bead average, printed with 9 significant digits
        expected_ha = np.mean(energies_ev, axis=0) * HARTREE_PER_EV
        np.testing.assert_allclose(props["potential"], expected_ha, rtol=1e-7, atol=1e-12)
        return n_frames

    def close(self) -> None:
        launch.kill_processes(self.procs, (self.name,))


def _forces_of(atoms) -> np.ndarray:
    """(N,3) forces i-PI stored in an extxyz frame (in .arrays or as calculator results)."""
    if "forces" in atoms.arrays:
        return np.asarray(atoms.arrays["forces"]).copy()
    return np.asarray(atoms.calc.results["forces"]).copy()


@pytest.fixture
def new_session():
    """Factory ``(folder) -> Session``; every session is closed after the test."""
    sessions: list[Session] = []

    def make_session(folder) -> Session:
        sessions.append(Session(folder))
        return sessions[-1]

    yield make_session
    for s in sessions:
        s.close()


@pytest.fixture
def session(new_session, tmp_path):
    return new_session(tmp_path)
