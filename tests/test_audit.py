"""`ipi-nc audit --quick`: every stage runs (real i-PI runs, 16 waters, shipped water-m),
the report holds the physics it should, and a rerun keeps what is finished."""

from __future__ import annotations

import json

import pytest

from ipi_ncforces.benchmarks.audit import main
from ipi_ncforces.models import SHIPPED_MODELS_DIR


@pytest.fixture(scope="module")
def quick_audit(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    assert main([str(SHIPPED_MODELS_DIR / "water-m.pt"), "--quick", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_quick_audit_report_holds_every_stage(quick_audit):
    report = json.loads((quick_audit / "audit.json").read_text())
    results = report["results"]
    assert set(results) == {"netforce", "jacobian", "cost", "nve", "nvt", "geop"}
    # the raw direct head has a net force; the MD runs serve it removed (the default)
    assert results["netforce"]["net_force_max_ev_ang"] >= results["netforce"]["net_force_mean_ev_ang"] > 1e-3
    assert results["netforce"]["removed_in_md"] is True and report["meta"]["remove_net_force"] is True
    # conservative forces have a symmetric Jacobian and do no work around a loop; direct ones do not
    assert results["jacobian"]["conservative"]["lambda"] < 1e-10
    assert results["jacobian"]["direct"]["lambda"] > 1e-3
    assert abs(results["jacobian"]["direct"]["work_mev"]["stretch_loop"]) > 1.0
    assert results["cost"]["F"] > 1.0  # autograd costs more than the direct head
    nve = results["nve"]["runs"]
    assert set(nve) == {"nve-cons", "nve-direct", "nve-mts2", "nve-mts4"}
    direct, cons = nve["nve-direct"], nve["nve-cons"]
    assert abs(direct["drift_mev_atom_ps"]) > 5 * direct["drift_err_mev_atom_ps"]  # direct forces heat the box
    assert abs(direct["drift_mev_atom_ps"]) > 20 * (abs(cons["drift_mev_atom_ps"]) + cons["drift_err_mev_atom_ps"])
    assert results["nve"]["largest_flat_m"] in (2, 4)
    temps = results["nvt"]["temperatures"]
    assert len(temps) == 7 and all({"T", "T_H", "T_O"} <= set(t) for t in temps.values())
    assert all(t[k]["err_k"] > 0 for t in temps.values() for k in ("T", "T_H", "T_O"))
    assert {c["optimizer"] for c in results["geop"]["gas"]} == {"LBFGS", "FIRE"}
    assert report["recommendation"].startswith("MTS M=")
    md = (quick_audit / "audit.md").read_text()
    for title in ("Net force of the direct head", "Jacobian asymmetry", "Cost of conservation", "NVE", "NVT temperatures", "Geometry optimisation"):
        assert f"## {title}" in md
    assert "paper PET" in md and "+0.3 / -4.4 / +9.9" in md  # the paper's SVR NC row beside ours
    html = (quick_audit / "audit.html").read_text()
    assert html.count("data:image/png;base64,") >= 2


@pytest.mark.slow
def test_rerun_keeps_finished_stages(quick_audit, capsys):
    before = (quick_audit / "stages" / "nve.json").read_text()
    assert main([str(SHIPPED_MODELS_DIR / "water-m.pt"), "--quick", "--out", str(quick_audit)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done earlier, kept") == 6 and "[audit " not in printed.replace("[audit] ", "")
    assert (quick_audit / "stages" / "nve.json").read_text() == before


def test_netforce_stage_and_a_rerun_with_the_other_net_force_setting(tmp_path, capsys):
    """The netforce stage gives the raw head's net force on every frame (independently summed
    here); the same --out with --no-remove-net-force is refused (its MD runs would mix physics),
    as is an audit folder from before the default (no key: raw direct forces)."""
    import numpy as np
    import torch

    from ipi_ncforces.inputs import WATER16_XYZ
    from ipi_ncforces.models.base import Batch, evaluate
    from ipi_ncforces.models.io import load_model
    from ipi_ncforces.models.structure_io import read_structure

    model = SHIPPED_MODELS_DIR / "water-m.pt"
    assert main([str(model), "--quick", "--stages", "netforce", "--out", str(tmp_path)]) == 0
    stage = json.loads((tmp_path / "stages" / "netforce.json").read_text())
    frames = read_structure(WATER16_XYZ, index=":")
    raw = evaluate(load_model(model, dtype=torch.float64), Batch.from_ase(frames), conservative=False, direct=True)
    norms = raw.direct_forces.sum(dim=1).norm(dim=1).numpy()
    assert stage["frames"] == len(frames) and abs(stage["net_force_mean_ev_ang"] - float(np.mean(norms))) < 1e-9
    capsys.readouterr()
    assert main([str(model), "--quick", "--stages", "netforce", "--no-remove-net-force", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "the direct net force removed" in err and "--no-remove-net-force" in err
    settings = tmp_path / "audit-settings.json"
    old = json.loads(settings.read_text())
    del old["remove_net_force"]
    settings.write_text(json.dumps(old))
    assert main([str(model), "--quick", "--stages", "netforce", "--out", str(tmp_path)]) == 2
    assert "raw direct net force (not removed)" in capsys.readouterr().err


def test_direct_only_model_is_refused_with_one_line(tmp_path, capsys):
    assert main([str(SHIPPED_MODELS_DIR / "water-nc.pt"), "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "water-nc.pt" in err[0] and "energy head" in err[0]
    assert main([str(tmp_path / "none.pt"), "--quick", "--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_reference_gets_a_baseline_audit_of_conservative_runs_only(tmp_path):
    """`ipi-nc audit qtip4pf --quick`: the exactly conservative reference runs the conservative
    cases only (no cost stage, no direct/MTS runs) and shows no artifact: lambda ~ 0, no drift."""
    assert main(["qtip4pf", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "audit.json").read_text())
    results = report["results"]
    assert set(results) == {"jacobian", "nve", "nvt", "geop"}
    assert set(results["jacobian"]) == {"conservative"} and results["jacobian"]["conservative"]["lambda"] < 1e-10
    assert set(results["nve"]["runs"]) == {"nve-cons"}
    assert abs(results["nve"]["runs"]["nve-cons"]["drift_mev_atom_ps"]) < 1.0
    assert set(results["nvt"]["temperatures"]) == {"svr10-cons", "lang100-cons"} and results["nvt"]["differences"] == {}
    assert results["geop"]["lengths"] == {"geop_starts": 2, "geop_max_steps": 60}  # the stage's cache key
    assert {c["forces"] for s in ("gas", "liquid") for c in results["geop"][s]} == {"conservative"}
    assert "baseline audit" in report["recommendation"]
    assert "within 2 sigma of equipartition" in report["recommendation"]  # the verdict of the conservative cases
    assert "conservative: |Δ| < 2σ" in (tmp_path / "audit.md").read_text()
    assert "Cost of conservation" not in (tmp_path / "audit.md").read_text()


@pytest.mark.slow
def test_nvt_replicas_give_sigma_from_their_spread(tmp_path):
    """--replicas 2: each NVT case runs twice (two seeds); the sigma is the replica one. A
    two-frame structure file starts replica k of every case from frame k; runner logs are kept.
    --cases: only the SVR conservative and direct cases run."""
    from ipi_ncforces.inputs import WATER16_XYZ
    from ipi_ncforces.models.structure_io import read_structure, write_ipi_xyz_frames

    frames = [read_structure(WATER16_XYZ), read_structure(WATER16_XYZ)]
    frames[1].positions += 0.01 * (1 + frames[1].numbers[:, None] % 3)  # O and H moved apart a little: another start
    starts = write_ipi_xyz_frames(frames, tmp_path / "starts.xyz")
    assert main([str(SHIPPED_MODELS_DIR / "water-m.pt"), "--quick", "--stages", "nvt", "--replicas", "2",
                 "--cases", "svr10-direct", "svr10-cons", "--structure", str(starts), "--temperature", "290",
                 "--out", str(tmp_path / "out")]) == 0
    tmp_path = tmp_path / "out"
    for k in (0, 1):
        for case in ("svr10-cons", "svr10-direct"):
            xml = (tmp_path / "inputs" / f"{case}-r{k}.xml").read_text()
            assert f"start-{k:02d}.xyz" in xml
            assert '<temperature units="kelvin"> 290.0 </temperature>' in xml  # --temperature reaches i-PI
            assert (tmp_path / "runs" / f"{case}-r{k}" / "audit-run.log").is_file()
        first = read_structure(tmp_path / "inputs" / "starts" / f"start-{k:02d}.xyz")
        assert abs(first.positions - frames[k].positions).max() < 1e-6
    nvt = json.loads((tmp_path / "stages" / "nvt.json").read_text())
    assert nvt["replicas"] == 2 and set(nvt["temperatures"]) == {"svr10-cons", "svr10-direct"}
    assert nvt["resolved_sigma_k"] == 1.5
    assert nvt["lengths"]["cases"] == ["svr10-cons", "svr10-direct"]  # NVT_CASES order, whatever the command's
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "svr10-cons-r0", "svr10-cons-r1", "svr10-direct-r0", "svr10-direct-r1"]
    for case in nvt["temperatures"].values():
        assert all(case[k]["err_k"] > 0 and case[k]["spread_over_block"] > 0 for k in ("T", "T_H", "T_O"))
    assert "svr10-direct - svr10-cons" in nvt["differences"]
    assert "spread of 2 replicas" in (tmp_path / "audit.md").read_text()
    for case in nvt["temperatures"].values():  # the effective sample count and the sampling a user must budget
        assert all(case[k]["n_eff_per_run"] > 0 and case[k]["ps_total_needed"] > 0 for k in ("T_H", "T_O"))
    assert "## Sampling (from the replica spread)" in (tmp_path / "audit.md").read_text()
    assert ", 290 K, seed" in (tmp_path / "audit.md").read_text()


@pytest.mark.slow
def test_more_cases_and_longer_runs_keep_what_is_finished(tmp_path, capsys):
    """--cases lang100-cons, then all cases: the Langevin run is kept (not rerun), the SVR one
    added; then a larger --nvt-ps: the SVR run continues from its checkpoint (no step twice,
    none missing), the Langevin run with an unchanged --langevin-ps is kept, the stage is
    redone with the new lengths; asking for shorter runs is refused."""
    from ipi_ncforces.analysis.readers import find_run, read_properties

    base = ["qtip4pf", "--quick", "--stages", "nvt", "--langevin-ps", "0.04", "--out", str(tmp_path)]
    assert main(base + ["--nvt-ps", "0.06", "--cases", "lang100-cons"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["lang100-cons-r0"]
    lang_log = tmp_path / "runs" / "lang100-cons-r0" / "audit-run.log"
    lang_before = lang_log.stat().st_mtime_ns
    capsys.readouterr()
    assert main(base + ["--nvt-ps", "0.06"]) == 0  # all the reference's cases: svr10-cons added
    assert "other lengths, redone" in capsys.readouterr().out
    assert lang_log.stat().st_mtime_ns == lang_before
    nvt = json.loads((tmp_path / "stages" / "nvt.json").read_text())
    assert set(nvt["temperatures"]) == {"svr10-cons", "lang100-cons"} and "cases" not in nvt["lengths"]
    assert main(base + ["--nvt-ps", "0.1"]) == 0
    assert "other lengths, redone" in capsys.readouterr().out
    steps = read_properties(find_run(tmp_path / "runs" / "svr10-cons-r0").properties)["step"]
    assert list(steps) == list(range(0, 201, 4))  # properties every 2 fs = 4 steps, to 0.1 ps
    assert lang_log.stat().st_mtime_ns == lang_before
    steps = read_properties(find_run(tmp_path / "runs" / "lang100-cons-r0").properties)["step"]
    assert steps.max() == 80
    nvt = json.loads((tmp_path / "stages" / "nvt.json").read_text())
    assert nvt["lengths"]["nvt_ps"] == 0.1 and nvt["lengths"]["langevin_ps"] == 0.04
    assert main(base + ["--nvt-ps", "0.06"]) == 1
    assert "more than the 120 asked for" in capsys.readouterr().err
    assert main(base + ["--nvt-ps", "0.01"]) == 2  # not longer than the 0.02 ps skipped
    capsys.readouterr()
    # another temperature, seed or model would extend these runs with other physics: refused, nothing touched
    for change, named in ((["--temperature", "310"], "temperature 300 K (this run: 310)"),
                          (["--seed", "7"], "seed 31415 (this run: 7)")):
        assert main(base + ["--nvt-ps", "0.1"] + change) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and named in err[0] and "another --out" in err[0]
    other = [str(SHIPPED_MODELS_DIR / "water-c.pt")] + base[1:] + ["--nvt-ps", "0.1"]
    assert main(other) == 2 and "another model (" in capsys.readouterr().err
    assert lang_log.stat().st_mtime_ns == lang_before


def test_direct_cases_for_an_energy_only_model_are_refused(tmp_path, capsys):
    assert main(["qtip4pf", "--quick", "--cases", "svr10-direct", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cases" in err[0] and "svr10-cons" in err[0]
    assert not (tmp_path / "runs").exists()


def test_equipartition_check_needs_both_consistency_and_resolution():
    from ipi_ncforces.benchmarks.audit import equipartition_check, recommendation

    temps = {"T": {"delta_k": 9.0, "err_k": 1.0}, "T_H": {"delta_k": 1.9, "err_k": 1.0}, "T_O": {"delta_k": -2.1, "err_k": 1.0}}
    assert equipartition_check(temps) == {"T_H": {"within_2_sigma": True, "resolved": True},
                                          "T_O": {"within_2_sigma": False, "resolved": True}}
    wide = {"T_H": {"delta_k": 0.1, "err_k": 1.6}}
    assert equipartition_check(wide) == {"T_H": {"within_2_sigma": True, "resolved": False}}
    baseline = {"nve": {"runs": {"nve-cons": {}}}, "nvt": {"temperatures": {"svr10-cons": temps}}}
    assert "equipartition: NO, sigma <= 1.5 K: yes" in recommendation(baseline)
    baseline["nvt"]["temperatures"] = {"svr10-cons": wide}
    assert "equipartition: yes, sigma <= 1.5 K: no" in recommendation(baseline)
