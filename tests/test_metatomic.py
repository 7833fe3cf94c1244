"""metatomic models in and out, cross-checked against i-PI's own ``metatomic`` PES.

The shipped water-m.pt is exported by the test (float64) and served twice: by i-PI 3.3.1's
``ipi.pes.metatomic`` (in-process and as ``<ffdirect><pes>metatomic</pes>``) and by our
evaluator / ``ipi-nc driver`` / ``ipi-nc run`` (over unix sockets and in-process), with
their defaults. Its direct head has a net force (tens of meV/A to a few tenths of eV/A
per structure, checked below): both sides subtract the per-structure mean of the direct
forces by default, and a run with ``--no-remove-net-force`` departs from i-PI's at once.
Tolerances from the issues: forces 1e-6 eV/A, energies 1e-8 eV/atom, virial 1e-6 eV,
trajectory positions 1e-6 A (100 steps).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ipi.utils.units import unit_to_internal, unit_to_user

from ipi_ncforces.models import SHIPPED_MODELS_DIR
from ipi_ncforces.inputs import WATER64_XYZ, make
from ipi_ncforces.ipi_driver import launch
from ipi_ncforces.ipi_driver.setup import build_evaluator
from ipi_ncforces.models.base import Batch
from ipi_ncforces.models.loader import load_backend
from ipi_ncforces.models.metatomic_export import export_model
from ipi_ncforces.models.structure_io import write_ipi_xyz
from ipi_ncforces.models.water_box import lattice_water_box

SHIPPED = SHIPPED_MODELS_DIR
FORCE_TOL_EV_ANG = 1e-6
ENERGY_TOL_EV_PER_ATOM = 1e-8
VIRIAL_TOL_EV = 1e-6
POSITION_TOL_ANG = 1e-6


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """water-m.pt, water-nc.pt and water-c.pt exported as float64 metatomic files."""
    folder = tmp_path_factory.mktemp("mta")
    return {name: export_model(SHIPPED / f"water-{name}.pt", folder / f"water-{name}-mta.pt") for name in ("m", "nc", "c")}


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """i-PI xyz of 8 waters (24 atoms) in a periodic box, and the ase.Atoms."""
    atoms = lattice_water_box(8, seed=3)
    return write_ipi_xyz(atoms, tmp_path_factory.mktemp("box") / "w8.xyz"), atoms


def _perturbed(atoms, seed: int, scale_ang: float = 0.05):
    out = atoms.copy()
    out.positions += scale_ang * np.random.default_rng(seed).standard_normal(out.positions.shape)
    return out


def _ipi_request(atoms) -> tuple[np.ndarray, np.ndarray]:
    """(cell h with lattice vectors as columns, positions (N,3)), both in Bohr, as i-PI sends them."""
    cell = unit_to_internal("length", "angstrom", atoms.cell.array.T.copy())
    positions = unit_to_internal("length", "angstrom", atoms.positions.copy())
    return cell, positions


def _in_ev(energy_ha, forces_ha_bohr, virial_ha):
    return (
        unit_to_user("energy", "electronvolt", np.asarray(energy_ha)),
        unit_to_user("force", "ev/ang", np.asarray(forces_ha_bohr)),
        unit_to_user("energy", "electronvolt", np.asarray(virial_ha)),
    )


# ----------------------------------------------------------------------------- in-process


def test_exported_model_matches_native_model(exported, box):
    """Our exported file, served by the metatomic backend, gives our native model's numbers."""
    _, atoms = box
    batch = Batch.from_ase([atoms, _perturbed(atoms, 1)])
    native = load_backend(SHIPPED / "water-m.pt", dtype=torch.float64).evaluate(batch, conservative=True, direct=True)
    metatomic = load_backend(exported["m"], check_consistency=True).evaluate(batch, conservative=True, direct=True)
    for field in ("energy", "forces", "virial", "direct_forces", "direct_virial"):
        torch.testing.assert_close(getattr(metatomic, field), getattr(native, field), rtol=0, atol=1e-10, msg=field)
    assert float(native.forces.abs().max()) > 0.1 and float(native.direct_virial.abs().max()) > 0.01  # not trivial


def test_exported_metadata_and_outputs(exported):
    backend = load_backend(exported["m"])
    metadata = backend.metadata()
    assert "arXiv:2412.11569" in str(metadata) and metadata.name
    caps = backend.capabilities
    assert caps.dtype == "float64" and caps.length_unit == "angstrom" and list(caps.atomic_types) == [1, 8]
    assert {"energy", "non_conservative_force", "non_conservative_stress"} <= set(caps.outputs)
    assert load_backend(exported["nc"]).heads == ("direct",) and load_backend(exported["c"]).heads == ("energy",)


@pytest.mark.parametrize("mode", ["conservative", "direct"])
def test_ipi_metatomic_pes_and_our_evaluator_agree(exported, box, mode):
    """i-PI's MetatomicDriver and our ForceEvaluator on the same exported file and batch."""
    from ipi.pes.metatomic import MetatomicDriver

    path, atoms = box
    frames = [_perturbed(atoms, seed) for seed in (5, 6)]
    requests = [_ipi_request(a) for a in frames]
    cells, positions = [r[0] for r in requests], [r[1] for r in requests]
    theirs = MetatomicDriver(str(path), str(exported["m"]), non_conservative=(mode == "direct")).compute(cells, positions)
    evaluator = build_evaluator(model_path=exported["m"], structure_path=path, mode=mode)  # defaults, as a user gets
    ours = evaluator(cells, [p.reshape(-1) for p in positions])
    n_atoms = len(atoms)
    for (e1, f1, v1, _), (e2, f2, v2, _) in zip(theirs, ours):
        e1, f1, v1 = _in_ev(e1, f1, v1)
        e2, f2, v2 = _in_ev(e2, f2, v2)
        assert abs(e1 - e2) / n_atoms < ENERGY_TOL_EV_PER_ATOM
        assert np.abs(f1 - f2).max() < FORCE_TOL_EV_ANG
        assert np.abs(v1 - v2).max() < VIRIAL_TOL_EV
        assert np.isfinite(v1).all() and np.abs(v1).max() > 1e-3  # a real virial on both sides


def test_variant_selects_outputs(tmp_path, exported):
    """--variant picks energy/V etc.; a variant the model lacks is a one-line error naming it."""
    from ipi_ncforces.models.io import ModelFileError

    with pytest.raises(ModelFileError) as info:
        load_backend(exported["m"], variant="pet-mad")
    assert "\n" not in str(info.value) and "pet-mad" in str(info.value) and str(exported["m"]) in str(info.value)


# ----------------------------------------------------------------------------- i-PI runs


def _variant(tmp_path: Path, structure: Path, model: Path, *, forces: str, sockets: str, steps: int, **kw) -> make.Variant:
    return make.Variant(
        name="sim",
        forces=forces,
        sockets=sockets,
        pes="metatomic" if sockets == "ffdirect" else "custom",
        socket_address=launch.unique_address("mta"),
        structure=str(structure),
        model=str(model),
        steps=steps,
        dt_fs=0.5,
        mts_m=4,
        seed=2024,
        safe_stride=100000,
        fixcom=False,
        outputs=(
            make.Output("properties", "out", "[ step, potential{electronvolt}, virial_md ]"),
            make.Output("trajectory", "pos", "positions", format="ase"),
            make.Output("trajectory", "for", "forces", format="ase"),
        ),
        **kw,
    )


def _run_ipi(v: make.Variant, workdir: Path, driver_args: list[str] | None) -> None:
    """Run i-PI on ``v`` in ``workdir``; with ``driver_args``, one ``ipi-nc driver`` serves
    the socket(s) (the first forcefield's unix address is appended)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ipi = launch.start_ipi(make.write(v, workdir / "input.xml"), workdir)
    procs = [ipi]
    try:
        if driver_args is not None:
            first = make.forcefield_names(v)[0]
            launch.wait_for_sockets(ipi, [("unix", make.unix_address(v, ff), 0) for ff in make.forcefield_names(v)])
            args = driver_args + ["--unix", "--address", make.unix_address(v, first), "--connect-timeout", "60"]
            if v.forces == "mts":
                args += ["--mts-direct-address", make.unix_address(v, "direct")]
            procs.append(launch.start_driver(args, workdir, "driver.log"))
        assert ipi.wait(600) == 0, (workdir / "ipi.log").read_text()[-2000:]
        for proc in procs[1:]:
            assert proc.wait(60) == 0, (workdir / "driver.log").read_text()[-2000:]
    finally:
        launch.kill_processes(procs)


def _recorded(workdir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """potential (eV), virial (eV, 6 components), positions (A), forces (eV/A) per frame."""
    from ipi.scripting import read_output

    values, _ = read_output(str(workdir / "sim.out"))
    frames = ase.io.read(str(workdir / "sim.pos_0.extxyz"), index=":", format="extxyz")
    forces = ase.io.read(str(workdir / "sim.for_0.extxyz"), index=":", format="extxyz")
    volume_bohr3 = unit_to_internal("length", "angstrom", 1.0) ** 3 * np.array([a.get_volume() for a in frames])
    virial = unit_to_user("energy", "electronvolt", np.atleast_2d(values["virial_md"]) * volume_bohr3[:, None])
    positions = np.stack([a.positions for a in frames])
    force_values = np.stack([f.get_forces() for f in forces])  # eV/A (i-PI's extxyz "forces" column)
    return np.atleast_1d(values["potential"]), virial, positions, force_values


@pytest.mark.parametrize("mode", ["conservative", "direct"])
def test_socket_driver_matches_ipi_ffdirect_metatomic(tmp_path, exported, box, mode):
    """Three NVE steps served by i-PI's <ffdirect><pes>metatomic</pes> and by 'ipi-nc driver'
    over a unix socket: same potential, virial and forces at every step."""
    structure, atoms = box
    forces = "conservative" if mode == "conservative" else "direct"
    reference = _variant(tmp_path, structure, exported["m"], forces=forces, sockets="ffdirect", steps=3)
    _run_ipi(reference, tmp_path / "ipi-pes", None)
    ours = _variant(tmp_path, structure, exported["m"], forces=forces, sockets="unix", steps=3)
    _run_ipi(ours, tmp_path / "ours", ["--model", str(exported["m"]), "--structure", str(structure), "--mode", mode])
    e1, v1, x1, f1 = _recorded(tmp_path / "ipi-pes")
    e2, v2, x2, f2 = _recorded(tmp_path / "ours")
    assert len(e1) == len(e2) >= 3 and f1.shape == f2.shape
    assert np.abs(e1 - e2).max() / len(atoms) < ENERGY_TOL_EV_PER_ATOM
    assert np.abs(v1 - v2).max() < VIRIAL_TOL_EV
    assert np.abs(f1 - f2).max() < FORCE_TOL_EV_ANG
    assert np.abs(x1 - x2).max() < POSITION_TOL_ANG
    assert np.abs(f1).max() > 0.1 and np.abs(v1).max() > 1e-3


def _run_cli(args: list[str], workdir: Path) -> None:
    """``ipi-nc run ...`` in ``workdir`` (threads: one per process, as the runner sets)."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "ipi_ncforces.cli", "run", *args, "--workdir", str(workdir), "--quiet"],
                          cwd=workdir, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_direct_head_of_the_test_model_has_a_net_force(exported):
    """The premise of the trajectory tests below: the raw direct head of the exported model
    does not sum to zero on the start frame (so a server that keeps it moves the centre of
    mass), while its conservative forces do."""
    atoms = ase.io.read(str(WATER64_XYZ))
    p = load_backend(exported["m"]).evaluate(Batch.from_ase([atoms]), conservative=True, direct=True)
    assert float(p.direct_forces[0].sum(dim=0).norm()) > 0.05  # eV/A per structure
    assert float(p.forces[0].sum(dim=0).norm()) < 1e-10


@pytest.fixture(scope="module")
def ipi_pes_runs(tmp_path_factory, exported):
    """The references: i-PI's own PES on <ffdirect> (the direct one ``non_conservative: True``,
    which subtracts the mean direct force) for 100 steps of NVE-MTS (M=4) and of direct NVE,
    on the shipped equilibrated liquid (192 atoms; a hot, strained start such as a lattice box
    amplifies the last-bit differences of summation order by ~1e8 in 200 fs)."""
    folder = tmp_path_factory.mktemp("ipi-pes")
    runs = {}
    for forces in ("mts", "direct"):
        v = _variant(folder, WATER64_XYZ, exported["m"], forces=forces, sockets="ffdirect", steps=100)
        _run_ipi(v, folder / forces, None)
        runs[forces] = _recorded(folder / forces)
    return runs


def _assert_same_trajectory(reference, ours) -> None:
    e1, _, x1, f1 = reference
    e2, _, x2, f2 = ours
    assert x1.shape == x2.shape and len(x1) == 101
    assert np.abs(x1[-1] - x1[0]).max() > 0.1  # the atoms did move
    assert np.abs(x1 - x2).max() < POSITION_TOL_ANG
    assert np.abs(f1 - f2).max() < FORCE_TOL_EV_ANG and np.abs(e1 - e2).max() / x1.shape[1] < ENERGY_TOL_EV_PER_ATOM


@pytest.mark.parametrize("transport", ["in-process", "sockets"])
def test_ipi_nc_run_mts_matches_ipi_metatomic_pes(tmp_path, exported, ipi_pes_runs, transport):
    """100 outer steps of NVE-MTS (M=4): ``ipi-nc run --model`` with its defaults (in-process:
    our PES, one shared pass for both levels; sockets: one ``ipi-nc driver`` serving both
    sockets) gives i-PI's own metatomic trajectory to 1e-6 A."""
    v = _variant(tmp_path, WATER64_XYZ, exported["m"], forces="mts", sockets="unix", steps=100)
    xml = make.write(v, tmp_path / "input.xml")
    _run_cli([str(xml), "--model", str(exported["m"]), "--transport", transport], tmp_path / "ours")
    _assert_same_trajectory(ipi_pes_runs["mts"], _recorded(tmp_path / "ours"))
    logs = "".join(p.read_text() for p in (tmp_path / "ours").glob("*.log"))
    assert "served from the shared pass" in logs


def test_raw_net_force_departs_from_ipi_metatomic_pes(tmp_path, exported, ipi_pes_runs):
    """The opt-out really serves the raw head: with ``--no-remove-net-force`` the same MTS run
    leaves i-PI's trajectory, centre of mass included."""
    v = _variant(tmp_path, WATER64_XYZ, exported["m"], forces="mts", sockets="unix", steps=100)
    xml = make.write(v, tmp_path / "input.xml")
    _run_cli([str(xml), "--model", str(exported["m"]), "--no-remove-net-force"], tmp_path / "raw")
    _, _, x1, _ = ipi_pes_runs["mts"]
    _, _, x2, _ = _recorded(tmp_path / "raw")
    assert np.abs(x1 - x2).max() > 100 * POSITION_TOL_ANG
    masses = ase.io.read(str(WATER64_XYZ)).get_masses()[None, :, None]
    com_ang = [(x * masses).sum(axis=1) / masses.sum() for x in (x1, x2)]  # (frames, 3)
    # with the net force removed the centre of mass moves at its start velocity; the raw head's
    # net force kicks it within each outer step (the outer correction takes the kick back)
    assert np.linalg.norm(com_ang[1] - com_ang[0], axis=1).max() > 10 * POSITION_TOL_ANG


def test_ipi_nc_driver_direct_nve_matches_ipi_metatomic_pes(tmp_path, exported, ipi_pes_runs):
    """100 steps of direct-force NVE: ``ipi-nc driver --mode direct`` over a unix socket with its
    defaults gives i-PI's own metatomic (non_conservative) trajectory to 1e-6 A."""
    ours = _variant(tmp_path, WATER64_XYZ, exported["m"], forces="direct", sockets="unix", steps=100)
    _run_ipi(ours, tmp_path / "ours", ["--model", str(exported["m"]), "--structure", str(WATER64_XYZ), "--mode", "direct"])
    _assert_same_trajectory(ipi_pes_runs["direct"], _recorded(tmp_path / "ours"))


def test_jacobian_of_exported_model_matches_native(exported, box):
    """``analyze jacobian`` on a metatomic file: dF/dr through metatomic's neighbour-list
    autograd (second derivatives for the conservative head) equals our native model's."""
    from ipi_ncforces.models.jacobian import asymmetry_lambda, force_jacobian

    _, atoms = box
    batch = Batch.from_ase([atoms])
    native = load_backend(SHIPPED / "water-m.pt", dtype=torch.float64).model
    metatomic = load_backend(exported["m"], neighbor_skin_ang=0.0)
    for head in ("conservative", "direct"):
        j_native, j_metatomic = force_jacobian(native, batch, head), force_jacobian(metatomic, batch, head)
        torch.testing.assert_close(j_metatomic, j_native, rtol=0, atol=1e-9)
    assert asymmetry_lambda(j_metatomic) > 1e-3  # the direct head is not conservative


def test_metatomic_ase_runs_the_exported_model(exported, box):
    """metatomic-ase's calculator on the exported file: per-atom energies sum to the total
    (the ``selected``/per-atom path of the wrapper), conservative forces equal ours, direct
    forces equal ours after mean removal (the calculator removes it too)."""
    from metatomic_ase import MetatomicCalculator

    _, atoms = box
    atoms = _perturbed(atoms, 9)
    native = load_backend(SHIPPED / "water-m.pt", dtype=torch.float64).evaluate(
        Batch.from_ase([atoms]), conservative=True, direct=True
    )
    atoms.calc = MetatomicCalculator(str(exported["m"]), check_consistency=True)
    assert abs(atoms.get_potential_energies().sum() - atoms.get_potential_energy()) < 1e-10
    assert abs(atoms.get_potential_energy() - float(native.energy[0])) < 1e-10
    np.testing.assert_allclose(atoms.get_forces(), native.forces[0].numpy(), rtol=0, atol=1e-10)
    atoms.calc = MetatomicCalculator(str(exported["m"]), non_conservative=True)
    direct = native.direct_forces[0].numpy()
    np.testing.assert_allclose(atoms.get_forces(), direct - direct.mean(axis=0), rtol=0, atol=1e-10)
