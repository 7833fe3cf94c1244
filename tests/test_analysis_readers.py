"""Readers of i-PI outputs: synthetic files in i-PI's exact formats, units from headers,
and clear errors or warnings for damaged files (writers of synthetic i-PI files: the
``write_properties`` / ``write_trajectory`` fixtures of conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ipi.utils.units import unit_to_internal, unit_to_user

from ipi_ncforces.analysis.cli import main as analyze_main
from ipi_ncforces.analysis.readers import (AnalysisInputError, AnalysisWarning, find_run, read_properties, read_traj,
                              timestep_ps)

AU_VELOCITY_PER_A_PS = float(unit_to_internal("length", "angstrom", 1.0) / unit_to_internal("time", "picosecond", 1.0))


def water_symbols(n_mol: int) -> list[str]:
    return ["O", "H", "H"] * n_mol


def test_properties_units_come_from_header(tmp_path, write_properties):
    """time{femtosecond} -> ps and conserved{atomic_unit} (Hartree) -> eV, with ipi.utils.units."""
    path = write_properties(tmp_path / "sim.out", {
        "step": np.arange(5), "time{femtosecond}": np.arange(5) * 0.5,
        "conserved{atomic_unit}": np.full(5, 1.0), "temperature{kelvin}": np.full(5, 300.0)})
    props = read_properties(path)
    np.testing.assert_allclose(props["time"], np.arange(5) * 0.5e-3)
    np.testing.assert_allclose(props["conserved"], 27.211386, rtol=1e-6)  # 1 Ha in eV
    assert props.units["conserved"] == "electronvolt"
    bad = write_properties(tmp_path / "bad.out", {"step": np.arange(3), "conserved{hartree}": np.ones(3)})
    with pytest.raises(AnalysisInputError, match="unit 'hartree', which i-PI does not know"):
        read_properties(bad)


def test_missing_unit_is_atomic_units_with_warning(tmp_path, write_properties):
    path = write_properties(tmp_path / "sim.out", {"step": np.arange(4), "conserved": np.full(4, 2.0)})
    with pytest.warns(AnalysisWarning, match="no unit.*atomic units"):
        props = read_properties(path)
    np.testing.assert_allclose(props["conserved"], 2.0 * 27.211386, rtol=1e-6)
    assert any("atomic units" in w for w in props.warnings)


def test_truncated_last_line_is_dropped_with_warning(tmp_path, write_properties):
    path = write_properties(tmp_path / "sim.out", {"step": np.arange(6), "time{picosecond}": np.arange(6.0)})
    text = path.read_text()
    path.write_text(text[: text.rstrip().rfind(" ") - 3])  # cut inside the last line
    with pytest.warns(AnalysisWarning, match="truncated; dropped it and used the 5 complete lines"):
        props = read_properties(path)
    assert len(props["step"]) == 5


def test_damaged_middle_line_is_an_error(tmp_path, write_properties):
    path = write_properties(tmp_path / "sim.out", {"step": np.arange(6), "time{picosecond}": np.arange(6.0)})
    lines = path.read_text().splitlines(keepends=True)
    lines[4] = "  3.0  garbage\n"
    path.write_text("".join(lines))
    with pytest.raises(AnalysisInputError, match=r"sim.out: line 5 does not have 2 numeric columns"):
        read_properties(path)


def test_trajectory_units_and_truncated_frame(tmp_path, write_trajectory):
    """positions{angstrom} stay A; velocities{atomic_unit} become A/ps; a cut last frame is dropped."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 5, (4, 3, 3))
    v_a_ps = rng.normal(0, 10, (4, 3, 3))
    write_trajectory(tmp_path / "sim.pos_0.xyz", water_symbols(1), x, 5.0)
    write_trajectory(tmp_path / "sim.vel_0.xyz", water_symbols(1), v_a_ps * AU_VELOCITY_PER_A_PS, 5.0,
                     what="velocities", unit="atomic_unit", steps=np.arange(4) * 10)
    pos = read_traj(tmp_path / "sim.pos_0.xyz")
    np.testing.assert_allclose(pos.data, x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pos.cells[0], np.diag([5.0] * 3), atol=1e-5)
    vel = read_traj(tmp_path / "sim.vel_0.xyz")
    assert vel.kind == "velocities"
    np.testing.assert_allclose(vel.data, v_a_ps, rtol=1e-6)
    np.testing.assert_array_equal(vel.steps, [0, 10, 20, 30])  # i-PI's own parser keeps one digit
    path = tmp_path / "sim.pos_0.xyz"
    path.write_text(path.read_text()[:-40])
    with pytest.warns(AnalysisWarning, match="last frame.*truncated.*3 complete frames"):
        assert len(read_traj(path).data) == 3


def test_trajectory_without_units_warns(tmp_path):
    path = tmp_path / "old.pos_0.xyz"
    path.write_text("1\n# CELL(abcABC): 10 10 10 90 90 90 Step: 0 Bead: 0\nO 1.0 0.0 0.0\n")
    with pytest.warns(AnalysisWarning, match="no units in the comment line"):
        traj = read_traj(path)
    np.testing.assert_allclose(traj.data[0, 0, 0], unit_to_user("length", "angstrom", 1.0), rtol=1e-6)


def test_find_run_from_directory_and_prefix(tmp_path, write_properties, write_trajectory):
    write_properties(tmp_path / "simulation.out", {"step": np.arange(3), "time{picosecond}": np.arange(3) * 1e-3})
    x = np.zeros((3, 3, 3))
    for b in range(2):
        write_trajectory(tmp_path / f"simulation.pos_{b}.xyz", water_symbols(1), x, 5.0, bead=b)
    by_dir, by_prefix = find_run(tmp_path), find_run(tmp_path / "simulation")
    assert by_dir.properties == by_prefix.properties == tmp_path / "simulation.out"
    assert [p.name for p in by_dir.trajectories["positions"]] == ["simulation.pos_0.xyz", "simulation.pos_1.xyz"]
    assert timestep_ps(by_dir) == pytest.approx(1e-3)
    (tmp_path / "other.out").write_text((tmp_path / "simulation.out").read_text())
    with pytest.raises(AnalysisInputError, match="several runs"):
        find_run(tmp_path)


def test_cli_bad_input_is_one_line_and_nonzero(tmp_path, capsys, write_properties):
    assert analyze_main(["drift", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither a directory of i-PI outputs nor an output prefix" in err[0]
    write_properties(tmp_path / "sim.out", {"step": np.arange(6), "time{picosecond}": np.arange(6.0)})
    assert analyze_main(["drift", str(tmp_path), "--natoms", "3", "--out", str(tmp_path)]) == 2
    assert "no 'conserved' column" in capsys.readouterr().err


def test_cli_help_lists_analyses():
    out = subprocess.run([sys.executable, "-c", "import ipi_ncforces.cli as c; c.main(['analyze', '--help'])"],
                         capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 0 and "temperatures" in out.stdout and "geop-study" in out.stdout
