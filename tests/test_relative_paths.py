"""Every command takes paths relative to the directory it is started from (issue 22).

The working directory is a scratch folder (the user's folder) holding the model, the
structure and the data under relative names; every ``ipi-nc`` command then runs in
process (``ipi_ncforces.cli.main``) with relative paths only, its subprocesses (i-PI,
drivers, metatrain, ``ipi-nc run``) inheriting that directory and changing to their own
workdirs. Each test checks the exit code and that the outputs land where the relative
paths say, relative to the user's folder. Cheapest real invocations: 16 waters, a few
steps, one epoch; ``demo`` alone does not run its three MD runs (see its test).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ase.io
import pytest

from ipi_ncforces.cli import main as ipi_nc
from ipi_ncforces.inputs import WATER16_XYZ
from ipi_ncforces.ipi_driver import launch
from ipi_ncforces.models import SHIPPED_MODELS_DIR


@pytest.fixture(scope="module", autouse=True)
def work(tmp_path_factory, toy_data):
    """The user's folder, the working directory of every test here: model.pt (the shipped
    water-m), w16.xyz (16 waters) and toy.extxyz (labelled frames), as symlinks."""
    work = tmp_path_factory.mktemp("user").resolve()
    (work / "model.pt").symlink_to(SHIPPED_MODELS_DIR / "water-m.pt")
    (work / "w16.xyz").symlink_to(WATER16_XYZ)
    (work / "toy.extxyz").symlink_to(toy_data)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        yield work


def _parameters(xml: Path) -> str:
    """The text of every <parameters> element of an i-PI input (ffdirect PES settings)."""
    return " ".join(line for line in xml.read_text().splitlines() if "<parameters>" in line)


@pytest.fixture(scope="module")
def exported(work):
    """``ipi-nc export model.pt exported/m-mta.pt``: a metatomic file, written under the cwd."""
    assert ipi_nc(["export", "model.pt", "exported/m-mta.pt"]) == 0
    return Path("exported/m-mta.pt")


@pytest.fixture(scope="module")
def md_run(work, exported):
    """``ipi-nc inputs make`` then ``ipi-nc run`` (i-PI in runs/nve, <ffdirect>) with the
    metatomic model and an --extensions folder, all relative."""
    assert ipi_nc(["inputs", "make", "--out", "xml/nve.xml", "--structure", "../w16.xyz", "--steps", "4",
                   "--sockets", "ffdirect", "--model", "model.pt", "--properties-fs", "0.5"]) == 0
    (work / "ext").mkdir()
    assert ipi_nc(["run", "xml/nve.xml", "--model", str(exported), "--extensions", "ext", "--workdir", "runs/nve",
                   "--steps", "4", "--quiet"]) == 0
    return work / "runs" / "nve"


@pytest.fixture(scope="module")
def reference_data(work):
    """``ipi-nc reference-data``: 4 q-TIP4P/F frames from two short i-PI runs in refwork/."""
    assert ipi_nc(["reference-data", "--frames", "4", "--nbeads", "1", "--hot-temperatures", "--stride-fs", "1",
                   "--dt-fs", "1", "--structure", "w16.xyz", "--out", "data/ref.extxyz", "--workdir", "refwork",
                   "--jobs", "2"]) == 0
    return Path("data/ref.extxyz")


def test_export(work, exported):
    from ipi_ncforces.models.loader import METATOMIC, model_format

    assert model_format(work / "exported" / "m-mta.pt") == METATOMIC


def test_train(work):
    assert ipi_nc(["train", "--data", "toy.extxyz", "--variant", "M", "--out", "trained/m.pt", "--epochs", "1",
                   "--width", "8", "--n-rbf", "6", "--cutoff", "3.5", "--batch-size", "2", "--threads", "1",
                   "--quiet"]) == 0
    assert (work / "trained" / "m.pt").is_file()


def test_inputs_make_and_validate(work, md_run):
    xml = work / "xml" / "nve.xml"
    assert xml.is_file()
    # --model is read by i-PI wherever it runs: absolute; --structure stays relative to the XML's folder
    assert f"model: {(work / 'model.pt').resolve()}," in _parameters(xml)
    assert "template: ../w16.xyz" in _parameters(xml)
    assert ipi_nc(["inputs", "validate", "xml/nve.xml"]) == 0


def test_run(work, md_run):
    assert (md_run / "ipi.log").is_file() and (md_run / "nve.out").is_file()
    parameters = _parameters(md_run / "input.xml")  # what i-PI, running in runs/nve, reads
    assert f"model: {work / 'exported' / 'm-mta.pt'}," in parameters
    assert f"template: {WATER16_XYZ}," in parameters
    assert f"extensions: {work / 'ext'}" in parameters


def test_analyze(work, md_run):
    assert ipi_nc(["analyze", "drift", "runs/nve", "--out", "analysis"]) == 0
    assert json.loads((work / "analysis" / "drift.json").read_text())["runs"]


def test_driver(work, new_session, tmp_path):
    """i-PI runs in its own folder; the driver, started from the user's folder, gets relative paths."""
    session = new_session(tmp_path)
    shutil.copy(session.box, work / "box8.xyz")
    shutil.copy(session.model, work / "toy8.pt")
    ipi = session.ipi(steps=3)
    session.wait_for_socket(ipi)
    args = ["--model", "toy8.pt", "--structure", "box8.xyz", "--mode", "direct", "--unix", "--address", session.name,
            "--connect-timeout", "60"]
    driver = launch.start_process(launch.driver_command(args), work, "driver.log", label="driver")
    session.procs.append(driver)
    assert ipi.wait(60) == 0, ipi.log_tail(5)
    assert driver.wait(60) == 0, driver.log_tail(5)
    assert len(session.properties()[0]["step"]) == 4


def test_reference_data(work, reference_data):
    assert len(ase.io.read(work / "data" / "ref.extxyz", ":")) == 4
    inputs = sorted((work / "refwork").glob("*/input.xml"))
    assert len(inputs) == 2 and all((xml.parent / "ipi.log").is_file() for xml in inputs)
    assert str(WATER16_XYZ) in inputs[0].read_text()  # i-PI runs in refwork/<segment>: absolute paths


def test_train_pet(work, reference_data):
    """One PET-NC epoch (d_pet 8, 2 training frames); metatrain runs in pets/pet-nc."""
    pytest.importorskip("metatrain")
    assert ipi_nc(["train-pet", "--out", "pets", "--data", str(reference_data), "--kinds", "NC", "--epochs", "1",
                   "--d-pet", "8", "--batch-size", "2", "--threads", "1", "--test-fraction", "0.25",
                   "--validation-fraction", "0.25"]) == 0
    assert (work / "pets" / "pet-nc.pt").is_file()
    assert "PET-NC" in json.loads((work / "pets" / "water-models.json").read_text())


def test_demo(work, monkeypatch):
    """The demo's three MD runs and its analysis are ``ipi-nc run`` / ``analyze`` subprocesses
    (about 30 s on 16 waters, see test_run and test_analyze for those commands): here they are
    recorded instead of run, and must name the model, the structure and the folders absolutely."""
    from ipi_ncforces.inputs import demo

    calls = []
    monkeypatch.setattr(demo.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert ipi_nc(["demo", "--out", "demo-out", "--model", "model.pt", "--structure", "w16.xyz",
                   "--time-ps", "0.004"]) == 0
    out = work / "demo-out"
    runs, analysis = calls[:3], calls[3]
    for cmd, name in zip(runs, ("nve-cons", "nve-direct", "nve-mts")):
        assert cmd[cmd.index("--model") + 1] == str((work / "model.pt").resolve())
        assert cmd[cmd.index("--workdir") + 1] == str(out / name)
        xml = Path(cmd[cmd.index("run") + 1])
        assert xml == out / "inputs" / f"{name}.xml" and str(WATER16_XYZ) in xml.read_text()
    assert analysis[-2:] == ["--out", str(out)] and str(out / "nve-cons") in analysis


def test_audit(work):
    assert ipi_nc(["audit", "model.pt", "--quick", "--stages", "nvt", "--cases", "svr10-cons", "--nvt-ps", "0.03",
                   "--skip-ps", "0.01", "--structure", "w16.xyz", "--out", "audit-out", "--jobs", "1"]) == 0
    assert (work / "audit-out" / "audit.json").is_file()
    assert (work / "audit-out" / "runs" / "svr10-cons-r0" / "audit-run.log").is_file()
    settings = json.loads((work / "audit-out" / "audit-settings.json").read_text())
    assert settings["structure"] == str(WATER16_XYZ)


def test_bench(work):
    """``--only overhead`` on --quick: two 8-step i-PI runs, one with an ``ipi-nc driver`` in
    bench-out/work/overhead/ (the relative --model once failed there)."""
    assert ipi_nc(["bench", "--quick", "--only", "overhead", "--model", "model.pt", "--out", "bench-out"]) == 0
    results = json.loads((work / "bench-out" / "results.json").read_text())
    assert results["model"]["path"] == str((work / "model.pt").resolve())
    assert results["overhead"]["ms"]["socket"] > 0
