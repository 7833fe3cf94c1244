"""inet sockets for real: separate ``ipi-nc driver`` processes on 127.0.0.1 ports.

* two drivers on one i-PI socket both get requests and the trajectory is complete, with
  the drivers started by hand and by ``ipi-nc run --drivers 2``;
* i-PI listens on the loopback interface only (the default host of inputs.make);
* a driver started before i-PI waits (bounded by --connect-timeout), then connects;
* a driver pointed at a port where nothing listens exits 1 with one clear error line,
  in bounded time;
* :func:`connect` itself: bounded retries, a host name that does not resolve fails at once.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from ipi_ncforces.inputs import make
from ipi_ncforces.ipi_driver import launch
from ipi_ncforces.ipi_driver.client import ConnectFailed, ConnectTimeout, connect

LOOPBACK = "127.0.0.1"
REQUESTS_RE = re.compile(r"(\d+) requests, (\d+) structures")


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick on the loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """IPv4 addresses (dotted) with a socket in LISTEN state on ``port``, from /proc/net/tcp."""
    found = set()
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        local_hex, port_hex = fields[1].split(":")
        if fields[3] == "0A" and int(port_hex, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(local_hex)[::-1]))  # little-endian on x86
    return found


def inet_variant(structure: Path, port: int, **changes) -> make.Variant:
    """Direct-force NVE (ring-polymer NVE with beads) on an inet socket at ``port``;
    properties (step, time fs) and bead-0 positions every step."""
    v = make.Variant(
        name="sim", forces="direct", sockets="inet", port=port, structure=str(structure), steps=5,
        seed=12345, safe_stride=100000,
        outputs=(
            make.Output("properties", "out", "[ step, time{femtosecond}, potential ]"),
            make.Output("trajectory", "pos", "positions", format="ase"),
        ),
    )
    return make.with_changes(v, **changes)


def driver_args(model: Path, structure: Path, port: int, timeout_s: float = 60.0, host: str = LOOPBACK) -> list:
    return ["--model", model, "--structure", structure, "--mode", "direct", "--address", host,
            "--port", str(port), "--connect-timeout", f"{timeout_s:g}"]


def served(driver: launch.Process) -> tuple[int, int]:
    """(requests, structures) from the driver's exit summary on stderr."""
    match = REQUESTS_RE.search(driver.log_text())
    assert match, driver.log_text()
    return int(match.group(1)), int(match.group(2))


def step_rows(path: Path) -> list[int]:
    return [int(float(ln.split()[0])) for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


@pytest.fixture
def procs():
    started: list[launch.Process] = []
    yield started
    launch.kill_processes(started)


def test_two_drivers_share_one_inet_socket_and_ipi_listens_on_loopback_only(tmp_path, box_file, toy_model_file, procs):
    """Ring-polymer NVE with 4 beads, one request per bead: i-PI hands requests to both
    drivers; every step and every bead is in the outputs; i-PI bound 127.0.0.1 (the
    default host 'localhost'), not all interfaces."""
    port, steps, beads = free_port(), 8, 4
    v = inet_variant(box_file, port, steps=steps, beads=beads, batch_size=1)
    assert v.host == "localhost"  # the default: no listening on all interfaces unless asked
    ipi = launch.start_ipi(make.write(v, tmp_path / "input.xml"), tmp_path)
    procs.append(ipi)
    launch.wait_for_sockets(ipi, [("inet", v.host, port)], timeout_s=60)
    assert listening_addresses(port) == {LOOPBACK}
    for k in range(2):
        procs.append(launch.start_driver(driver_args(toy_model_file, box_file, port), tmp_path, f"driver-{k}.log"))
    assert ipi.wait(120) == 0, ipi.log_tail(10)
    drivers = procs[1:]
    for d in drivers:
        assert d.wait(60) == 0, d.log_tail(5)
    counts = [served(d) for d in drivers]
    assert all(requests > 0 for requests, _ in counts), counts
    # one structure per request (batch_size 1); every bead at steps 0..steps at least once
    total = sum(structures for _, structures in counts)
    assert total >= beads * (steps + 1), counts
    assert step_rows(tmp_path / "sim.out") == list(range(steps + 1))
    for bead in range(beads):
        frames = (tmp_path / f"sim.pos_{bead}.extxyz").read_text().count("Lattice=")
        assert frames == steps + 1


def test_runner_serves_an_inet_socket_with_two_drivers(tmp_path, box_file, toy_model_file):
    """``ipi-nc run`` on an inet input (the multi-node layout on one machine): i-PI plus two
    driver processes on 127.0.0.1:PORT, both connect and end on i-PI's EXIT, every step is
    recorded. (That i-PI splits the requests between two drivers is checked with drivers
    started by the test, which waits until both are connected; here a driver that starts
    late on a loaded machine may find the 8 steps already done.)"""
    import subprocess
    import sys

    port, steps, beads = free_port(), 8, 4
    v = inet_variant(box_file, port, steps=steps, beads=beads, batch_size=1)
    xml = make.write(v, tmp_path / "input.xml")
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "ipi_ncforces.cli", "run", str(xml), "--model", str(toy_model_file),
         "--drivers", "2", "--workdir", str(run_dir), "--quiet"],
        capture_output=True, text=True, timeout=300, env=launch.thread_env(1),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    logs = sorted(run_dir.glob("driver-*.log"))
    assert len(logs) == 2, logs
    counts = []
    for log in logs:
        text = log.read_text()
        match = REQUESTS_RE.search(text)
        # a driver that only got its first connection attempt in after the run ended is
        # stopped by the runner and says so; any other ending is a failure
        assert match or "no requests served" in text, text
        counts.append(int(match.group(1)) if match else 0)
    assert sum(counts) >= beads * (steps + 1), counts
    assert step_rows(run_dir / "sim.out") == list(range(steps + 1))


def test_driver_started_before_ipi_waits_then_connects(tmp_path, box_file, toy_model_file, procs):
    port = free_port()
    driver = launch.start_driver(driver_args(toy_model_file, box_file, port, timeout_s=120), tmp_path)
    procs.append(driver)
    deadline = time.monotonic() + 60
    while "yet; retrying for up to 120 s" not in driver.log_text():
        assert driver.running(), driver.log_tail(5)
        assert time.monotonic() < deadline, "the driver never reported that it waits for i-PI"
        time.sleep(0.1)
    time.sleep(1.0)  # a few refused attempts
    assert driver.running(), driver.log_tail(5)
    ipi = launch.start_ipi(make.write(inet_variant(box_file, port), tmp_path / "input.xml"), tmp_path)
    procs.append(ipi)
    assert ipi.wait(120) == 0, ipi.log_tail(10)
    assert driver.wait(60) == 0, driver.log_tail(5)
    assert served(driver)[0] >= 6
    assert step_rows(tmp_path / "sim.out") == list(range(6))


def test_driver_at_a_wrong_port_fails_in_bounded_time_with_one_error_line(tmp_path, box_file, toy_model_file, procs):
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    driver = launch.start_driver(driver_args(toy_model_file, box_file, port, timeout_s=2), tmp_path)
    procs.append(driver)
    assert driver.wait(90) == 1
    elapsed_s = time.monotonic() - t0
    errors = [ln for ln in driver.log_text().splitlines() if "error" in ln.lower()]
    assert len(errors) == 1, driver.log_text()
    assert f"no i-PI server at inet socket {LOOPBACK}:{port} after 2 s" in errors[0]
    assert "--port" in errors[0]
    assert "Traceback" not in driver.log_text()
    assert elapsed_s < 60  # start-up (torch import, model load) plus the 2 s timeout


def test_connect_gives_up_after_its_timeout():
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(ConnectTimeout, match=f"{LOOPBACK}:{port} after 0.5 s"):
        connect(unix=False, address=LOOPBACK, port=port, timeout_s=0.5)
    assert 0.5 <= time.monotonic() - t0 < 5.0


def test_connect_fails_at_once_for_a_host_that_does_not_resolve_or_a_bad_port():
    t0 = time.monotonic()
    with pytest.raises(ConnectFailed, match="cannot resolve the i-PI host 'no-such-host.invalid'.*--address"):
        connect(unix=False, address="no-such-host.invalid", port=31415, timeout_s=30)
    assert time.monotonic() - t0 < 20  # no retrying for 30 s (only the resolver's own time)
    with pytest.raises(ConnectFailed, match="out of range"):
        connect(unix=False, address=LOOPBACK, port=70000, timeout_s=30)


def test_connect_reaches_a_server_that_starts_listening_later():
    """The retry loop in-process: a listener that appears after 0.5 s is reached, and the
    returned socket is blocking again (steps may take long)."""
    import threading

    port = free_port()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def listen_later() -> None:
        time.sleep(0.5)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((LOOPBACK, port))
        server.listen(1)

    thread = threading.Thread(target=listen_later)
    thread.start()
    try:
        sock = connect(unix=False, address=LOOPBACK, port=port, timeout_s=10, retry_interval_s=0.05)
        assert sock.gettimeout() is None
        assert sock.getpeername() == (LOOPBACK, port)
        sock.close()
    finally:
        thread.join()
        server.close()
