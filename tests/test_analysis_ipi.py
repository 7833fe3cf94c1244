"""The readers on REAL i-PI outputs: a short PIMD run (2 beads, 8 waters, toy model through
<ffdirect>) with properties and position/velocity trajectories, analysed by the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ipi_ncforces.analysis.cli import main as analyze_main
from ipi_ncforces.analysis.readers import AnalysisWarning, find_run, read_properties
from ipi_ncforces.analysis.temperatures import temperatures_of
from ipi_ncforces.inputs import make
from ipi_ncforces.ipi_driver import launch
from ipi_ncforces.ipi_driver.runner import PES_PATH

PROPERTIES = (
    "[ step, time{femtosecond}, conserved, potential{electronvolt}, temperature{kelvin}, "
    "temperature(H){kelvin}, temperature(O){kelvin}, temperature(nm=1){kelvin} ]"
)


@pytest.fixture(scope="module")
def ipi_run(tmp_path_factory, box_file, toy_model_file) -> Path:
    run = tmp_path_factory.mktemp("ipi_run")
    v = make.Variant(
        name="simulation", ensemble="nvt", thermostat="pile_l", tau_fs=50, pile_lambda=1.0, beads=2, steps=30,
        seed=7, structure=str(box_file), sockets="ffdirect", pes_path=str(PES_PATH), model=str(toy_model_file),
        forces="direct", batch_size=1,
        outputs=(
            make.Output("properties", "out", PROPERTIES),
            make.Output("trajectory", "pos", "positions{angstrom}"),
            make.Output("trajectory", "vel", "velocities"),
        ),
    )
    ipi = launch.start_ipi(make.write(v, run / "input.xml"), run)
    assert ipi.wait(120) == 0, ipi.log_text()[-2000:]
    return run


def test_real_ipi_properties_and_units(ipi_run):
    run = find_run(ipi_run)
    assert run.properties.name == "simulation.out"
    assert [p.name for p in run.trajectories["velocities"]] == ["simulation.vel_0.xyz", "simulation.vel_1.xyz"]
    with pytest.warns(AnalysisWarning, match="'conserved' has no unit.*atomic units"):
        props = read_properties(run.properties)
    # time{femtosecond} read as ps: 0.5 fs steps
    np.testing.assert_allclose(np.diff(props["time"]), 0.5e-3, rtol=1e-6)
    raw = np.loadtxt(run.properties)
    np.testing.assert_allclose(props["conserved"], raw[:, 2] * 27.211386, rtol=1e-6)  # Hartree -> eV


def test_real_ipi_velocity_temperatures_match_ipi(ipi_run):
    """Normal-mode 1 temperature from the bead velocity files equals i-PI's temperature(nm=1)
    frame by frame (no centre-of-mass correction applies to non-centroid modes); tolerance 1e-3
    relative covers ASE vs i-PI atomic masses (1e-4) and the 6 digits of the xyz files."""
    run = find_run(ipi_run)
    from_props = temperatures_of(run, source="properties")["series"]
    from_vel = temperatures_of(run, source="velocities")["series"]
    np.testing.assert_allclose(from_vel["T_nm1"], from_props["T_nm1"], rtol=1e-3)


def test_real_ipi_cli_reports(ipi_run, tmp_path, capsys):
    out = tmp_path / "report"
    for what in ("drift", "temperatures", "rdf", "compare"):
        assert analyze_main([what, str(ipi_run), "--out", str(out)]) == 0, what
        assert (out / f"{what}.json").is_file() and (out / f"{what}.md").is_file()
    printed = capsys.readouterr()
    assert "drift (meV/atom/ps)" in printed.out and "<T_H> (K)" in printed.out
    assert "atomic units" in printed.err  # the unit-less 'conserved' column is announced
    data = json.loads((out / "temperatures.json").read_text())
    assert data["runs"][0]["temperatures"]["T_H"]["source"] == "properties"
    assert any(p.suffix == ".png" for p in out.iterdir())
