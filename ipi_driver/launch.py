"""Start i-PI and its drivers in a workdir, wait for sockets, follow progress, stop cleanly.

The one place that runs i-PI processes: ``ipi-nc run`` (runner), ``ipi-nc reference-data``,
the benchmarks and the end-to-end tests all use it::

    ipi = start_ipi(workdir / "input.xml", workdir)          # log: workdir/ipi.log
    wait_for_sockets(ipi, [("unix", "water-direct", 0)])
    driver = start_driver(["--model", "m.pt", ...], workdir, "driver-direct-0.log")
    StepFollower(workdir / "water.out").poll()                # last step written
    stop_run(ipi, [driver])                                   # SIGTERM, grace, SIGKILL

Every process gets explicit thread counts and stays in the caller's process group, so a
hard kill of the group (node failure, ``kill -9 -PGID``) takes i-PI and the drivers along
instead of leaving orphans that hold the sockets.

i-PI 3.3.1 behaviour handled here, in one place:

* SIGTERM (and SIGINT) is i-PI's *soft exit*: it finishes the step, writes ``RESTART`` and
  exits; it can take long with a slow driver, so :meth:`Process.stop` waits a grace period
  before SIGKILL.
* A killed i-PI leaves its unix socket file ``/tmp/ipi_<address>`` behind and a new i-PI
  then fails with "Error opening unix socket": :func:`clear_stale_socket` removes it when
  nobody listens on it.
* After the last step i-PI sends EXIT (the drivers exit 0) and only then writes its final
  files: :data:`IPI_EXIT_GRACE_S` is how long that may take.
* inet sockets are probed in ``/proc/net/tcp*`` (LISTEN state), never by connecting: i-PI
  would take a probe connection for a driver.
* A driver killed by SIGKILL resets its connection; with i-PI's default
  ``consolidate_messages`` the polling thread dies on the reset and i-PI hangs. Inputs
  that must survive a driver kill set ``consolidate_messages`` false
  (``ipi_ncforces.inputs.make.Variant.consolidate_messages``), then a new driver continues.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SOCKETS_PREFIX = "/tmp/ipi_"  # i-PI's default <simulation sockets_prefix>
IPI_EXIT_GRACE_S = 60.0  # seconds i-PI may take to write its last files after sending EXIT
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): ")  # a traceback's last line


class LaunchError(RuntimeError):
    """A process could not be started or did not do what it should; one-line message."""


def find_executable(name: str) -> str:
    """Path of a console script (``i-pi``, ``i-pi-py_driver``): next to this Python (the
    venv), else on PATH; LaunchError otherwise."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise LaunchError(f"'{name}' was found neither next to {sys.executable} nor on PATH: pip install ipi")
    return found


def thread_env(threads: int = 1) -> dict[str, str]:
    """This environment with ``threads`` OpenMP/MKL/OpenBLAS threads (torch's intra-op pool
    follows OMP_NUM_THREADS) and unbuffered Python output for live logs."""
    return {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}, "PYTHONUNBUFFERED": "1"}


@dataclass
class Process:
    """A started child: its label, Popen handle and log file (stdout + stderr)."""

    label: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def returncode(self) -> int | None:  # None while it runs
        return self.popen.poll()

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def log_tail(self, lines: int = 3) -> str:
        """The last Python exception line of the log (``ForceError: ...``, module path dropped), or
        else its last non-empty lines joined by ' | ' (for one-line error messages)."""
        kept = [ln.strip() for ln in self.log_text().splitlines() if ln.strip()]
        raised = [ln for ln in kept if _EXCEPTION_LINE.match(ln)]
        if raised:
            name, message = raised[-1].split(":", 1)
            return name.rsplit(".", 1)[-1] + ":" + message
        return " | ".join(kept[-lines:])

    def wait(self, timeout_s: float | None = None) -> int:
        """Exit code; TimeoutError naming the process and its log tail if still running."""
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"{self.label} still running after {timeout_s:g} s: {self.log_tail(5)} (see {self.log_path})"
            ) from None

    def signal(self, signum: int) -> None:
        """Send ``signum`` if the process still runs."""
        if self.running():
            self.popen.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL and reap."""
        self.signal(signal.SIGKILL)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM (for i-PI: soft exit, writes RESTART), then SIGKILL after ``grace_s``."""
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.kill()
        return self.popen.poll()


def start_process(cmd: list, workdir: str | Path, log_name: str, threads: int = 1, label: str = "") -> Process:
    """Start ``cmd`` in ``workdir`` with ``threads`` threads, stdout+stderr to workdir/log_name."""
    log_path = Path(workdir) / log_name
    with open(log_path, "ab") as log:
        popen = subprocess.Popen([str(c) for c in cmd], cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=thread_env(threads))
    return Process(label or Path(str(cmd[0])).name, popen, log_path)


def start_ipi(xml: str | Path, workdir: str | Path, log_name: str = "ipi.log", threads: int = 1) -> Process:
    """Start ``i-pi XML`` in ``workdir`` (its outputs land there). ``threads`` matter for
    ``<ffdirect>``, whose model runs inside i-PI."""
    relative = os.path.relpath(Path(xml).resolve(), Path(workdir).resolve())  # short, as `i-pi input.xml`
    return start_process([find_executable("i-pi"), relative], workdir, log_name, threads, "i-PI")


def driver_command(args: list) -> list[str]:
    """Command line of ``ipi-nc driver ARGS`` with this Python (no console script needed)."""
    return [sys.executable, "-m", "ipi_ncforces.cli", "driver", *map(str, args)]


def start_driver(args: list, workdir: str | Path, log_name: str = "driver.log", threads: int = 1) -> Process:
    """Start ``ipi-nc driver ARGS`` in ``workdir``."""
    label = "driver " + Path(log_name).stem
    return start_process(driver_command(args), workdir, log_name, threads, label)


# ----------------------------------------------------------------------------- sockets


def unique_address(tag: str = "run") -> str:
    """A unix socket address no other run on this machine uses at the same time."""
    return f"ncf-{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def socket_path(address: str, prefix: str = DEFAULT_SOCKETS_PREFIX) -> Path:
    """The file of i-PI's unix socket ``address``."""
    return Path(prefix + address)


def clear_stale_socket(address: str, prefix: str = DEFAULT_SOCKETS_PREFIX) -> None:
    """Remove a unix socket file left over by a killed i-PI; LaunchError if a server answers on it."""
    path = socket_path(address, prefix)
    if path.exists():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(str(path)) == 0:
                raise LaunchError(f"unix socket '{path}' is in use by another run: change the run name / <address>")
        path.unlink()


def inet_listening(port: int) -> bool:
    """True when a TCP socket listens on ``port`` (any address), read from /proc/net/tcp*."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                return True
    return False


def wait_for_sockets(
    ipi: Process, sockets: list[tuple[str, str, int]], timeout_s: float = 120.0,
    prefix: str = DEFAULT_SOCKETS_PREFIX, should_stop=lambda: False,
) -> None:
    """Block until i-PI listens on every (mode, address, port); mode 'unix' or 'inet'.
    LaunchError if i-PI exits first, ``timeout_s`` passes or ``should_stop()`` says so."""
    deadline = time.monotonic() + timeout_s
    for mode, address, port in sockets:
        ready = (lambda: socket_path(address, prefix).exists()) if mode == "unix" else (lambda: inet_listening(port))
        where = str(socket_path(address, prefix)) if mode == "unix" else f"{address}:{port}"
        while not ready():
            if not ipi.running():
                raise LaunchError(f"i-PI exited (code {ipi.returncode}) before opening its sockets: {ipi.log_tail()}")
            if time.monotonic() > deadline or should_stop():
                raise LaunchError(f"i-PI did not open socket '{where}' within {timeout_s:g} s")
            if mode == "inet" and not Path("/proc/net/tcp").exists():
                break  # no way to look: the drivers retry until i-PI listens (--connect-timeout)
            time.sleep(0.05)


# ----------------------------------------------------------------------------- progress


class StepFollower:
    """The last step in an i-PI properties file, read incrementally as the file grows.

    The step column is found from the ``# column N --> step`` header (column 1 if none).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offset = 0
        self.step = -1  # no row yet
        self.column = 0

    def poll(self) -> int:
        """Read what was appended since the last call; returns the last step seen (-1: none)."""
        if not self.path.is_file():
            return self.step
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a row being written is read next time
        self.offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            if line.startswith("#"):
                if "--> step" in line:
                    self.column = int(line.split("column")[1].split("-->")[0]) - 1
            elif line.strip():
                self.step = int(float(line.split()[self.column]))
        return self.step


def wait_for_step(properties: str | Path, step: int, processes: list[Process], timeout_s: float = 60.0) -> None:
    """Block until the properties file holds ``step``; LaunchError if a process exits first,
    TimeoutError after ``timeout_s``."""
    follower = StepFollower(properties)
    deadline = time.monotonic() + timeout_s
    while follower.poll() < step:
        for proc in processes:
            if not proc.running():
                raise LaunchError(f"{proc.label} exited (code {proc.returncode}) early: {proc.log_tail(5)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"step {step} not reached in {properties} within {timeout_s:g} s")
        time.sleep(0.05)


# ----------------------------------------------------------------------------- shutdown


def stop_run(ipi: Process | None, drivers: list[Process], ipi_grace_s: float = 30.0, driver_grace_s: float = 10.0) -> None:
    """Stop a run: i-PI first (SIGTERM = soft exit writing RESTART, while its drivers still
    serve it), then the drivers; SIGKILL whatever outlives its grace (seconds)."""
    if ipi is not None:
        ipi.stop(ipi_grace_s)
    for proc in drivers:
        proc.signal(signal.SIGTERM)
    deadline = time.monotonic() + driver_grace_s
    for proc in drivers:
        try:
            proc.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()


def kill_processes(processes: list[Process | None], unix_addresses: tuple[str, ...] = ()) -> None:
    """SIGKILL every process still running (no soft exit) and remove the socket files."""
    for proc in processes:
        if proc is not None:
            proc.kill()
    for address in unix_addresses:
        socket_path(address).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- job pool


@dataclass
class Job:
    """One run of a :func:`run_jobs` pool: ``start()`` returns the started Process,
    ``succeeded()`` (after exit code 0) says whether it produced what it should;
    ``steps`` / ``steps_done()`` (optional) feed the progress line."""

    name: str
    start: object  # () -> Process
    succeeded: object = None  # () -> bool; None: exit code 0 is enough
    steps: int = 0
    steps_done: object = None  # () -> int


def run_jobs(jobs: list[Job], parallel: int = 2, label: str = "runs", on_done=None, log=print,
             progress_every_s: float = 60.0, poll_s: float = 1.0) -> None:
    """Run ``jobs`` at most ``parallel`` at a time. Every ``progress_every_s`` one line with
    steps done, steps/s and an ETA; ``on_done(job)`` after each success. On the first failure,
    an interrupt (Ctrl-C) or any error, the running processes are stopped (SIGTERM: i-PI
    writes its RESTART) and the error propagates: RuntimeError naming the failed job's log;
    SIGTERM becomes SystemExit(143) while the pool runs, so a killed pool leaves no orphans."""
    pending = list(jobs)
    running: list[tuple[Job, Process]] = []
    t0 = last = time.monotonic()

    def terminated(signum, frame):  # SIGTERM (kill, batch systems): stop the children too
        raise SystemExit(128 + signum)

    in_main = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, terminated) if in_main else None
    total = sum(j.steps for j in jobs)
    finished_steps = 0
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                running.append((job, job.start()))
            time.sleep(poll_s)
            for item in list(running):
                job, proc = item
                if proc.running():
                    continue
                running.remove(item)
                if proc.returncode != 0 or (job.succeeded is not None and not job.succeeded()):
                    raise RuntimeError(f"{job.name} failed (exit {proc.returncode}; see {proc.log_path}): "
                                       f"{proc.log_tail(3)}")
                finished_steps += job.steps
                log(f"[{label}] {job.name} done ({time.monotonic() - t0:.0f} s)")
                if on_done is not None:
                    on_done(job)
            now = time.monotonic()
            if total and running and now - last > progress_every_s:
                last = now
                done = finished_steps + sum(max(0, j.steps_done()) for j, _ in running if j.steps_done)
                rate = done / (now - t0)
                eta = f", ETA {(total - done) / rate / 60:.0f} min" if rate > 0 else ""
                log(f"[{label}] {done}/{total} steps, {rate:.1f} steps/s{eta}")
    finally:
        for _, proc in running:
            proc.stop()
        if in_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
