"""End to end: real ``i-pi`` processes served by real ``ipi-nc driver`` processes.

The law checked throughout: what i-PI recorded (potential in Hartree, forces in eV/A
after i-PI's own unit conversion) equals a direct call of the model on the positions
i-PI recorded, so nothing is lost or mis-converted on the wire.
"""

from __future__ import annotations

import re
import signal
import time

import numpy as np
import pytest
from ipi.utils.units import Elements, unit_to_internal

from ipi_ncforces.ipi_driver import launch
from ipi_ncforces.models.io import save_model
from ipi_ncforces.models.pair_toy import PairToyModel
from ipi_ncforces.models.structure_io import write_ipi_xyz
from ipi_ncforces.models.water_box import lattice_water_box


def test_single_requests_match_the_model(session):
    # the driver starts first: it must retry until i-PI has opened the socket
    driver = session.driver("direct")
    time.sleep(0.5)
    ipi = session.ipi(steps=5)
    assert ipi.wait(90) == 0, ipi.log_text()[-2000:]
    assert driver.wait(30) == 0
    log = driver.log_text()
    assert "6 requests, 6 structures" in log
    assert session.check_recorded_against_model("direct") == 6


def test_batched_pimd_request_is_one_model_call(session):
    ipi = session.ipi(steps=4, beads=4, batch_size=4)
    session.wait_for_socket(ipi)
    driver = session.driver("conservative")
    assert ipi.wait(90) == 0, ipi.log_text()[-2000:]
    assert driver.wait(30) == 0
    log = driver.log_text()
    assert "i-PI sends batches of 4 structures" in log
    # one request (one evaluator call) per MD step, four beads in each; a bead that repeats
    # the one before it at the end of a batch (i-PI's padding, or the four identical beads
    # of the initial step) is evaluated once and its reply copied
    evaluated = re.search(r"5 requests, (\d+) structures", log)
    skipped = re.search(r"(\d+) repeated \(padding\) structures not evaluated", log)
    assert evaluated and skipped, log
    assert int(evaluated.group(1)) + int(skipped.group(1)) == 20 and int(skipped.group(1)) >= 3, log
    session.check_recorded_against_model("conservative", nbeads=4)


@pytest.mark.slow
def test_two_drivers_share_one_socket(session):
    a = session.driver("correction", log="driver_a.log")
    b = session.driver("correction", log="driver_b.log")
    # both drivers load the model and wait (retrying) before i-PI opens the socket, so
    # both are connected when the first step's 4 bead requests are handed out
    deadline = time.monotonic() + 60
    while not all("connecting to" in p.log_text() for p in (a, b)) and time.monotonic() < deadline:
        time.sleep(0.05)
    ipi = session.ipi(steps=20, beads=4)
    assert ipi.wait(90) == 0, ipi.log_text()[-2000:]
    assert a.wait(30) == 0 and b.wait(30) == 0
    served = []
    for proc in (a, b):
        summary = [ln for ln in proc.log_text().splitlines() if " requests, " in ln][-1]
        served.append(int(summary.split("ipi-nc driver: ")[1].split()[0]))
    assert sum(served) == 4 * 21 and min(served) > 0, served
    session.check_recorded_against_model("correction", nbeads=4)


def _com_drift_ang(session, prefix):
    frames = session.frames(f"{prefix}.pos_0.extxyz")
    masses = np.array([Elements.mass(s) for s in frames[0].get_chemical_symbols()])
    com = np.array([masses @ f.positions / masses.sum() for f in frames])
    return np.linalg.norm(com - com[0], axis=1)


@pytest.mark.slow
def test_remove_net_force_stops_centre_of_mass_drift(tmp_path, new_session):
    """Direct forces of the toy model (asymmetry 0.5) have a net force F_net; starting at
    rest without i-PI's fixcom, the centre of mass accelerates as F_net/M. With
    the driver's default (net force removed) the total force is zero, momentum is conserved
    and the COM stays; --no-remove-net-force serves the raw head."""
    sessions = {}
    try:
        for tag, extra in (("raw", ("--no-remove-net-force",)), ("removed", ())):
            (tmp_path / tag).mkdir()
            s = sessions[tag] = new_session(tmp_path / tag)
            s.model = save_model(PairToyModel(asymmetry=0.5), s.dir / "toy.pt")
            s.ipi(steps=40, dt_fs=1.0, fixcom=False, thermal_velocities=False)
            s.driver("direct", *extra)
        for s in sessions.values():
            assert s.procs[0].wait(90) == 0, s.procs[0].log_text()[-2000:]
            assert s.procs[1].wait(30) == 0
        raw = _com_drift_ang(sessions["raw"], "sim")
        removed = _com_drift_ang(sessions["removed"], "sim")
    finally:
        for s in sessions.values():
            s.close()
    # expected without removal: |F_net| / M * t^2 / 2 at t = 40 fs, F_net from the model at step 0
    frames = sessions["raw"].frames("sim.pos_0.extxyz")
    _, forces = sessions["raw"].model_prediction(frames[:1], "direct", remove_net_force=False)
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
    short_box = write_ipi_xyz(lattice_water_box(8)[:-3], bad / "short.xyz")  # 7 molecules, i-PI has 8
    nan_model = PairToyModel()
    nan_model.species_sign.fill_(float("nan"))  # direct head -> NaN
    nan_path = save_model(nan_model, bad / "nan.pt")
    huge_path = save_model(PairToyModel(eps_ev=1e7), bad / "huge.pt")

    ipi = session.ipi(steps=2)
    session.wait_for_socket(ipi)
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
        assert proc.wait(60) == 1, proc.log_text()
        errors = [ln for ln in proc.log_text().splitlines() if "error:" in ln]
        assert len(errors) == 1 and expected[key] in errors[0], proc.log_text()
        assert "not sent to i-PI" in errors[0] or key == "count"
    assert ipi.running()  # i-PI is still waiting for a driver
    good = session.driver("direct", log="good.log")
    assert ipi.wait(90) == 0, ipi.log_text()[-2000:]
    assert good.wait(30) == 0
    session.check_recorded_against_model("direct")


def test_ipi_killed_mid_run_stops_the_driver(session):
    ipi = session.ipi(steps=100000)
    driver = session.driver("direct")
    launch.wait_for_step(session.dir / "sim.out", 3, [ipi, driver])
    ipi.signal(signal.SIGKILL)
    ipi.wait(10)
    assert driver.wait(20) == 1  # no spinning: it notices the closed socket
    log = driver.log_text()
    # FIN (closed) or RST (reset), depending on what was in flight when i-PI died
    errors = [ln for ln in log.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "(i-PI killed or crashed?)" in errors[0], log
    assert " requests, " in log  # timing summary still printed


def _last_step(session) -> int:
    props, _ = session.properties()
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
    launch.wait_for_step(session.dir / "sim.out", 5, [ipi, first])
    first.signal(signal.SIGKILL)
    first.wait(10)
    time.sleep(0.5)
    stalled_at = _last_step(session)
    time.sleep(0.5)
    assert ipi.running() and _last_step(session) == stalled_at < 40  # waiting, not advancing

    second = session.driver("direct", log="second.log")
    assert ipi.wait(90) == 0, ipi.log_text()[-2000:]
    assert second.wait(30) == 0
    props, _ = session.properties()
    np.testing.assert_array_equal(props["step"], np.arange(41))  # every step once, in order
    session.check_recorded_against_model("direct")


def test_sigterm_exits_143_cleanly_and_a_new_driver_continues(session):
    """SIGTERM mid-run (default consolidated messages): exit code 143 with the timing
    summary, socket closed cleanly so i-PI keeps running and requeues for the next driver."""
    ipi = session.ipi(steps=30)
    first = session.driver("direct", log="first.log")
    launch.wait_for_step(session.dir / "sim.out", 3, [ipi, first])
    first.signal(signal.SIGTERM)
    assert first.wait(20) == 143
    log = first.log_text()
    assert "received SIGTERM, closing the socket" in log and " requests, " in log
    time.sleep(0.3)
    assert ipi.running() and _last_step(session) < 30

    second = session.driver("direct", log="second.log")
    assert ipi.wait(90) == 0, ipi.log_text()[-2000:]
    assert second.wait(30) == 0
    props, _ = session.properties()
    np.testing.assert_array_equal(props["step"], np.arange(31))
    session.check_recorded_against_model("direct")


def test_padded_batch_is_evaluated_once_per_distinct_structure():
    """i-PI 3.3.1 pads a short batch by repeating its last structure: those repeats are not
    evaluated again, yet every slot of the batch gets its reply (the repeated one's)."""
    import socket as socketlib
    import threading

    from ipi_ncforces.ipi_driver.client import IPIClient

    seen = []

    def evaluator(cells, positions):
        seen.append(len(positions))
        return [(float(p.sum()), -p, np.eye(3), "{}") for p in positions]

    ours, ipi_side = socketlib.socketpair()
    client = IPIClient(ours, evaluator)
    thread = threading.Thread(target=client.serve, daemon=True)
    thread.start()
    natoms, batch = 3, 4
    hdr = lambda text: text.ljust(12).encode()  # noqa: E731
    init = b"batch_size:4"
    ipi_side.sendall(hdr("INIT") + np.int32(0).tobytes() + np.int32(len(init)).tobytes() + init)
    rng = np.random.default_rng(0)
    real = [rng.standard_normal((natoms, 3)) for _ in range(2)]
    padded = real + [real[-1]] * (batch - len(real))
    cells = np.concatenate([np.concatenate([np.eye(3).ravel() * 10, np.eye(3).ravel() / 10]) for _ in padded])
    ipi_side.sendall(hdr("POSDATA") + np.int32(natoms).tobytes() + cells.tobytes()
                     + np.concatenate([p.ravel() for p in padded]).tobytes() + hdr("GETFORCE"))
    reply = b""
    size = 12 + 8 * batch + 4 + 8 * 3 * natoms * batch + 72 * batch + batch * (4 + 2)
    while len(reply) < size:
        reply += ipi_side.recv(size - len(reply))
    ipi_side.sendall(hdr("EXIT"))
    thread.join(5)
    assert reply[:12] == hdr("FORCEREADY")
    assert seen == [2]  # one call, the two distinct structures only
    energies = np.frombuffer(reply[12 : 12 + 8 * batch])
    np.testing.assert_allclose(energies, [p.sum() for p in padded])
    forces = np.frombuffer(reply[12 + 8 * batch + 4 : 12 + 8 * batch + 4 + 8 * 3 * natoms * batch]).reshape(batch, natoms, 3)
    np.testing.assert_allclose(forces, -np.array(padded))
    assert client.padding_skipped == 2
