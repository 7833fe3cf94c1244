"""Shipped i-PI inputs: valid for i-PI's own parser, identical to what `inputs make` writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from ipi_ncforces.inputs import cli, make
from ipi_ncforces.inputs.validate import InputValidationError, validate_file, validate_string

SHIPPED = sorted(make.shipped_variants())
INPUTS_DIR = Path(make.__file__).resolve().parent


@pytest.mark.parametrize("rel", SHIPPED)
def test_shipped_input_is_valid_for_ipi(rel):
    validate_file(INPUTS_DIR / rel)


def test_inputs_make_regenerates_shipped_files_identically(tmp_path):
    # the shipped files are generated: any hand edit or code change without regeneration fails here
    for path in make.write_shipped(tmp_path):
        rel = path.relative_to(tmp_path)
        assert path.read_text() == (INPUTS_DIR / rel).read_text(), f"{rel} drifted: run 'ipi-nc inputs make --shipped'"
    shipped_on_disk = {str(p.relative_to(INPUTS_DIR)) for p in INPUTS_DIR.glob("*/*.xml")}
    assert shipped_on_disk == set(SHIPPED)


def test_mts_input_follows_the_paper_scheme():
    root = etree.parse(str(INPUTS_DIR / "nve/nve-mts.xml")).getroot()
    weights = {f.get("forcefield"): f.findtext("mts_weights").strip() for f in root.iter("force")}
    assert weights == {"cons": "[1, 0]", "direct": "[-1, 1]"}
    assert root.findtext(".//nmts").strip() == "[1, 8]"
    ts = root.find(".//timestep")
    assert (ts.get("units"), float(ts.text)) == ("femtosecond", 4.0)  # M * 0.5 fs


def test_every_geop_optimizer_is_shipped_with_explicit_tolerances():
    for mode in make.GEOP_MODES:
        for forces in ("cons", "direct"):
            root = etree.parse(str(INPUTS_DIR / f"geop/{mode}-{forces}.xml")).getroot()
            tol = root.find(".//optimizer/tolerances")
            assert {el.tag for el in tol} == {"energy", "force", "position"}


def test_invalid_option_is_a_one_line_error(tmp_path, capsys):
    text = (INPUTS_DIR / "nvt/svr-tau10-direct.xml").read_text().replace('mode="svr"', 'mode="bogus"')
    bad = tmp_path / "bad.xml"
    bad.write_text(text)
    assert cli.main(["validate", "--no-structure-check", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.xml" in err and "bogus" in err
    with pytest.raises(InputValidationError, match="nmts"):
        mts = (INPUTS_DIR / "nvt/svr-tau10-mts.xml").read_text()
        validate_string(mts.replace("[1, 8]", "[1, 4, 2]"))


def test_make_rejects_impossible_combination_in_one_line(tmp_path, capsys):
    assert cli.main(["make", "--out", str(tmp_path / "x.xml"), "--ensemble", "nve", "--thermostat", "svr"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "thermostat" in err


def test_make_writes_a_parameterised_variant(tmp_path):
    out = tmp_path / "v.xml"
    args = ["make", "--out", str(out), "--from-shipped", "nvt/svr-tau10-mts.xml", "--mts-m", "4", "--dt-fs", "0.25",
            "--seed", "7", "--sockets", "inet", "--port", "40000", "--structure", "s.xyz"]
    assert cli.main(args) == 0
    root = etree.parse(str(out)).getroot()
    assert root.findtext(".//nmts").strip() == "[1, 4]"
    assert float(root.findtext(".//timestep")) == pytest.approx(1.0)  # 4 x 0.25 fs
    assert [p.text.strip() for p in root.iter("port")] == ["40000", "40001"]
    assert root.findtext("prng/seed").strip() == "7"


def test_input_with_a_comment_is_written_and_validated(tmp_path):
    v = make.with_changes(make.shipped_variants()["nve/nve-direct.xml"], comment="replica 3 of 8")
    text = make.write(v, tmp_path / "c.xml").read_text()
    assert "<!-- replica 3 of 8 -->" in text and "<ffsocket" in text
