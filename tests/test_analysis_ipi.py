"""The readers on REAL i-PI outputs: a short PIMD run (2 beads, 8 waters, toy model through
<ffdirect>) with properties and position/velocity trajectories, analysed by the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ipi_ncforces.analysis.cli import main as analyze_main
from ipi_ncforces.analysis.readers import AnalysisWarning, find_run, read_properties
from ipi_ncforces.analysis.temperatures import temperatures_of
from tests.ipi_helpers import IPI, write_toy_model, write_water_box

PES = Path(__file__).parents[1] / "ipi_driver" / "pes.py"

INPUT = """<simulation verbosity="low">
  <output prefix="simulation">
    <properties stride="1" filename="out">[step, time{femtosecond}, conserved, potential{electronvolt},
      temperature{kelvin}, temperature(H){kelvin}, temperature(O){kelvin}, temperature(nm=1){kelvin}]</properties>
    <trajectory filename="pos" stride="1" format="xyz" cell_units="angstrom">positions{angstrom}</trajectory>
    <trajectory filename="vel" stride="1" format="xyz">velocities</trajectory>
  </output>
  <total_steps>30</total_steps>
  <prng><seed>7</seed></prng>
  <ffdirect name="toy"><pes>custom</pes><pes_path>{pes}</pes_path>
    <parameters>{{model: toy.pt, template: box.xyz, mode: direct}}</parameters></ffdirect>
  <system>
    <initialize nbeads="2"><file mode="xyz">box.xyz</file><velocities mode="thermal" units="kelvin">300</velocities></initialize>
    <forces><force forcefield="toy"/></forces>
    <ensemble><temperature units="kelvin">300</temperature></ensemble>
    <motion mode="dynamics"><dynamics mode="nvt"><timestep units="femtosecond">0.5</timestep>
      <thermostat mode="pile_l"><tau units="femtosecond">50</tau></thermostat></dynamics></motion>
  </system>
</simulation>
"""


@pytest.fixture(scope="module")
def ipi_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ipi_run")
    write_water_box(run / "box.xyz")
    write_toy_model(run / "toy.pt")
    (run / "input.xml").write_text(INPUT.replace("{pes}", str(PES)).replace("{{", "{").replace("}}", "}"))
    proc = subprocess.run([IPI, "input.xml"], cwd=run, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
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
