"""``ipi-nc driver`` refuses bad input with one line and a non-zero exit (no i-PI needed)."""

from __future__ import annotations

import time

import pytest

from ipi_ncforces.ipi_driver.cli import main
from ipi_ncforces.models.pair_toy import PairToyModel
from ipi_ncforces.models.io import save_model
from ipi_ncforces.ipi_driver.launch import unique_address
from ipi_ncforces.models.structure_io import write_ipi_xyz
from ipi_ncforces.models.water_box import lattice_water_box


@pytest.fixture
def files(tmp_path):
    return {
        "model": save_model(PairToyModel(), tmp_path / "toy.pt"),
        "structure": write_ipi_xyz(lattice_water_box(8), tmp_path / "init.xyz"),
        "tmp": tmp_path,
    }


def _run(capsys, model, structure, mode="direct", extra=()):
    argv = ["--model", str(model), "--structure", str(structure), "--mode", mode]
    argv += ["--unix", "--address", unique_address("cli"), "--connect-timeout", "0.3", *extra]
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("ipi-nc driver: error:")]
    return code, errors


def test_missing_model_file(files, capsys):
    code, errors = _run(capsys, files["tmp"] / "nope.pt", files["structure"])
    assert code == 2 and len(errors) == 1 and "nope.pt' does not exist" in errors[0]


def test_file_that_is_not_a_model(files, capsys):
    junk = files["tmp"] / "junk.pt"
    junk.write_bytes(b"this is not a torch file")
    code, errors = _run(capsys, junk, files["structure"])
    assert code == 2 and len(errors) == 1 and "junk.pt' is not an ipi-ncforces model file" in errors[0]


def test_model_lacking_the_head_for_the_mode(files, capsys):
    energy_only = save_model(PairToyModel(heads=("energy",)), files["tmp"] / "energy_only.pt")
    code, errors = _run(capsys, energy_only, files["structure"], mode="direct")
    assert code == 2 and len(errors) == 1 and "no 'direct' head" in errors[0]
    code, errors = _run(capsys, energy_only, files["structure"], mode="correction")
    assert code == 2 and "no 'direct' head" in errors[0]


def test_unknown_species_in_the_structure(files, capsys):
    atoms = lattice_water_box(8)
    atoms.numbers[0] = 11  # a sodium the toy model (H, O) has never seen
    salty = write_ipi_xyz(atoms, files["tmp"] / "salty.xyz")
    code, errors = _run(capsys, files["model"], salty)
    assert code == 2 and len(errors) == 1 and "[11]" in errors[0] and "salty.xyz" in errors[0]


def test_missing_structure_file(files, capsys):
    code, errors = _run(capsys, files["model"], files["tmp"] / "nope.xyz")
    assert code == 2 and len(errors) == 1 and "nope.xyz" in errors[0] and "--structure" in errors[0]


def test_no_server_gives_up_after_connect_timeout(files, capsys):
    start = time.monotonic()
    code, errors = _run(capsys, files["model"], files["structure"])
    waited_s = time.monotonic() - start
    assert code == 1 and len(errors) == 1  # not bad input: the run could not start
    assert "no i-PI server at unix socket /tmp/ipi_ncf-cli-" in errors[0] and "--connect-timeout" in errors[0]
    assert waited_s >= 0.3  # it did retry for the whole --connect-timeout


def test_usage_errors_exit_2(files):
    """argparse's usage errors exit 2, as every bad input does (see the tests above)."""
    base = ["--model", str(files["model"]), "--structure", str(files["structure"]), "--mode", "direct"]
    with pytest.raises(SystemExit) as exc:
        main(base + ["--address", "localhost"])  # inet without --port
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(base[:-1] + ["sideways", "--unix", "--address", "x"])
    assert exc.value.code == 2
