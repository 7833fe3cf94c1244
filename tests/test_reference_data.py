"""Reference data generator: i-PI really runs, and the labels are the reference potential's."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest

from ipi_ncforces.models.base import Batch, evaluate
from ipi_ncforces.models.qtip4pf import QTIP4PF
from ipi_ncforces.ipi_driver.reference_data import main, plan_segments
from ipi_ncforces.models.water_box import box_length_ang
from ipi_ncforces.models.structure_io import read_structure

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, n_molecules", [("water16.xyz", 16), ("water64.xyz", 64)])
def test_shipped_start_structures_read_by_ase_and_ipi(name, n_molecules):
    from ipi.utils.io import read_file
    from ipi.utils.units import unit_to_user

    path = ROOT / "inputs" / name
    atoms = ase.io.read(path)  # plain ASE (extxyz Lattice=) sees the same box as i-PI
    assert list(atoms.numbers) == [8, 1, 1] * n_molecules
    assert atoms.pbc.all()
    # cubic box at 0.997 g/cm^3
    assert np.allclose(atoms.cell.lengths(), box_length_ang(n_molecules), atol=1e-6)
    with open(path) as handle:
        ipi = read_file("xyz", handle)  # i-PI's <file mode="xyz"> reader, atomic units inside
    bohr_to_ang = unit_to_user("length", "angstrom", 1.0)
    assert np.allclose(ipi["atoms"].q.reshape(-1, 3) * bohr_to_ang, atoms.positions, atol=1e-6)
    assert np.allclose(np.asarray(ipi["cell"].h).T * bohr_to_ang, atoms.cell.array, atol=1e-6)
    # equilibrated liquid, not a lattice: intact molecules, no O-O contact below 2.3 A
    d = atoms.get_all_distances(mic=True)
    oxygens = np.arange(0, len(atoms), 3)
    oo = d[np.ix_(oxygens, oxygens)] + np.eye(n_molecules) * 99
    assert oo.min() > 2.3
    assert np.all(np.abs(d[oxygens, oxygens + 1] - 0.95) < 0.15)


def test_plan_splits_frames_between_classical_pimd_and_hot():
    segments = plan_segments(1000, stride_fs=10, dt_fs=0.5, seed=1, nbeads=8, hot_temperatures_k=[450, 600])
    assert sum(s.frames for s in segments) == 1000
    assert {s.kind for s in segments} == {"classical", "pimd", "hot"}
    assert all(s.stride_steps == 20 for s in segments)
    pimd = next(s for s in segments if s.kind == "pimd")
    assert pimd.samples * 8 >= pimd.frames


def test_tiny_run_writes_extxyz_labelled_with_the_reference(tmp_path):
    out = tmp_path / "tiny.extxyz"
    code = main(
        [
            "--structure", str(ROOT / "inputs" / "water16.xyz"), "--out", str(out), "--frames", "8",
            "--nbeads", "2", "--stride-fs", "2", "--hot-temperatures", "--seed", "7",
        ]
    )
    assert code == 0
    frames = ase.io.read(out, ":")
    assert len(frames) == 8
    assert sorted({a.info["kind"] for a in frames}) == ["classical", "pimd"]
    assert {a.info["bead"] for a in frames if a.info["kind"] == "pimd"} == {0, 1}
    batch = Batch.from_ase(frames)
    p = evaluate(QTIP4PF(), batch)
    energies = np.array([a.get_potential_energy() for a in frames])
    forces = np.stack([a.get_forces() for a in frames])
    # extxyz stores ~16 significant digits: agreement to round-off
    assert np.allclose(energies, p.energy.numpy(), atol=1e-8)
    assert np.allclose(forces, p.forces.numpy(), atol=1e-8)
    assert np.allclose(np.stack([a.info["virial"] for a in frames]), p.virial.numpy(), atol=1e-8)
    volume = frames[0].cell.volume
    assert np.allclose(frames[0].get_stress(voigt=False), -p.virial[0].numpy() / volume, atol=1e-10)
    # MD really moved the atoms: frames differ from the start structure and from each other
    start = read_structure(ROOT / "inputs" / "water16.xyz")
    assert np.abs(frames[0].positions - start.positions).max() > 0.05
    assert np.abs(frames[1].positions - frames[0].positions).max() > 1e-3


def test_bad_options_fail_with_one_line(tmp_path, capsys):
    assert main(["--structure", str(tmp_path / "missing.xyz"), "--out", str(tmp_path / "x.extxyz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--structure" in err
    assert main(["--frames", "0"]) == 2


def test_shipped_replica_starts_are_distinct_liquid_frames_of_the_water64_box():
    """inputs/water64-starts.xyz: 16 frames (ASE reads all, i-PI's reader the first), the box
    of water64.xyz, molecules intact, frames different; water64.xyz is its frame 0."""
    from ipi.utils.io import read_file

    from ipi_ncforces.inputs import WATER64_STARTS_XYZ, WATER64_XYZ

    frames = ase.io.read(WATER64_STARTS_XYZ, ":")
    assert len(frames) == 16 and len(read_structure(WATER64_STARTS_XYZ, ":")) == 16
    with open(WATER64_STARTS_XYZ) as handle:
        assert read_file("xyz", handle)["atoms"].natoms == 192
    box = read_structure(WATER64_XYZ)
    assert np.allclose(box.positions, frames[0].positions, atol=1e-6)
    for atoms in frames:
        assert list(atoms.numbers) == [8, 1, 1] * 64
        assert np.allclose(atoms.cell.array, box.cell.array, atol=1e-6)
        d = atoms.get_all_distances(mic=True)
        o = np.arange(0, 192, 3)
        assert max(atoms.get_distance(i, i + k, mic=True) for i in o for k in (1, 2)) < 1.3  # O-H (A)
        assert (d[np.ix_(o, o)] + np.eye(64) * 99).min() > 2.3
    rms = [np.sqrt(np.mean((a.positions - b.positions) ** 2)) for a, b in zip(frames[:-1], frames[1:])]
    assert min(rms) > 0.5  # Angstrom: a picosecond apart or from another chain
