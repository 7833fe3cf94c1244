"""The i-PI socket client: connect, answer STATUS, take INIT/POSDATA, send forces, obey EXIT.

Why our own loop and not i-PI's: in i-PI 3.3.1 ``run_driver`` lives only in the
``i-pi-py_driver`` script (not importable); it spins forever when the server
disappears (``recv`` returns ``b''`` and no branch matches that header); it has no
connect retry or timeout and no signal handling. A driver started by a batch script
next to i-PI needs all three, so this module implements the (small) protocol itself.
:mod:`ipi_ncforces.ipi_driver.pes` stays the way to use i-PI's stock client (shared memory, MPI)
and ``<ffdirect>``; both paths share :class:`ipi_ncforces.ipi_driver.evaluator.ForceEvaluator`.

Wire protocol (as in ``ipi/interfaces/sockets.py`` 3.3.1; 12-byte upper-case,
space-padded headers; native-endian int32 and float64; atomic units):

* ``STATUS`` -> reply ``NEEDINIT`` (before INIT), ``HAVEDATA`` (forces ready) or ``READY``.
* ``INIT``: int32 replica id, int32 length, that many bytes of parameters. A
  ``batch_size:N`` token (comma-separated) switches to the batched protocol.
* ``POSDATA`` single: cell h (9 f64, lattice vectors as columns, Bohr), inverse cell
  (9 f64), int32 natoms, positions (3*natoms f64, Bohr).
  ``POSDATA`` batched: int32 natoms, N blocks of (h, h^-1) (N*18 f64), positions
  (N*3*natoms f64). i-PI pads a short batch by repeating the last structure.
* ``GETFORCE`` -> ``FORCEREADY`` then single: energy (f64, Ha), int32 natoms, forces
  (3*natoms f64, Ha/Bohr), virial (9 f64, Ha), int32 length + extras string;
  batched: N energies, int32 natoms, N*3*natoms forces, N*9 virials, then N times
  (int32 length + extras string).
* ``EXIT``: leave the loop (exit code 0).

A batched POSDATA is evaluated as ONE call of the evaluator. Unix sockets live at
``sockets_prefix + address`` (i-PI's default prefix ``/tmp/ipi_``); inet sockets use
TCP_NODELAY because the protocol is many small messages.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable
from typing import TextIO

import numpy as np

HDRLEN = 12

Reply = tuple[float, np.ndarray, np.ndarray, str]
Evaluator = Callable[[list[np.ndarray], list[np.ndarray]], list[Reply]]


def _header(text: str) -> bytes:
    return text.upper().ljust(HDRLEN).encode()


STATUS, NEEDINIT, READY, HAVEDATA = (_header(h) for h in ("STATUS", "NEEDINIT", "READY", "HAVEDATA"))
INIT, POSDATA, GETFORCE, FORCEREADY, EXIT = (
    _header(h) for h in ("INIT", "POSDATA", "GETFORCE", "FORCEREADY", "EXIT")
)


class ServerGone(ConnectionError):
    """i-PI closed the connection (or died) without sending EXIT."""


class ConnectFailed(ConnectionError):
    """No connection to i-PI could be made (a host name that does not resolve, an error
    that waiting cannot fix, or no server within the connect timeout)."""


class ConnectTimeout(ConnectFailed):
    """No i-PI server accepted the connection within the connect timeout."""


class ProtocolError(RuntimeError):
    """i-PI sent something this client does not understand."""


class StopRequested(Exception):
    """:meth:`IPIClient.request_stop` was honoured at an idle point of the loop."""


def socket_description(unix: bool, address: str, port: int, sockets_prefix: str) -> str:
    return f"unix socket {sockets_prefix}{address}" if unix else f"inet socket {address}:{port}"


# errors that mean "no server there yet": retried until the connect timeout
_RETRY_ERRNOS = frozenset(
    {errno.ENOENT, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET,
     errno.ECONNABORTED, errno.EAGAIN}
)


def connect(
    *,
    unix: bool,
    address: str,
    port: int = 0,
    sockets_prefix: str = "/tmp/ipi_",
    timeout_s: float = 60.0,
    retry_interval_s: float = 0.1,
    log: TextIO | None = None,
) -> socket.socket:
    """Connect to i-PI at exactly ``address`` (unix: ``sockets_prefix + address``; inet:
    ``(address, port)``, no other host is ever tried), retrying while the server is not up
    yet (missing socket file, connection refused, unreachable) for up to ``timeout_s``
    seconds; ConnectTimeout afterwards. Each attempt is itself bounded by the time left,
    so a host that drops packets cannot stall the driver past ``timeout_s``. A host name
    that does not resolve, or another error that waiting cannot fix, raises
    ConnectFailed at once. With ``log``, one line says when the driver starts waiting."""
    where = socket_description(unix, address, port, sockets_prefix)
    deadline = time.monotonic() + max(float(timeout_s), 0.0)
    if not unix and not 0 < int(port) < 65536:
        raise ConnectFailed(f"TCP port {port} of {where} is out of range 1-65535 (--port)")
    waiting_said = False
    while True:
        if unix:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: str | tuple[str, int] = sockets_prefix + address
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            target = (address, int(port))
        try:
            sock.settimeout(max(deadline - time.monotonic(), retry_interval_s))
            sock.connect(target)
            sock.settimeout(None)  # blocking again: a step may take long on a big system
            return sock
        except socket.gaierror as exc:
            sock.close()
            raise ConnectFailed(
                f"cannot resolve the i-PI host '{address}' ({exc.strerror}); check --address"
            ) from None
        except (socket.timeout, OSError) as exc:
            sock.close()
            if not isinstance(exc, socket.timeout) and exc.errno not in _RETRY_ERRNOS:
                raise ConnectFailed(f"cannot connect to {where}: {exc.strerror or exc}") from None
            if time.monotonic() >= deadline:
                raise ConnectTimeout(
                    f"no i-PI server at {where} after {timeout_s:g} s ({type(exc).__name__}); "
                    "start i-pi first, check --address/--port/--sockets-prefix or raise --connect-timeout"
                ) from None
            if log is not None and not waiting_said:
                print(f"ipi-nc driver: no i-PI server at {where} yet; retrying for up to {timeout_s:g} s", file=log)
                waiting_said = True
            time.sleep(min(retry_interval_s, max(deadline - time.monotonic(), 0.0)))
        except BaseException:
            sock.close()
            raise


def parse_batch_size(init_text: str) -> int:
    """The ``batch_size:N`` token of i-PI's INIT string (1 when absent)."""
    for token in init_text.split(","):
        key, sep, value = token.partition(":")
        if sep and key.strip() == "batch_size":
            try:
                return max(int(value.strip()), 1)
            except ValueError:
                raise ProtocolError(f"i-PI sent a malformed batch size in INIT: '{token.strip()}'") from None
    return 1


class IPIClient:
    """Serve ``evaluator(cells_bohr, positions_bohr) -> [(E Ha, F Ha/Bohr, W Ha, extras)]``
    over a connected socket until i-PI sends EXIT.

    Attributes after :meth:`serve`: ``requests`` (POSDATA messages answered),
    ``structures`` (structures evaluated, batch padding included), ``batch_size``
    (from INIT), ``replica_id`` (from INIT).
    """

    def __init__(self, sock: socket.socket, evaluator: Evaluator, log: TextIO | None = None):
        self.sock = sock
        self.evaluator = evaluator
        self.log = log
        self.batch_size = 1
        self.replica_id: int | None = None
        self.requests = 0
        self.structures = 0
        self._initialized = False
        self._results: list[Reply] | None = None
        self._natoms = 0
        self._pending = bytearray()  # bytes already taken off the socket, not yet parsed
        self._stop_requested = False
        self._idle = False
        # seconds per answered request: waiting for i-PI (from our reply to its next
        # POSDATA: i-PI's own step, the other forcefield, the socket) and our own socket I/O
        # (reading the positions, packing and sending the forces)
        self.wait_s: list[float] = []
        self.io_s: list[float] = []
        self._replied_at: float | None = None
        self.padding_skipped = 0  # structures of batches that repeat the one before (i-PI's padding): not evaluated

    def request_stop(self) -> bool:
        """Ask the loop to stop at its next idle point (no request in flight, nothing
        unread), raising StopRequested there. Returns True when it is idle right now, so
        a signal handler may raise at once. Stopping only when idle matters: i-PI 3.3.1
        spins forever if a driver closes the socket while i-PI waits for FORCEREADY with
        consolidate_messages off, and its poller dies on a reset with it on."""
        self._stop_requested = True
        return self._idle

    # -- low-level I/O -------------------------------------------------------
    def _recv_exact(self, nbytes: int) -> bytearray:
        buf = bytearray(nbytes)
        view = memoryview(buf)
        got = min(len(self._pending), nbytes)
        if got:
            view[:got] = self._pending[:got]
            del self._pending[:got]
        while got < nbytes:
            try:
                n = self.sock.recv_into(view[got:], nbytes - got)
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise ServerGone(f"i-PI reset the connection ({exc.strerror})") from None
            if n == 0:
                raise ServerGone("i-PI closed the connection without sending EXIT")
            got += n
        return buf

    def _recv_array(self, dtype: str, count: int) -> np.ndarray:
        itemsize = np.dtype(dtype).itemsize
        return np.frombuffer(self._recv_exact(itemsize * count), dtype=dtype, count=count)

    def _drain_available(self) -> None:
        """Move whatever i-PI already sent (e.g. the GETFORCE that 3.3.1 glues to POSDATA)
        from the kernel buffer into ``_pending``. A socket closed with unread bytes is
        reset (RST) instead of closed (FIN), and i-PI 3.3.1's polling thread dies on a
        reset; with an empty buffer, a driver killed even by SIGKILL while it evaluates
        makes i-PI see a clean disconnect and requeue the request."""
        while True:
            try:
                chunk = self.sock.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # a broken connection is reported by the next blocking read
            if not chunk:
                return
            self._pending += chunk

    def close(self) -> None:
        """Close the connection so that i-PI sees a clean disconnect (see _drain_available)."""
        self._drain_available()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _send(self, payload: bytes) -> None:
        try:
            self.sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ServerGone(f"i-PI went away while we were sending ({exc.strerror})") from None

    # -- protocol ------------------------------------------------------------
    def serve(self) -> None:
        """Answer i-PI until EXIT (returns) or an error (raises ServerGone,
        ProtocolError, or whatever the evaluator raises; nothing is sent then)."""
        while True:
            idle = self._results is None and not self._pending
            if self._stop_requested and idle:
                raise StopRequested()
            self._idle = idle
            try:
                header = bytes(self._recv_exact(HDRLEN))
            finally:
                self._idle = False
            if header == STATUS:
                if not self._initialized:
                    self._send(NEEDINIT)
                elif self._results is not None:
                    self._send(HAVEDATA)
                else:
                    self._send(READY)
            elif header == INIT:
                self._receive_init()
            elif header == POSDATA:
                t0 = time.perf_counter()
                if self._replied_at is not None:
                    self.wait_s.append(t0 - self._replied_at)
                self._receive_positions(t0)
            elif header == GETFORCE:
                t0 = time.perf_counter()
                self._send_forces()
                self._replied_at = time.perf_counter()
                if self.io_s:
                    self.io_s[-1] += self._replied_at - t0
            elif header == EXIT:
                return
            else:
                raise ProtocolError(f"unexpected message from i-PI: {header!r}")

    def _receive_init(self) -> None:
        self.replica_id = int(self._recv_array("i4", 1)[0])
        length = int(self._recv_array("i4", 1)[0])
        text = bytes(self._recv_exact(length)).decode("utf-8", errors="replace") if length > 0 else ""
        previous, self.batch_size = self.batch_size, parse_batch_size(text)
        self._initialized = True
        if self.log is not None and self.batch_size > 1 and self.batch_size != previous:
            print(f"ipi-nc driver: i-PI sends batches of {self.batch_size} structures", file=self.log)

    def timing_summary(self) -> str:
        """One line: requests, median wait for i-PI and median socket I/O per request (ms)."""
        if not self.io_s:
            return "socket: no requests answered"
        wait = f"{1e3 * float(np.median(self.wait_s)):.3f}" if self.wait_s else "-"
        padding = f"; {self.padding_skipped} repeated (padding) structures not evaluated" if self.batch_size > 1 else ""
        return (
            f"socket: {len(self.io_s)} requests; per request: median wait for i-PI {wait} ms "
            f"(reply sent -> next positions), median socket I/O {1e3 * float(np.median(self.io_s)):.3f} ms{padding}"
        )

    def _receive_positions(self, t0: float | None = None) -> None:
        if self.batch_size > 1:
            natoms = int(self._recv_array("i4", 1)[0])
            n = self.batch_size
            cells = self._recv_array("f8", 18 * n).reshape(n, 18)
            positions = self._recv_array("f8", 3 * natoms * n).reshape(n, natoms, 3)
            # i-PI 3.3.1 dispatches whatever beads are queued when its poll thread wakes
            # (every <latency> s), so one PIMD step often arrives as several batches, each
            # padded to batch_size by repeating its last structure: evaluate each distinct
            # trailing structure once (measured: 32 beads split into 2-4 batches per step)
            n_real = n
            while n_real > 1 and np.array_equal(positions[n_real - 1], positions[n_real - 2]) and np.array_equal(
                cells[n_real - 1], cells[n_real - 2]
            ):
                n_real -= 1
            self.padding_skipped += n - n_real
            cell_list = [cells[b, :9].reshape(3, 3) for b in range(n_real)]
            pos_list = [positions[b] for b in range(n_real)]
        else:
            cell = self._recv_array("f8", 9).reshape(3, 3)
            self._recv_array("f8", 9)  # inverse cell: not needed
            natoms = int(self._recv_array("i4", 1)[0])
            cell_list = [cell]
            pos_list = [self._recv_array("f8", 3 * natoms).reshape(natoms, 3)]
        self._drain_available()
        self.requests += 1
        if t0 is not None:
            self.io_s.append(time.perf_counter() - t0)
        results = self.evaluator(cell_list, pos_list)
        if len(results) != len(pos_list):
            raise ProtocolError(f"evaluator returned {len(results)} results for {len(pos_list)} structures")
        if self.batch_size > 1:
            results = list(results) + [results[-1]] * (self.batch_size - len(results))  # the padding's replies
        self.structures += len(results)
        self._natoms = natoms
        self._results = results

    def _send_forces(self) -> None:
        if self._results is None:
            raise ProtocolError("i-PI asked for forces before sending positions")
        results, natoms = self._results, self._natoms
        energies = np.array([r[0] for r in results], dtype=np.float64)
        forces = np.stack([np.asarray(r[1], dtype=np.float64).reshape(3 * natoms) for r in results])
        virials = np.stack([np.asarray(r[2], dtype=np.float64).reshape(9) for r in results])
        extras = [r[3].encode("utf-8") for r in results]
        nat = np.int32(natoms).tobytes()
        if self.batch_size > 1:
            parts = [FORCEREADY, energies.tobytes(), nat, forces.tobytes(), virials.tobytes()]
            for extra in extras:
                parts += [np.int32(len(extra)).tobytes(), extra]
        else:
            parts = [
                FORCEREADY,
                energies[:1].tobytes(),
                nat,
                forces[0].tobytes(),
                virials[0].tobytes(),
                np.int32(len(extras[0])).tobytes(),
                extras[0],
            ]
        self._send(b"".join(parts))
        self._results = None
