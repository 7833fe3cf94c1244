"""read_structure: the one structure reader, checked on trajectories i-PI itself wrote.

i-PI's xyz carries the cell only as ``CELL(abcABC)`` in the comment line (no extxyz
``Lattice=``), and its positions in the units named there (atomic units by default):
plain ``ase.io.read`` takes such a frame for a cluster in Angstrom.
"""

from __future__ import annotations

import json
import subprocess
import sys

import ase.io
import numpy as np
import pytest
import torch

from ipi_ncforces.analysis.jacobian import jacobian_of
from ipi_ncforces.inputs import make
from ipi_ncforces.models.io import load_model
from ipi_ncforces.models.structure_io import read_structure

N_STEPS = 4


def test_frames_ipi_wrote_keep_cell_units_and_steps_and_jacobian_sees_the_box(session, tmp_path):
    ipi = session.ipi(
        steps=N_STEPS,
        outputs=(
            make.Output("properties", "out", "[ step, potential ]"),
            make.Output("trajectory", "au", "positions"),  # i-PI xyz, atomic units
            make.Output("trajectory", "ang", "positions{angstrom}"),  # i-PI xyz, Angstrom
            make.Output("trajectory", "ref", "positions", format="ase"),  # extxyz with Lattice: the reference
            make.Output("trajectory", "frc", "forces"),
        ),
    )
    session.wait_for_socket(ipi)
    session.driver("direct")
    assert ipi.wait(120) == 0
    box = read_structure(session.box)  # the start structure i-PI was given
    reference = ase.io.read(str(session.dir / "sim.ref_0.extxyz"), index=":", format="extxyz")
    assert len(reference) == N_STEPS + 1
    for name in ("sim.au_0.xyz", "sim.ang_0.xyz"):
        path = session.dir / name
        assert "Lattice=" not in path.read_text().splitlines()[1]  # really i-PI's own comment line
        frames = read_structure(path, ":")
        assert len(frames) == len(reference)
        for k, (frame, ref) in enumerate(zip(frames, reference)):
            assert frame.pbc.all() and frame.info["step"] == k
            # NVE: the cell i-PI was given; i-PI prints abcABC with 5 decimals
            np.testing.assert_allclose(frame.cell.array, box.cell.array, atol=1e-5)
            # i-PI's xyz prints 6 significant digits (< 1e-4 A here); a wrong unit would be off by 1.9x
            np.testing.assert_allclose(frame.positions, ref.positions, rtol=1e-5, atol=1e-5)
            assert frame.get_chemical_symbols() == ref.get_chemical_symbols()
        last = read_structure(path, -1)
        np.testing.assert_allclose(last.positions, frames[-1].positions)
        assert [f.info["step"] for f in read_structure(path, "1:3")] == [1, 2]
    with pytest.raises(ValueError, match="force"):
        read_structure(session.dir / "sim.frc_0.xyz")

    # ipi-nc analyze jacobian on the i-PI frame: the same result as on the periodic box,
    # not as on the same atoms taken for a cluster (the toy model's 4 A cutoff crosses the ~6.2 A box)
    frame_path = session.dir / "sim.au_0.xyz"
    out = subprocess.run(
        [sys.executable, "-m", "ipi_ncforces.cli", "analyze", "jacobian", "--model", str(session.model),
         "--structure", str(frame_path), "--max-frames", "1", "--out", str(tmp_path / "jac")],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    reported = json.loads((tmp_path / "jac" / "jacobian.json").read_text())["structures"]
    assert len(reported) == 1
    model = load_model(session.model, dtype=torch.float64)
    periodic = jacobian_of(model, reference[0])
    cluster = reference[0].copy()
    cluster.pbc = False
    cluster.cell = np.zeros((3, 3))
    as_cluster = jacobian_of(model, cluster)
    direct = reported[0]["heads"]["direct"]
    # interacting pairs: 210 across the periodic box, 151 in the cluster
    def n_pairs(head: dict) -> int:
        return int(np.sum(head["pair_counts"]))

    assert n_pairs(direct) == n_pairs(periodic["direct"]) > n_pairs(as_cluster["direct"])
    assert direct["lambda"] == pytest.approx(periodic["direct"]["lambda"], rel=1e-4)  # xyz rounding: ~4e-7


def test_other_files_go_to_ase_unchanged(tmp_path):
    """extxyz with Lattice (and index/slice strings) behave as ase.io.read."""
    atoms = ase.Atoms("OHH", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], cell=[5, 6, 7], pbc=True)
    frames = []
    for k in range(3):
        frame = atoms.copy()
        frame.positions += 0.1 * k
        frames.append(frame)
    path = tmp_path / "f.extxyz"
    ase.io.write(path, frames, format="extxyz")
    assert len(read_structure(path, ":")) == 3
    np.testing.assert_allclose(read_structure(path).positions, frames[0].positions)
    np.testing.assert_allclose(read_structure(path, -1).positions, frames[2].positions)
    np.testing.assert_allclose(read_structure(path).cell.array, atoms.cell.array)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_structure(tmp_path / "missing.xyz")
