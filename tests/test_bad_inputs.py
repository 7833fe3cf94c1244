"""The bad-input matrix of `ipi-nc run` (our model format; the metatomic cases live in
test_metatomic_bad_input.py, the driver-level ones in test_driver_cli.py / test_driver_ipi.py).

Every case runs `ipi-nc run` on a workdir that holds an earlier, finished run (outputs and
RESTART) and checks: one stderr line naming the file or option and what to do, a non-zero
exit (2: bad input found before anything starts; 1: a failure during the run), and that
no earlier output or RESTART file was changed (contents and mtimes)."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ipi_ncforces.inputs import make
from ipi_ncforces.models.io import save_model
from ipi_ncforces.models.pair_toy import PairToyModel
from ipi_ncforces.models.structure_io import write_ipi_xyz
from ipi_ncforces.models.water_box import lattice_water_box

SHIPPED = make.shipped_variants()


def _variant(structure: Path, tag: str, **changes) -> make.Variant:
    name = f"b{os.getpid()}-{tag}"
    v = SHIPPED["nve/nve-direct.xml"]
    common = dict(steps=4, properties_fs=0.5, positions_fs=0.5, checkpoint_fs=1.0)
    return make.with_changes(v, name=name, structure=str(structure), **{**common, **changes})


def _cmd(xml: Path, model: Path, workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ipi_ncforces.cli", "run", str(xml), "--model", str(model), "--workdir", str(workdir), "--quiet", *extra]


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, toy_model_file):
    """A finished 4-step run (toy model, 8 waters): its input, structure and workdir."""
    base = tmp_path_factory.mktemp("earlier")
    structure = write_ipi_xyz(lattice_water_box(8), base / "w8.xyz")
    xml = make.write(_variant(structure, "e"), base / "in.xml")
    subprocess.run(_cmd(xml, toy_model_file, base / "run"), check=True, capture_output=True)
    assert (base / "run" / "RESTART").is_file()
    return {"xml": xml, "structure": structure, "run": base / "run"}


@pytest.fixture
def case(earlier, tmp_path):
    """A copy of the earlier run (input, structure, workdir) to break in one way."""
    for key in ("xml", "structure"):
        shutil.copy(earlier[key], tmp_path / earlier[key].name)
    shutil.copytree(earlier["run"], tmp_path / "run", copy_function=shutil.copy2)
    xml = tmp_path / "in.xml"
    xml.write_text(xml.read_text().replace(str(earlier["structure"]), str(tmp_path / "w8.xyz")))
    return {"xml": xml, "structure": tmp_path / "w8.xyz", "run": tmp_path / "run", "dir": tmp_path}


def _refused(cmd: list[str], workdir: Path, code: int = 2, **kw) -> str:
    """Run ``cmd``; assert exit ``code``, a single 'ipi-nc run:' stderr line, the workdir
    unchanged; return the line."""
    before = _snapshot(workdir)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == code and len(lines) == 1 and lines[0].startswith("ipi-nc run: "), proc.stderr
    after = _snapshot(workdir)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing earlier changed
    print(f"\n{lines[0]}")
    return lines[0]


# ----------------------------------------------------------------------------- structures


def test_template_species_order_differs_from_the_checkpoint(case, toy_model_file):
    # i-PI sends positions only: a structure file regenerated in another order between a run
    # and its --resume would hand every force to the wrong atom
    atoms = lattice_water_box(8)
    order = np.r_[1, 0, np.arange(2, len(atoms))]  # H, O, H, ...: same atoms, other order
    write_ipi_xyz(atoms[order], case["structure"])
    line = _refused(_cmd(case["xml"], toy_model_file, case["run"], "--resume"), case["run"])
    assert "w8.xyz' orders the elements differently from checkpoint" in line and "atom 0: H vs O" in line
    assert "restore the structure file" in line


def test_template_atom_count_differs_from_the_checkpoint(case, toy_model_file):
    write_ipi_xyz(lattice_water_box(8)[:-3], case["structure"])
    line = _refused(_cmd(case["xml"], toy_model_file, case["run"], "--resume"), case["run"])
    assert "w8.xyz' has 21 atoms but checkpoint" in line and "has 24" in line


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_truncated_or_corrupt_model_file(case, toy_model_file, damage):
    bad = case["dir"] / "bad.pt"
    data = Path(toy_model_file).read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00not a model" * 100)
    line = _refused(_cmd(case["xml"], bad, case["run"]), case["run"])
    assert "bad.pt" in line


def test_model_trained_on_h_and_o_given_carbon(case, toy_model_file):
    atoms = lattice_water_box(8)
    atoms.numbers[0] = 6
    carbon = write_ipi_xyz(atoms, case["dir"] / "carbon.xyz")
    xml = case["xml"]
    xml.write_text(xml.read_text().replace(str(case["structure"]), str(carbon)))
    line = _refused(_cmd(xml, toy_model_file, case["run"]), case["run"])
    assert "atomic numbers [6] unknown to model" in line and "toy.pt" in line and "in.xml" in line


def test_direct_mode_on_a_model_without_a_direct_head(case):
    energy_only = save_model(PairToyModel(heads=("energy",)), case["dir"] / "energy-only.pt")
    line = _refused(_cmd(case["xml"], energy_only, case["run"]), case["run"])
    assert "energy-only.pt" in line and "direct" in line


@pytest.mark.parametrize("transport", ["sockets", "in-process"])
def test_nan_forces_are_never_sent_to_ipi(case, tmp_path, transport):
    # found during the run (exit 1): the driver (or the in-process PES) refuses at request 1, the
    # runner stops i-PI; i-PI recorded no step (it never got forces), so nothing non-finite
    # reached an output
    nan_model = PairToyModel()
    nan_model.species_sign.fill_(float("nan"))
    nan_path = save_model(nan_model, tmp_path / "nan.pt")
    fresh = tmp_path / "fresh"
    cmd = _cmd(case["xml"], nan_path, fresh, "--max-restarts", "3", "--transport", transport)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    print(f"\n{lines[0]}")
    who = "driver 'direct-0' exited with code 1" if transport == "sockets" else "i-PI exited with code 1: ForceError: "
    assert who in lines[0] and "NaN/inf forces" in lines[0] and "not sent to i-PI" in lines[0]
    for out in fresh.glob(f"{case['xml'].stem}*.out"):
        assert "nan" not in out.read_text().lower()
    for traj in fresh.glob("*.xyz"):
        assert "nan" not in traj.read_text().lower()


# ----------------------------------------------------------------------------- input XML and folders


def test_unknown_xml_element(case, toy_model_file):
    xml = case["xml"]
    xml.write_text(xml.read_text().replace("<total_steps>", "<thermostatt/><total_steps>", 1))
    line = _refused(_cmd(xml, toy_model_file, case["run"]), case["run"])
    assert "in.xml" in line and "thermostatt" in line


def test_workdir_under_a_file_is_refused(case, toy_model_file):
    blocker = case["dir"] / "a-file"
    blocker.write_text("not a folder")
    line = _refused(_cmd(case["xml"], toy_model_file, blocker / "run"), case["run"])
    assert "--workdir" in line and "a-file/run" in line and "not a writable folder" in line


def test_read_only_workdir_is_refused(case, toy_model_file):
    os.chmod(case["run"], 0o555)
    try:
        if os.access(case["run"], os.W_OK):
            pytest.skip("running as root: permissions do not stop writes (the under-a-file case covers this)")
        line = _refused(_cmd(case["xml"], toy_model_file, case["run"]), case["run"])
        assert "--workdir" in line and "not a writable folder" in line
    finally:
        os.chmod(case["run"], 0o755)


def test_write_error_partway_through_the_run(case, toy_model_file, tmp_path):
    # disk full / quota, made testable with a file-size limit (RLIMIT_FSIZE, as `ulimit -f`):
    # i-PI's writes fail with EFBIG once a file passes 20 kB, after a few steps (the position
    # trajectory grows ~2 kB per step). The run stops with one line naming the folder, the
    # records written stay whole, and --resume (with room again) completes the run.
    xml = case["xml"]
    xml.write_text(xml.read_text().replace("<total_steps> 4 </total_steps>", "<total_steps> 40 </total_steps>"))
    limit = 20_000

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    fresh = tmp_path / "fresh"
    proc = subprocess.run(_cmd(xml, toy_model_file, fresh, "--max-restarts", "3"), capture_output=True, text=True,
                          timeout=120, preexec_fn=small_files)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    print(f"\n{lines[0]}")
    assert "could not write its outputs in" in lines[0] and "File too large" in lines[0] and "--resume" in lines[0]
    resumed = subprocess.run(_cmd(xml, toy_model_file, fresh, "--resume"), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    props = np.loadtxt(next(fresh.glob("*.out")), ndmin=2)
    np.testing.assert_array_equal(props[:, 0], np.arange(41))
