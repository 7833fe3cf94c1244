"""End to end: real ``i-pi`` processes served by real ``ipi-nc driver`` processes.

The law checked throughout: what i-PI recorded (potential in Hartree, forces in eV/A
after i-PI's own unit conversion) equals a direct call of the model on the positions
i-PI recorded, so nothing is lost or mis-converted on the wire.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest
import torch
from ipi.utils.units import Elements, unit_to_internal

from ipi_ncforces.models.base import Batch, evaluate
from ipi_ncforces.models.io import load_model, save_model
from ipi_ncforces.models.pair_toy import PairToyModel
from tests.ipi_helpers import (
    frame_array,
    kill_processes,
    log_text,
    read_frames,
    read_properties,
    start_driver,
    start_ipi,
    unique_socket_name,
    wait_for_socket,
    wait_for_step,
    wait_process,
    water_box,
    write_ipi_input,
    write_ipi_xyz,
    write_toy_model,
)

HARTREE_PER_EV = unit_to_internal("energy", "electronvolt", 1.0)


class Session:
    """Files and processes of one test; ``close`` kills whatever is still running."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.box = write_ipi_xyz(water_box(n_side=2), tmp_path / "init.xyz")
        self.model = write_toy_model(tmp_path / "toy.pt")
        self.name = unique_socket_name()
        self.procs = []

    def ipi(self, **kwargs):
        xml = write_ipi_input(self.dir / "input.xml", init_file=self.box, address=self.name, **kwargs)
        proc = start_ipi(xml, self.dir)
        self.procs.append(proc)
        return proc

    def driver(self, mode, *extra, model=None, structure=None, log="driver.log"):
        args = ["--model", model or self.model, "--structure", structure or self.box, "--mode", mode]
        args += ["--unix", "--address", self.name, "--connect-timeout", "60", *extra]
        proc = start_driver(args, self.dir, log_name=log)
        self.procs.append(proc)
        return proc

    def close(self):
        kill_processes(*self.procs, sockets=(self.name,))


@pytest.fixture
def session(tmp_path):
    s = Session(tmp_path)
    yield s
    s.close()


def model_prediction(model_path, frames, mode):
    """(energies eV (B,), forces eV/A (B,N,3)) of the saved model in ``mode``, float64."""
    model = load_model(model_path, dtype=torch.float64)
    batch = Batch.from_ase(frames)
    if mode == "direct":
        p = evaluate(model, batch, conservative=False, direct=True)
        return p.energy.numpy(), p.direct_forces.numpy()
    p = evaluate(model, batch, conservative=True, direct=(mode == "correction"))
    if mode == "correction":
        return np.zeros(len(frames)), (p.forces - p.direct_forces).numpy()
    return p.energy.numpy(), p.forces.numpy()


def check_recorded_against_model(session, mode, nbeads=1, prefix="sim"):
    """Compare every recorded frame of every bead with the model; returns the number of frames."""
    props, units = read_properties(session.dir / f"{prefix}.out")
    assert units["potential"] in (None, "atomic_unit")  # Hartree
    energies_ev = []
    n_frames = None
    for bead in range(nbeads):
        positions = read_frames(session.dir / f"{prefix}.pos_{bead}.extxyz")  # A (ASE units)
        forces = read_frames(session.dir / f"{prefix}.for_{bead}.extxyz")  # eV/A (ASE units)
        n_frames = len(positions)
        assert len(forces) == n_frames == len(props["step"])
        energy_ev, expected = model_prediction(session.model, positions, mode)
        recorded = np.stack([frame_array(f, "forces") for f in forces])
        # extxyz keeps 8 decimals (5e-9 eV/A) of forces and positions (5e-9 A, times force
        # gradients < 1 eV/A^2 for the toy model): 1e-6 eV/A leaves a wide margin
        np.testing.assert_allclose(recorded, expected, rtol=0, atol=1e-6)
        energies_ev.append(energy_ev)
    # i-PI's potential is the bead average, printed with 9 significant digits
    expected_ha = np.mean(energies_ev, axis=0) * HARTREE_PER_EV
    np.testing.assert_allclose(props["potential"], expected_ha, rtol=1e-7, atol=1e-12)
    return n_frames


def test_single_requests_match_the_model(session):
    # the driver starts first: it must retry until i-PI has opened the socket
    driver = session.driver("direct")
    time.sleep(0.5)
    ipi = session.ipi(steps=5)
    assert wait_process(ipi, 90) == 0, log_text(ipi)[-2000:]
    assert wait_process(driver, 30) == 0
    log = log_text(driver)
    assert "6 requests, 6 structures" in log
    assert check_recorded_against_model(session, "direct") == 6


def test_batched_pimd_request_is_one_model_call(session):
    ipi = session.ipi(steps=4, nbeads=4, batch_size=4)
    wait_for_socket(session.name, ipi)
    driver = session.driver("conservative")
    assert wait_process(ipi, 90) == 0, log_text(ipi)[-2000:]
    assert wait_process(driver, 30) == 0
    log = log_text(driver)
    assert "i-PI sends batches of 4 structures" in log
    # one request (one evaluator call) per MD step, four beads in each
    assert "5 requests, 20 structures" in log
    check_recorded_against_model(session, "conservative", nbeads=4)


@pytest.mark.slow
def test_two_drivers_share_one_socket(session):
    a = session.driver("correction", log="driver_a.log")
    b = session.driver("correction", log="driver_b.log")
    # both drivers load the model and wait (retrying) before i-PI opens the socket, so
    # both are connected when the first step's 4 bead requests are handed out
    deadline = time.monotonic() + 60
    while not all("connecting to" in log_text(p) for p in (a, b)) and time.monotonic() < deadline:
        time.sleep(0.05)
    ipi = session.ipi(steps=20, nbeads=4)
    assert wait_process(ipi, 90) == 0, log_text(ipi)[-2000:]
    assert wait_process(a, 30) == 0 and wait_process(b, 30) == 0
    served = []
    for proc in (a, b):
        summary = [ln for ln in log_text(proc).splitlines() if " requests, " in ln][-1]
        served.append(int(summary.split("ipi-nc driver: ")[1].split()[0]))
    assert sum(served) == 4 * 21 and min(served) > 0, served
    check_recorded_against_model(session, "correction", nbeads=4)


def _com_drift_ang(session, prefix):
    frames = read_frames(session.dir / f"{prefix}.pos_0.extxyz")
    masses = np.array([Elements.mass(s) for s in frames[0].get_chemical_symbols()])
    com = np.array([masses @ f.positions / masses.sum() for f in frames])
    return np.linalg.norm(com - com[0], axis=1)


@pytest.mark.slow
def test_remove_net_force_stops_centre_of_mass_drift(tmp_path):
    """Direct forces of the toy model (asymmetry 0.5) have a net force F_net; starting at
    rest without i-PI's fixcom, the centre of mass accelerates as F_net/M. With
    --remove-net-force the total force is zero, momentum is conserved and the COM stays."""
    sessions = {}
    try:
        for tag, extra in (("raw", ()), ("removed", ("--remove-net-force",))):
            (tmp_path / tag).mkdir()
            s = sessions[tag] = Session(tmp_path / tag)
            s.model = save_model(PairToyModel(asymmetry=0.5), s.dir / "toy.pt")
            s.ipi(steps=40, dt_fs=1.0, fixcom=False, velocities=False)
            s.driver("direct", *extra)
        for s in sessions.values():
            assert wait_process(s.procs[0], 90) == 0, log_text(s.procs[0])[-2000:]
            assert wait_process(s.procs[1], 30) == 0
        raw = _com_drift_ang(sessions["raw"], "sim")
        removed = _com_drift_ang(sessions["removed"], "sim")
    finally:
        for s in sessions.values():
            s.close()
    # expected without removal: |F_net| / M * t^2 / 2 at t = 40 fs, F_net from the model at step 0
    frames = read_frames(sessions["raw"].dir / "sim.pos_0.extxyz")
    _, forces = model_prediction(sessions["raw"].model, frames[:1], "direct")
    net_force = np.linalg.norm(forces[0].sum(axis=0)) * unit_to_internal("force", "ev/ang", 1.0)
    mass = sum(Elements.mass(s) for s in frames[0].get_chemical_symbols())
    t = unit_to_internal("time", "femtosecond", 40.0)
    expected_ang = 0.5 * net_force / mass * t**2 / unit_to_internal("length", "angstrom", 1.0)
    print(f"COM drift after 40 fs: raw {raw[-1]:.3e} A (expected {expected_ang:.3e} A), removed {removed[-1]:.3e} A")
    # the net force changes little in 40 fs of a nearly static box: 20% covers it
    assert raw[-1] == pytest.approx(expected_ang, rel=0.2)
    # with removal only round-off (1e-16 relative) and the 8-decimal output (5e-9 A) remain
    assert removed.max() < 1e-7
    assert raw[-1] > 1e3 * max(removed.max(), 1e-9)


def test_bad_drivers_send_nothing_and_a_good_one_finishes(session):
    """Wrong atom count, NaN forces and absurd forces each stop their driver at request 1
    with a one-line error; i-PI waits and the values it records come from the good driver."""
    bad = session.dir / "bad"
    bad.mkdir()
    short_box = write_ipi_xyz(water_box(n_side=2)[:-3], bad / "short.xyz")  # 7 molecules, i-PI has 8
    nan_model = PairToyModel()
    nan_model.species_sign.fill_(float("nan"))  # direct head -> NaN
    nan_path = save_model(nan_model, bad / "nan.pt")
    huge_path = save_model(PairToyModel(eps_ev=1e7), bad / "huge.pt")

    ipi = session.ipi(steps=2)
    wait_for_socket(session.name, ipi)
    drivers = {
        "count": session.driver("direct", structure=short_box, log="count.log"),
        "nan": session.driver("direct", model=nan_path, log="nan.log"),
        "huge": session.driver("direct", model=huge_path, log="huge.log"),
    }
    expected = {
        "count": "request 1: i-PI sent 24 atoms but the structure template has 21",
        "nan": "NaN/inf forces at request 1",
        "huge": "absurd force",
    }
    for key, proc in drivers.items():
        assert wait_process(proc, 60) == 1, log_text(proc)
        errors = [ln for ln in log_text(proc).splitlines() if "error:" in ln]
        assert len(errors) == 1 and expected[key] in errors[0], log_text(proc)
        assert "not sent to i-PI" in errors[0] or key == "count"
    assert ipi.poll() is None  # i-PI is still waiting for a driver
    good = session.driver("direct", log="good.log")
    assert wait_process(ipi, 90) == 0, log_text(ipi)[-2000:]
    assert wait_process(good, 30) == 0
    check_recorded_against_model(session, "direct")


def test_ipi_killed_mid_run_stops_the_driver(session):
    ipi = session.ipi(steps=100000)
    driver = session.driver("direct")
    wait_for_step(session.dir / "sim.out", 3, [ipi, driver])
    ipi.send_signal(signal.SIGKILL)
    ipi.wait(10)
    assert wait_process(driver, 20) == 1  # no spinning: it notices the closed socket
    log = log_text(driver)
    # FIN (closed) or RST (reset), depending on what was in flight when i-PI died
    errors = [ln for ln in log.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "(i-PI killed or crashed?)" in errors[0], log
    assert " requests, " in log  # timing summary still printed


def _last_step(session) -> int:
    props, _ = read_properties(session.dir / "sim.out")
    return int(props["step"][-1])


@pytest.mark.slow
def test_killed_driver_is_replaced_and_the_run_continues(session):
    """SIGKILL the driver mid-run: i-PI waits (no step advances) and a fresh driver
    continues the same trajectory to the end.

    A SIGKILLed driver may leave unread bytes in its socket, so the kernel resets the
    connection; i-PI 3.3.1's default consolidated-message poller dies on that reset (and
    i-PI hangs) while its threaded dispatcher (consolidate_messages False) requeues."""
    ipi = session.ipi(steps=40, consolidate_messages=False)
    first = session.driver("direct", log="first.log")
    wait_for_step(session.dir / "sim.out", 5, [ipi, first])
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    time.sleep(0.5)
    stalled_at = _last_step(session)
    time.sleep(0.5)
    assert ipi.poll() is None and _last_step(session) == stalled_at < 40  # waiting, not advancing

    second = session.driver("direct", log="second.log")
    assert wait_process(ipi, 90) == 0, log_text(ipi)[-2000:]
    assert wait_process(second, 30) == 0
    props, _ = read_properties(session.dir / "sim.out")
    np.testing.assert_array_equal(props["step"], np.arange(41))  # every step once, in order
    check_recorded_against_model(session, "direct")


def test_sigterm_exits_143_cleanly_and_a_new_driver_continues(session):
    """SIGTERM mid-run (default consolidated messages): exit code 143 with the timing
    summary, socket closed cleanly so i-PI keeps running and requeues for the next driver."""
    ipi = session.ipi(steps=30)
    first = session.driver("direct", log="first.log")
    wait_for_step(session.dir / "sim.out", 3, [ipi, first])
    first.send_signal(signal.SIGTERM)
    assert wait_process(first, 20) == 143
    log = log_text(first)
    assert "received SIGTERM, closing the socket" in log and " requests, " in log
    time.sleep(0.3)
    assert ipi.poll() is None and _last_step(session) < 30

    second = session.driver("direct", log="second.log")
    assert wait_process(ipi, 90) == 0, log_text(ipi)[-2000:]
    assert wait_process(second, 30) == 0
    props, _ = read_properties(session.dir / "sim.out")
    np.testing.assert_array_equal(props["step"], np.arange(31))
    check_recorded_against_model(session, "direct")
