"""`ipi-nc run` end to end: real i-PI, real drivers (toy model, 8 water molecules)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ipi_ncforces.inputs import make
from ipi_ncforces.ipi_driver import runner

SHIPPED = make.shipped_variants()


@pytest.fixture(scope="module")
def files(box_file, toy_model_file):
    return box_file, toy_model_file


def _small(rel: str, tmp: Path, structure: Path, tag: str, **changes) -> Path:
    """A shipped variant on the small box, few steps, unique socket names (pid + tag)."""
    v = SHIPPED[rel]
    changes = {"steps": 3, "properties_fs": 0.5, **changes}  # a properties row every step
    name = f"t{os.getpid()}-{tag}-{v.name}"
    new = make.with_changes(v, name=name, structure=str(structure), **changes)
    return make.write(new, tmp / f"{name}.xml")


def _props(path: Path) -> np.ndarray:
    return np.loadtxt(path, ndmin=2)


# one NVE-MTS (two sockets), one PIMD with batched beads, one thermostat, one optimizer:
# every code path of the runner with sockets, in about 30 s
SOCKET_CASES = ["nve/nve-mts.xml", "pimd/pilel-8b-mts.xml", "nvt/svr-tau10-direct.xml", "geop/lbfgs-direct.xml"]


@pytest.mark.parametrize("rel", SOCKET_CASES)
def test_shipped_input_runs_under_runner_with_socket_drivers(rel, files, tmp_path, capsys):
    xml = _small(rel, tmp_path, files[0], "s")
    code = runner.main([str(xml), "--model", str(files[1]), "--workdir", str(tmp_path / "run"), "--progress-every", "0.5",
                        "--transport", "sockets"])
    assert code == 0, capsys.readouterr().err
    assert list((tmp_path / "run").glob("driver-*.log"))
    props = _props(next((tmp_path / "run").glob("*.out")))
    assert props[-1, 0] >= 1 and np.all(np.isfinite(props))
    assert "finished" in capsys.readouterr().out


# every thermostat, bead count, contraction and optimizer once (~10 s each on 2 loaded
# cores); IPI_NC_ALL_INPUTS=1 runs all shipped inputs (about 8 minutes)
IN_PROCESS_CASES = sorted(SHIPPED) if os.environ.get("IPI_NC_ALL_INPUTS") else [
    "nvt/langevin-tau10-mts.xml", "nvt/gle-direct.xml", "nve/nve-cons.xml", "pimd/pileg-8b-direct.xml",
    "pimd/pilel-32b-mts.xml", "pimd/pileg-32b-cons.xml",
] + [f"geop/{m}-{f}.xml" for m, f in zip(make.GEOP_MODES, ("cons", "direct") * 3)]


@pytest.mark.slow
@pytest.mark.parametrize("rel", IN_PROCESS_CASES)
def test_every_shipped_input_runs_a_few_steps_in_process(rel, files, tmp_path):
    # ffdirect: same i-PI input, forces in-process (no sockets); checks that i-PI accepts
    # and runs every shipped combination (thermostats, contraction, MTS, optimizers)
    xml = _small(rel, tmp_path, files[0], "d", sockets="ffdirect")
    code = runner.main([str(xml), "--model", str(files[1]), "--workdir", str(tmp_path / "run"), "--quiet"])
    assert code == 0
    props = _props(next((tmp_path / "run").glob("*.out")))
    assert np.all(np.isfinite(props))


def _run_cmd(xml: Path, model: Path, workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ipi_ncforces.cli", "run", str(xml), "--model", str(model), "--workdir", str(workdir), "--quiet", *extra]


def _wait_rows(path: Path, n: int, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.is_file() and sum(1 for ln in path.read_text().splitlines() if ln and not ln.startswith("#")) >= n:
            return
        assert proc.poll() is None, "run ended before it could be interrupted"
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} rows")


def test_resume_after_kill_reproduces_the_uninterrupted_trajectory(files, tmp_path):
    structure, model = files
    # stochastic thermostat: the resumed run must also restore the random-number state
    common = dict(steps=40, checkpoint_fs=2.5, properties_fs=0.5, positions_fs=0.5, velocities_fs=0.5)
    xml_a = _small("nvt/langevin-tau100-direct.xml", tmp_path, structure, "a", **common)
    xml_b = _small("nvt/langevin-tau100-direct.xml", tmp_path, structure, "b", **common)
    assert subprocess.run(_run_cmd(xml_a, model, tmp_path / "A")).returncode == 0
    # hard kill of runner, i-PI and driver together (as a node failure would) after ~25 steps
    proc = subprocess.Popen(_run_cmd(xml_b, model, tmp_path / "B"), start_new_session=True)
    out_b = next(iter([tmp_path / "B" / f"{make.Variant(name=xml_b.stem).name}.out"]))
    _wait_rows(out_b, 25, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert subprocess.run(_run_cmd(xml_b, model, tmp_path / "B", "--resume")).returncode == 0
    a, b = _props(tmp_path / "A" / f"{xml_a.stem}.out"), _props(out_b)
    assert a.shape == b.shape == (41, a.shape[1])  # steps 0..40, none lost, none doubled
    np.testing.assert_array_equal(a[:, 0], b[:, 0])
    # checkpoints hold full doubles (floatformat %.16e): only last-digit round-off remains
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    pa = [ln for ln in (tmp_path / "A" / f"{xml_a.stem}.pos_0.xyz").read_text().splitlines() if "Step" not in ln]
    pb = [ln for ln in (tmp_path / "B" / f"{xml_b.stem}.pos_0.xyz").read_text().splitlines() if "Step" not in ln]
    assert pa == pb


def test_dead_driver_stops_the_run_with_a_clear_message(files, tmp_path):
    structure, model = files
    xml = _small("nve/nve-direct.xml", tmp_path, structure, "k", steps=100000)
    proc = subprocess.Popen(_run_cmd(xml, model, tmp_path / "K", "--max-restarts", "0", "--transport", "sockets"), stderr=subprocess.PIPE, text=True)
    _wait_rows(tmp_path / "K" / f"{xml.stem}.out", 3, proc)
    driver_pids = [
        int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    ]
    drivers = [p for p in driver_pids if b"driver" in Path(f"/proc/{p}/cmdline").read_bytes()]
    os.kill(drivers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "driver 'direct-0' exited" in err and len(err.strip().splitlines()) == 1
    # i-PI was stopped too (its soft exit leaves a RESTART to continue from)
    assert (tmp_path / "K" / "RESTART").is_file()


def test_forcefield_names_map_to_driver_modes():
    assert runner.driver_mode("cons", {}) == "conservative"
    assert runner.driver_mode("direct", {}) == "direct"
    assert runner.driver_mode("corr", {}) == "correction"
    assert runner.driver_mode("slow", {"slow": "correction"}) == "correction"
    with pytest.raises(runner.RunError, match="--mode-for"):
        runner.driver_mode("slow", {})


def test_prune_checkpoints_keeps_the_newest_numbered_ones(tmp_path):
    for k in (1, 2, 3, 10, 11):  # numeric order, not name order: chk_10 is newer than chk_3
        (tmp_path / f"run.chk_{k}").write_text("x")
    (tmp_path / "RESTART").write_text("x")
    (tmp_path / "other.chk_1").write_text("x")  # another prefix: not this run's
    (tmp_path / "run.chk").write_text("x")  # an overwritten (unnumbered) checkpoint
    deleted = runner.prune_checkpoints(tmp_path, "run", keep=2)
    assert sorted(p.name for p in deleted) == ["run.chk_1", "run.chk_2", "run.chk_3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESTART", "other.chk_1", "run.chk", "run.chk_10", "run.chk_11"]
    assert runner.prune_checkpoints(tmp_path, "run", keep=0) == []


@pytest.mark.slow
def test_a_run_keeps_only_its_newest_checkpoints_and_resumes_from_them(files, tmp_path):
    """A checkpoint every 2 steps for 20 steps writes 11 numbered files (step 0 too); the runner keeps the
    newest 3 (--keep-checkpoints default), and --resume with more steps continues from them."""
    xml = _small("nve/nve-direct.xml", tmp_path, files[0], "k", sockets="ffdirect", steps=20, checkpoint_fs=1.0)
    work = tmp_path / "run"
    assert runner.main([str(xml), "--model", str(files[1]), "--workdir", str(work), "--quiet"]) == 0
    kept = sorted(work.glob("*.chk_*"), key=lambda p: int(p.name.rsplit("_", 1)[1]))
    assert [int(p.name.rsplit("_", 1)[1]) for p in kept] == [8, 9, 10]  # chk_0 (step 0) .. chk_10 (step 20)
    assert max(runner.checkpoint_step(p) for p in kept) == 20
    assert runner.main([str(xml), "--model", str(files[1]), "--workdir", str(work), "--quiet", "--resume", "--steps", "24"]) == 0
    assert _props(next(work.glob("*.out")))[-1, 0] == 24
    assert len(list(work.glob("*.chk_*"))) == 3
    work_all = tmp_path / "run-all"
    assert runner.main([str(xml), "--model", str(files[1]), "--workdir", str(work_all), "--quiet", "--keep-checkpoints", "0"]) == 0
    assert len(list(work_all.glob("*.chk_*"))) == 11
