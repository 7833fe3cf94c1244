"""``ipi-nc driver --mts-direct-address``: one process serves both sockets of an MTS run.

The law: a real i-PI MTS NVE run served by ONE driver (shared backbone pass) records the
same forces and energies, step by step, as the same run (same seed) served by two
separate drivers (``--mode conservative`` and ``--mode direct``).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ipi_ncforces.inputs import make
from ipi_ncforces.ipi_driver import launch
from ipi_ncforces.models.io import save_model
from ipi_ncforces.models.pair_toy import PairToyModel

OUTER_STEPS = 8


def write_mts_input(path: Path, init_file: Path, tag: str) -> tuple[Path, str, str]:
    """MTS NVE (nmts [1, 4], 1 fs outer step): ``cons`` socket at weights [1, 0], ``direct``
    at [-1, 1]; full-precision outputs (floatformat %.16e) of both components' raw forces
    (Ha/Bohr) and energies (Ha). Returns (xml, cons address, direct address)."""
    v = make.Variant(
        name="sim", forces="mts", mts_m=4, dt_fs=0.25, steps=OUTER_STEPS, seed=4242, structure=str(init_file),
        socket_address=launch.unique_address(tag), safe_stride=100000,
        outputs=(
            make.Output("properties", "out", "[ step, conserved, potential, pot_component_raw(0), pot_component_raw(1) ]"),
            make.Output("trajectory", "fcons", "forces_component_raw(0)"),
            make.Output("trajectory", "fdirect", "forces_component_raw(1)"),
        ),
    )
    return make.write(v, path), make.unix_address(v, "cons"), make.unix_address(v, "direct")


def read_xyz_arrays(path: Path) -> np.ndarray:
    """(frames, N, 3) numbers of an i-PI xyz trajectory."""
    lines = path.read_text().splitlines()
    frames, i = [], 0
    while i < len(lines):
        n = int(lines[i])
        frames.append([[float(x) for x in ln.split()[1:4]] for ln in lines[i + 2 : i + 2 + n]])
        i += n + 2
    return np.array(frames)


@pytest.fixture(scope="module")
def files(box_file, toy_model_file):
    return box_file, toy_model_file


def run_mts(workdir: Path, box: Path, model: Path, shared: bool) -> tuple[dict, np.ndarray, np.ndarray, list[str]]:
    """One MTS run; returns (properties, cons raw forces, direct raw forces, driver logs)."""
    workdir.mkdir()
    xml, cons, direct = write_mts_input(workdir / "input.xml", box, "mts")
    common = ["--model", model, "--structure", box, "--unix", "--connect-timeout", "60"]
    procs = []
    try:
        ipi = launch.start_ipi(xml, workdir)
        procs.append(ipi)
        launch.wait_for_sockets(ipi, [("unix", cons, 0), ("unix", direct, 0)], 60)
        if shared:
            cmd = [*common, "--mode", "conservative", "--address", cons, "--mts-direct-address", direct]
            procs.append(launch.start_driver(cmd, workdir, "driver.log"))
        else:
            procs.append(launch.start_driver([*common, "--mode", "conservative", "--address", cons], workdir, "cons.log"))
            procs.append(launch.start_driver([*common, "--mode", "direct", "--address", direct], workdir, "direct.log"))
        assert ipi.wait(60) == 0, ipi.log_text()[-2000:]
        for p in procs[1:]:
            assert p.wait(30) == 0, p.log_text()[-2000:]
        logs = [p.log_text() for p in procs[1:]]
    finally:
        launch.kill_processes(procs, (cons, direct))
    from ipi.scripting import read_output

    props, _ = read_output(str(workdir / "sim.out"))
    return props, read_xyz_arrays(workdir / "sim.fcons.xyz"), read_xyz_arrays(workdir / "sim.fdirect.xyz"), logs


def test_one_driver_for_both_mts_sockets_matches_two_drivers(files, tmp_path):
    box, model = files
    props_s, fcons_s, fdirect_s, (log,) = run_mts(tmp_path / "shared", box, model, shared=True)
    props_2, fcons_2, fdirect_2, _ = run_mts(tmp_path / "separate", box, model, shared=False)

    assert len(props_s["step"]) == len(props_2["step"]) == OUTER_STEPS + 1
    assert fcons_s.shape == fcons_2.shape == (OUTER_STEPS + 1, 24, 3)
    # The direct head from the shared (autograd, strained-cell) pass and from the
    # inference-only pass differ at most by float64 round-off (1e-16 relative), which the
    # chaotic NVE amplifies by far less than 1e6 over 8 outer steps (32 inner ones).
    # Outputs carry 17 significant digits, so 1e-10 relative is a tight yet safe bound.
    for key in ("conserved", "potential", "pot_component_raw(0)", "pot_component_raw(1)"):
        np.testing.assert_allclose(props_s[key], props_2[key], rtol=1e-10, atol=0, err_msg=key)
    scale = np.abs(fcons_2).max()  # Ha/Bohr; components near zero are compared against it
    np.testing.assert_allclose(fcons_s, fcons_2, rtol=1e-10, atol=1e-10 * scale)
    np.testing.assert_allclose(fdirect_s, fdirect_2, rtol=1e-10, atol=1e-10 * scale)

    # OUTER_STEPS + 1 position sets are asked of both sockets. The driver needs up to two
    # outer steps to learn the period (i-PI asks the direct socket first there), and the
    # initial call is shared only if the conservative request wins the race; the rest of
    # the outer steps must be served from the shared pass.
    match = re.search(r"direct socket: (\d+) requests, (\d+) served from the shared pass", log)
    assert match, log
    requests, shared = int(match.group(1)), int(match.group(2))
    assert shared >= OUTER_STEPS - 2 and requests > shared, log
    assert "both-heads passes:" in log


def _driver_error(args: list) -> subprocess.CompletedProcess:
    return subprocess.run(launch.driver_command(args), capture_output=True, text=True, timeout=60)


def test_option_needs_conservative_mode(files):
    box, model = files
    res = _driver_error(
        ["--model", model, "--structure", box, "--mode", "direct", "--unix", "--address", "a", "--mts-direct-address", "b"]
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--mode conservative" in lines[0], res.stderr


def test_option_needs_a_model_with_both_heads(tmp_path, files):
    box, _ = files
    energy_only = save_model(PairToyModel(heads=("energy",)), tmp_path / "energy-only.pt")
    res = _driver_error(
        ["--model", energy_only, "--structure", box, "--mode", "conservative", "--unix", "--address", "a",
         "--mts-direct-address", "b", "--connect-timeout", "0"]
    )
    assert res.returncode == 2
    errors = [ln for ln in res.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1 and "both heads" in errors[0] and "direct" in errors[0], res.stderr


def test_runner_serves_an_mts_input_over_sockets_with_one_shared_driver(files, tmp_path, capsys):
    from ipi_ncforces.ipi_driver import runner

    box, model = files
    xml, _, _ = write_mts_input(tmp_path / "mts.xml", box, "r")
    work = tmp_path / "run"
    code = runner.main([str(xml), "--model", str(model), "--workdir", str(work), "--quiet", "--transport", "sockets"])
    assert code == 0, capsys.readouterr().err
    logs = sorted(p.name for p in work.glob("driver-*.log"))
    assert logs == ["driver-cons+direct-0.log"]
    text = (work / logs[0]).read_text()
    assert re.search(r"direct socket: \d+ requests, [1-9]\d* served from the shared pass", text)
    # the exit summary splits each socket's time: waiting for i-PI vs our own socket I/O
    assert re.search(r"direct socket: \d+ requests; per request: median wait for i-PI [0-9.]+ ms", text), text

    xml2, _, _ = write_mts_input(tmp_path / "mts2.xml", box, "r2")
    work2 = tmp_path / "run2"
    code = runner.main([str(xml2), "--model", str(model), "--workdir", str(work2), "--quiet", "--transport", "sockets",
                        "--separate-mts-drivers"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in work2.glob("driver-*.log")) == ["driver-cons-0.log", "driver-direct-0.log"]


def test_runner_serves_an_mts_input_in_process_by_default(files, tmp_path, capsys):
    """--transport auto (the default) on a CPU MTS input: both <ffsocket>s become <ffdirect>s
    (no driver process), one line says so; the trajectory is the one the shared socket
    driver gives (same seed); --resume continues in-process."""
    from ipi_ncforces.ipi_driver import runner

    box, model = files
    runs = {}
    for transport in ("auto", "sockets"):
        xml, _, _ = write_mts_input(tmp_path / f"mts-{transport}.xml", box, f"t{transport[0]}")
        work = tmp_path / transport
        capsys.readouterr()
        code = runner.main([str(xml), "--model", str(model), "--workdir", str(work), "--transport", transport])
        out, err = capsys.readouterr()
        assert code == 0, err
        runs[transport] = (work, out)
    work, out = runs["auto"]
    assert "serving cons, direct inside i-PI (<ffdirect>, --transport auto" in out
    assert not list(work.glob("driver-*.log"))
    written = (work / "input.xml").read_text()
    assert written.count("<ffdirect") == 2 and "<ffsocket" not in written
    # the in-process exit summary (i-PI's log), as a driver prints its own: the shared pass served the outer steps
    assert re.search(r"ipi-nc pes \(in-process\): direct socket: \d+ requests, [1-9]\d* served from the shared pass",
                     (work / "ipi.log").read_text())
    assert list(runs["sockets"][0].glob("driver-*.log")) and "inside i-PI" not in runs["sockets"][1]
    for name in ("sim.fcons.xyz", "sim.fdirect.xyz"):
        a, b = (read_xyz_arrays(w / name) for w in (work, runs["sockets"][0]))
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-10
    xml = tmp_path / "mts-auto.xml"
    assert runner.main([str(xml), "--model", str(model), "--workdir", str(work), "--resume", "--steps",
                        str(OUTER_STEPS + 4), "--quiet"]) == 0
    assert not list(work.glob("driver-*.log")) and "<ffsocket" not in (work / "resume.xml").read_text()
    steps = np.loadtxt(work / "sim.out", ndmin=2)[:, 0]
    assert list(steps) == list(range(OUTER_STEPS + 5))


def test_transport_auto_picks_in_process_only_where_measured_faster(tmp_path):
    """auto: in-process for one system on CPU with our driver, one per socket, and one
    conservative or direct socket or an MTS pair with a two-headed model; sockets for PIMD, GPU,
    several drivers, the stock driver, a correction socket, an MTS pair on an energy-only model.
    in-process / sockets force it either way."""
    import argparse

    from lxml import etree

    from ipi_ncforces.inputs import WATER16_XYZ
    from ipi_ncforces.ipi_driver import runner
    from ipi_ncforces.models import SHIPPED_MODELS_DIR

    shipped = make.shipped_variants()

    def decide(rel: str, model: str = "water-m.pt", **options) -> bool:
        xml = make.write(make.with_changes(shipped[rel], structure=str(WATER16_XYZ)), tmp_path / rel.replace("/", "-"))
        tree = etree.parse(str(xml))
        args = argparse.Namespace(**{"transport": "auto", "driver": "ipi-nc", "separate_mts_drivers": False,
                                     "drivers": 1, "device": "cpu", "mode_overrides": {}, **options})
        return runner.serve_in_process(args, tree.getroot(), runner.read_input(tree, xml.parent), SHIPPED_MODELS_DIR / model)

    assert decide("nve/nve-mts.xml") and decide("nvt/svr-tau10-mts.xml")
    assert not decide("pimd/pilel-8b-mts.xml")
    assert not decide("nve/nve-mts.xml", device="cuda")
    assert not decide("nve/nve-mts.xml", drivers=2)
    assert not decide("nve/nve-mts.xml", driver="stock")
    assert not decide("nve/nve-mts.xml", separate_mts_drivers=True)
    assert not decide("nve/nve-mts.xml", model="water-c.pt")
    assert decide("nve/nve-direct.xml") and decide("nvt/svr-tau10-cons.xml")
    assert decide("nve/nve-cons.xml", model="water-c.pt")
    assert not decide("pimd/pilel-8b-direct.xml")
    assert not decide("nve/nve-direct.xml", device="cuda")
    assert not decide("nve/nve-direct.xml", mode_overrides={"direct": "correction"})
    assert not decide("nve/nve-direct.xml", transport="sockets")
    assert decide("pimd/pilel-8b-mts.xml", transport="in-process")
    assert not decide("nve/nve-mts.xml", transport="sockets")


# ----------------------------------------------------------------------------- in-process (<ffdirect>)


def _load_pes_class():
    """The PES class as i-PI loads it for every <ffdirect>: the file executed afresh."""
    from ipi.pes import load_pes

    from ipi_ncforces.ipi_driver.runner import PES_PATH

    return load_pes("custom", str(PES_PATH))


def test_in_process_cons_and_direct_pes_share_one_model_and_pass(files):
    from ipi_ncforces.ipi_driver.evaluator import ForceEvaluator
    from ipi_ncforces.models.io import load_model

    box, model = files
    # i-PI builds each <ffdirect> from a fresh execution of the PES file
    cons = _load_pes_class()(model=str(model), template=str(box), mode="conservative")
    direct = _load_pes_class()(model=str(model), template=str(box), mode="direct")
    assert cons.paired_with is direct and direct.paired_with is cons
    assert cons.evaluator.backend is direct.evaluator.backend  # one model in memory

    from ipi_ncforces.models.structure_io import read_structure
    from ipi_ncforces.models.units import ANGSTROM_PER_BOHR

    atoms = read_structure(box)
    cell = np.asarray(atoms.cell).T / ANGSTROM_PER_BOHR  # i-PI: lattice vectors as columns, Bohr
    rng = np.random.default_rng(3)
    positions = [atoms.positions / ANGSTROM_PER_BOHR + 0.01 * rng.standard_normal(atoms.positions.shape) for _ in range(9)]
    # MTS order with M = 4: the direct force at every inner position; the conservative one
    # at the outer positions (0, 4, 8), asked for AFTER the direct one except at the start
    replies = {"direct": [], "cons": []}
    replies["cons"].append(cons(cell, positions[0]))
    for k, pos in enumerate(positions):
        replies["direct"].append(direct(cell, pos))
        if k and k % 4 == 0:
            replies["cons"].append(cons(cell, pos))
    # the third outer step is predicted (period learnt) and served by ONE both-heads pass
    assert direct.shared.direct_from_shared >= 2 and cons.shared.conservative_from_shared >= 1

    reference = load_model(model)
    separate = {m: ForceEvaluator(reference, atoms.numbers, m) for m in ("conservative", "direct")}
    for k, pos in enumerate(positions):
        want = separate["direct"]([cell], [pos])[0]
        np.testing.assert_allclose(replies["direct"][k][1], want[1], rtol=1e-12, atol=1e-14)
        assert replies["direct"][k][0] == pytest.approx(want[0], rel=1e-12)
    for got, pos in zip(replies["cons"], (positions[0], positions[4], positions[8])):
        want = separate["conservative"]([cell], [pos])[0]
        np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(got[2], want[2], rtol=1e-12, atol=1e-14)


def test_in_process_pes_with_other_options_or_shared_pass_off_stay_separate(files):
    box, model = files
    cons = _load_pes_class()(model=str(model), template=str(box), mode="conservative", shared_pass="false")
    direct = _load_pes_class()(model=str(model), template=str(box), mode="direct", shared_pass="false")
    assert cons.paired_with is None and direct.paired_with is None
    cons2 = _load_pes_class()(model=str(model), template=str(box), mode="conservative", neighbor_skin=0.3)
    direct2 = _load_pes_class()(model=str(model), template=str(box), mode="direct", neighbor_skin=0.0)
    assert cons2.paired_with is None and direct2.paired_with is None


def test_in_process_mts_run_with_shared_pass_matches_separate_evaluators(files, tmp_path):
    """The law of the socket test above, for <ffdirect>: an i-PI MTS run whose two
    in-process forcefields share the model's pass records the forces and energies of the
    same run with the sharing turned off (``shared_pass: false``)."""
    from ipi.scripting import read_output

    from ipi_ncforces.ipi_driver.runner import PES_PATH

    box, model = files
    out = {}
    for label, text_change in (("shared", None), ("separate", ", shared_pass: false}")):
        work = tmp_path / label
        work.mkdir()
        v = make.Variant(
            name="sim", forces="mts", mts_m=4, dt_fs=0.25, steps=OUTER_STEPS, seed=4242, structure=str(box),
            sockets="ffdirect", model=str(model), pes_path=str(PES_PATH), safe_stride=100000,
            outputs=(
                make.Output("properties", "out", "[ step, conserved, potential, pot_component_raw(0), pot_component_raw(1) ]"),
                make.Output("trajectory", "fcons", "forces_component_raw(0)"),
                make.Output("trajectory", "fdirect", "forces_component_raw(1)"),
            ),
        )
        xml = make.write(v, work / "input.xml")
        if text_change:
            xml.write_text(xml.read_text().replace("} </parameters>", text_change + " </parameters>"))
            assert xml.read_text().count("shared_pass: false") == 2
        ipi = launch.start_ipi(xml, work)
        try:
            assert ipi.wait(120) == 0, ipi.log_text()[-2000:]
        finally:
            launch.kill_processes([ipi])
        props, _ = read_output(str(work / "sim.out"))
        out[label] = (props, read_xyz_arrays(work / "sim.fcons.xyz"), read_xyz_arrays(work / "sim.fdirect.xyz"))
    (props_s, fcons_s, fdirect_s), (props_2, fcons_2, fdirect_2) = out["shared"], out["separate"]
    assert len(props_s["step"]) == OUTER_STEPS + 1
    # same bound and reasoning as the socket test: float64 round-off amplified over 32 inner steps
    for key in ("conserved", "potential", "pot_component_raw(0)", "pot_component_raw(1)"):
        np.testing.assert_allclose(props_s[key], props_2[key], rtol=1e-10, atol=0, err_msg=key)
    scale = np.abs(fcons_2).max()
    np.testing.assert_allclose(fcons_s, fcons_2, rtol=1e-10, atol=1e-10 * scale)
    np.testing.assert_allclose(fdirect_s, fdirect_2, rtol=1e-10, atol=1e-10 * scale)
