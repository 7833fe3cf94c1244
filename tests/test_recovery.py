"""`ipi-nc run` survives killed processes: a SIGKILLed driver is replaced, an i-PI that hangs
on the dead driver or is itself SIGKILLed is restarted from its newest checkpoint (or, with
--max-restarts 0, by `--resume`). Every run must end with every step in the properties file
and the trajectory exactly once, and read by the analysis as one run.

Real i-PI, real drivers, toy model, 8 waters (24 atoms); each test takes 15-35 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ipi_ncforces.analysis.readers import find_run, read_properties, read_traj
from ipi_ncforces.inputs import make

SHIPPED = make.shipped_variants()
STEPS = 60


def _input(tmp: Path, structure: Path, tag: str, rel: str = "nve/nve-direct.xml", **changes) -> Path:
    """A shipped input on the small box: a properties row, a position frame every step,
    a checkpoint every 10 steps (dt 0.5 fs), unique socket name."""
    v = SHIPPED[rel]
    common = dict(steps=STEPS, properties_fs=0.5, positions_fs=0.5, checkpoint_fs=5.0)
    name = f"r{os.getpid()}-{tag}-{v.name}"
    return make.write(make.with_changes(v, name=name, structure=str(structure), **{**common, **changes}), tmp / f"{name}.xml")


def _run_cmd(xml: Path, model: Path, workdir: Path, *extra: str, transport: str = "sockets") -> list[str]:
    # sockets by default: these tests kill drivers (auto would serve the model inside i-PI)
    return [sys.executable, "-m", "ipi_ncforces.cli", "run", str(xml), "--model", str(model),
            "--workdir", str(workdir), "--quiet", "--transport", transport, *extra]


def _rows(path: Path) -> int:
    if not path.is_file():
        return 0
    return sum(1 for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#"))


def _wait_rows(path: Path, n: int, proc: subprocess.Popen, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _rows(path) < n:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, f"{path} never reached {n} rows"
        time.sleep(0.02)


def _children(pid: int, word: bytes) -> list[int]:
    """Child processes of ``pid`` whose command line contains ``word``."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out if word in Path(f"/proc/{p}/cmdline").read_bytes()]


class Run:
    """`ipi-nc run` as a subprocess; its stderr lines are collected as they come."""

    def __init__(self, cmd: list[str]):
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self.reader.start()

    def kill_child_after(self, out: Path, rows: int, word: bytes) -> float:
        """SIGKILL the child whose command line holds ``word`` once ``out`` has ``rows`` rows;
        returns the moment of the kill (time.monotonic)."""
        _wait_rows(out, rows, self.proc)
        os.kill(_children(self.proc.pid, word)[0], signal.SIGKILL)
        return time.monotonic()

    def finish(self, timeout_s: float = 120.0) -> tuple[int, str]:
        code = self.proc.wait(timeout_s)
        self.reader.join(10)
        return code, "".join(self.lines)

    def seconds_until_new_step(self, out: Path, t_kill: float, restart: bool, timeout_s: float = 90.0) -> float:
        """Seconds from ``t_kill`` until ``out`` gets a step beyond the one the run goes on
        from: the step where i-PI stalls (read 0.3 s after the kill: a step whose forces
        were already sent may still be written; the new driver needs longer than that to
        start), or (``restart``) the checkpoint step that the runner's recovery line names
        (it prints it after truncating the outputs, before i-PI starts)."""
        deadline = time.monotonic() + timeout_s
        time.sleep(max(0.0, t_kill + 0.3 - time.monotonic()))
        after = _last_step(out)
        if restart:
            while not any("from the checkpoint at step" in ln for ln in self.lines):
                assert self.proc.poll() is None and time.monotonic() < deadline, "".join(self.lines)
                time.sleep(0.01)
            after = int(next(ln for ln in self.lines if "from the checkpoint at step" in ln).rsplit("step", 1)[1])
        while _last_step(out) <= after and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return time.monotonic() - t_kill


def _last_step(path: Path) -> int:
    rows = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")] if path.is_file() else []
    return int(float(rows[-1].split()[0])) if rows else -1


def _check_every_step_once(workdir: Path, steps: int = STEPS) -> None:
    """Properties and position trajectory hold steps 0..steps once each, in order, and the
    analysis reads the directory as one run."""
    run = find_run(workdir)
    props = read_properties(run.properties)
    np.testing.assert_array_equal(props["step"], np.arange(steps + 1))
    traj = read_traj(run.trajectory_files("positions")[0])
    np.testing.assert_array_equal(traj.steps, np.arange(steps + 1))
    assert not props.warnings and not traj.warnings, props.warnings + traj.warnings
    assert np.all(np.isfinite(props["conserved"]))


def _recovery_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if "recovery" in ln]


@pytest.mark.slow
def test_killed_driver_is_replaced_and_every_step_is_written_once(box_file, toy_model_file, tmp_path):
    xml = _input(tmp_path, box_file, "d")
    work = tmp_path / "run"
    run = Run(_run_cmd(xml, toy_model_file, work))
    out = work / f"{xml.stem}.out"
    t_kill = run.kill_child_after(out, 15, b"driver")
    recovery_s = run.seconds_until_new_step(out, t_kill, restart=False)
    code, err = run.finish()
    assert code == 0, err
    lines = _recovery_lines(err)
    assert len(lines) == 1 and "recovery 1/3" in lines[0] and "starting a new driver" in lines[0], err
    assert "restarting i-PI" not in err  # the same i-PI went on
    _check_every_step_once(work)
    # NVE is deterministic: the replaced driver continued the very trajectory of an uninterrupted run
    ref = tmp_path / "ref"
    assert subprocess.run(_run_cmd(xml, toy_model_file, ref)).returncode == 0
    a = np.loadtxt(ref / f"{xml.stem}.out", ndmin=2)
    b = np.loadtxt(out, ndmin=2)
    np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
    print(f"\nrecovery after driver SIGKILL: {recovery_s:.2f} s from kill to the next step")


@pytest.mark.slow
def test_killed_shared_mts_driver_is_replaced_and_the_run_goes_on(box_file, toy_model_file, tmp_path):
    """The MTS layout over sockets: ONE driver serves both sockets. SIGKILL resets both of its
    connections; the runner starts a new one and i-PI (threaded dispatch, requeue) goes on."""
    steps = 20
    xml = _input(tmp_path, box_file, "m", rel="nve/nve-mts.xml", steps=steps, properties_fs=4.0,
                 positions_fs=4.0, checkpoint_fs=40.0)
    work = tmp_path / "run"
    run = Run(_run_cmd(xml, toy_model_file, work))
    out = work / f"{xml.stem}.out"
    run.kill_child_after(out, 6, b"--mts-direct-address")
    code, err = run.finish()
    assert code == 0, err
    lines = _recovery_lines(err)
    assert len(lines) == 1 and "cons+direct" in lines[0] and "starting a new driver" in lines[0], err
    _check_every_step_once(work, steps)
    ref = tmp_path / "ref"
    assert subprocess.run(_run_cmd(xml, toy_model_file, ref)).returncode == 0
    # the new driver relearns the outer period, so some forces come from a direct-only pass
    # instead of the two-head one: equal to float64 round-off, which NVE amplifies over
    # 160 inner steps far less than to 1e-8 relative
    a, b = np.loadtxt(ref / f"{xml.stem}.out", ndmin=2), np.loadtxt(out, ndmin=2)
    np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-10)


@pytest.mark.slow
def test_driver_killed_while_ipi_hangs_restarts_ipi_from_checkpoint(box_file, toy_model_file, tmp_path):
    # i-PI 3.3.1 with consolidate_messages true sometimes hangs when its driver is SIGKILLed
    # (its poller dies on the reset connection), sometimes goes on: which one depends on the
    # moment of the kill. The hang is made certain here by stopping i-PI (SIGSTOP) at the
    # kill; after --hang-timeout without a step the runner stops it (SIGKILL after the grace)
    # and continues from the newest checkpoint with new drivers
    xml = _input(tmp_path, box_file, "h", consolidate_messages=True)
    work = tmp_path / "run"
    run = Run(_run_cmd(xml, toy_model_file, work, "--hang-timeout", "6"))
    out = work / f"{xml.stem}.out"
    _wait_rows(out, 25, run.proc)
    ipi_pid = _children(run.proc.pid, b"i-pi")[0]
    os.kill(ipi_pid, signal.SIGSTOP)
    os.kill(_children(run.proc.pid, b"driver")[0], signal.SIGKILL)
    t_kill = time.monotonic()
    recovery_s = run.seconds_until_new_step(out, t_kill, restart=True)
    code, err = run.finish()
    total_s = time.monotonic() - t_kill
    assert code == 0, err
    lines = _recovery_lines(err)
    assert len(lines) == 2, err  # the new driver, then the i-PI restart
    assert "starting a new driver" in lines[0]
    assert "no step for 6 s after a driver died" in lines[1] and "from the checkpoint at step" in lines[1]
    assert not Path(f"/proc/{ipi_pid}").exists() or b"zombie" in Path(f"/proc/{ipi_pid}/status").read_bytes()
    _check_every_step_once(work)
    assert total_s > 6  # the hang was waited for
    print(f"\nrecovery after driver SIGKILL with a hung i-PI: {recovery_s:.2f} s from kill to the next step (--hang-timeout 6)")


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["sockets", "in-process"])
def test_killed_ipi_is_restarted_from_its_checkpoint(box_file, toy_model_file, tmp_path, transport):
    xml = _input(tmp_path, box_file, "i")
    work = tmp_path / "run"
    run = Run(_run_cmd(xml, toy_model_file, work, transport=transport))
    out = work / f"{xml.stem}.out"
    t_kill = run.kill_child_after(out, 25, b"i-pi")
    recovery_s = run.seconds_until_new_step(out, t_kill, restart=True)
    code, err = run.finish()
    assert code == 0, err
    lines = _recovery_lines(err)
    assert len(lines) == 1 and "i-PI exited with code -9" in lines[0] and "from the checkpoint at step" in lines[0], err
    chk_step = int(lines[0].rsplit("step", 1)[1])
    assert chk_step % 10 == 0 and 20 <= chk_step < STEPS  # the newest periodic checkpoint (every 10 steps)
    _check_every_step_once(work)
    print(f"\nrecovery after i-PI SIGKILL: {recovery_s:.2f} s from kill to the first new step")


@pytest.mark.slow
def test_killed_ipi_without_restarts_stops_and_resume_completes_the_run(box_file, toy_model_file, tmp_path):
    xml = _input(tmp_path, box_file, "m")
    work = tmp_path / "run"
    proc = subprocess.Popen(_run_cmd(xml, toy_model_file, work, "--max-restarts", "0"), stderr=subprocess.PIPE, text=True)
    _wait_rows(work / f"{xml.stem}.out", 25, proc)
    os.kill(_children(proc.pid, b"i-pi")[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert len(err.strip().splitlines()) == 1 and "i-PI exited with code -9" in err and "--resume" in err, err
    resumed = subprocess.run(_run_cmd(xml, toy_model_file, work, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    _check_every_step_once(work)
    drift = subprocess.run([sys.executable, "-m", "ipi_ncforces.cli", "analyze", "drift", str(work), "--out", str(tmp_path / "an")],
                           capture_output=True, text=True)
    assert drift.returncode == 0, drift.stderr
