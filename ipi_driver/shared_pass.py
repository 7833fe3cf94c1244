"""One driver process for both sockets of an MTS run: the conservative (outer) socket and
the direct (inner) socket share the model's backbone pass.

In an MTS run (``cons`` mts_weights [1, 0], ``direct`` [-1, 1]) i-PI asks both sockets
for forces at the same positions at every outer step. Two driver processes run the
backbone twice there; here the conservative thread evaluates BOTH heads in one pass
(:meth:`ForceEvaluator.call_with_direct`) and leaves the direct replies in a
:class:`SharedDirectCache` keyed by the exact bytes i-PI sent (cells + positions). The
direct thread answers a request from the cache when it is there, waits when the
conservative thread has those positions in flight, and otherwise (inner steps)
evaluates the direct head itself. Because i-PI asks the direct socket first at the end
of each outer step, the direct thread also learns the outer period and runs the
both-heads pass itself there, leaving the conservative replies for the other thread
(see :class:`SharedPass`). Model calls are serialized by one lock.

The direct replies are those of ``ipi-nc driver --mode direct``: same units, energy
from the energy head, same extras keys, same checks, same net-force removal.
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from ipi_ncforces.ipi_driver.client import IPIClient, StopRequested, connect, socket_description
from ipi_ncforces.ipi_driver.evaluator import ForceError, ForceEvaluator
from ipi_ncforces.ipi_driver.setup import SetupError, build_evaluator, default_skin_ang
from ipi_ncforces.models.modes import CONSERVATIVE, DIRECT

MAX_CACHED = 256  # direct replies kept for the direct socket (>= beads per step; oldest dropped)

# In-process PES instances (ipi_driver/pes.py under <ffdirect>) by what they load. i-PI
# executes the PES file afresh for every <ffdirect>, so the registry lives here, in an
# imported module: the second forcefield of an MTS pair finds the first and shares its
# model and backbone pass (NCForcesDriver._pair_with).
IN_PROCESS_PES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def request_key(cells_bohr: list[np.ndarray], positions_bohr: list[np.ndarray]) -> bytes:
    """The exact bytes of a request (cells then positions, float64 Bohr, as i-PI sent them)."""
    parts = [np.ascontiguousarray(c, dtype=np.float64).tobytes() for c in cells_bohr]
    parts += [np.ascontiguousarray(p, dtype=np.float64).tobytes() for p in positions_bohr]
    return b"".join(parts)


class SharedDirectCache:
    """Replies computed by one socket's thread for the other socket, handed over once."""

    def __init__(self, max_entries: int = MAX_CACHED):
        self._cond = threading.Condition()
        self._entries: OrderedDict[bytes, list | ForceError] = OrderedDict()
        self._in_flight: dict[bytes, int] = {}
        self.max_entries = max_entries

    def begin(self, key: bytes) -> None:
        """This thread received these positions and will publish the other socket's replies."""
        with self._cond:
            self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def _end(self, key: bytes) -> None:
        count = self._in_flight.pop(key) - 1
        if count:
            self._in_flight[key] = count

    def publish(self, key: bytes, replies: list | ForceError) -> None:
        with self._cond:
            self._end(key)
            self._entries[key] = replies
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            self._cond.notify_all()

    def abandon(self, key: bytes) -> None:
        """The pass failed: the other thread must not wait for it."""
        with self._cond:
            self._end(key)
            self._cond.notify_all()

    def take(self, key: bytes) -> list | ForceError | None:
        """The replies for ``key`` (removed from the cache), waiting while they are in
        flight; None when the other thread neither has nor is computing them."""
        with self._cond:
            while key in self._in_flight:
                self._cond.wait()
            return self._entries.pop(key, None)


class SharedPass:
    """The two evaluator callables (conservative socket, direct socket) on one model.

    Which socket asks first at a shared position depends on the integrator: i-PI asks
    the conservative socket first only at the very first step; at the end of every outer
    step the last inner kick asks the direct socket for the new positions BEFORE the
    outer kick asks the conservative socket. So the direct side learns the period: it
    numbers its requests, notes which ones the conservative socket asked for too, and
    when the next one is due (same distance as between the last two) it evaluates both
    heads in one pass and leaves the conservative replies for the conservative thread.
    """

    HISTORY = 1024  # direct request keys remembered to spot the shared ones

    def __init__(self, conservative: ForceEvaluator, direct: ForceEvaluator):
        self.conservative_evaluator = conservative
        self.direct_evaluator = direct
        self.for_direct = SharedDirectCache()  # direct replies from conservative-thread passes
        self.for_conservative = SharedDirectCache()  # conservative replies from direct-thread passes
        self.model_lock = threading.Lock()
        self._lock = threading.Lock()
        self._direct_seen: OrderedDict[bytes, int] = OrderedDict()  # key -> direct request number
        self._shared_numbers: list[int] = []  # direct request numbers also asked on the conservative socket
        self.conservative_requests = 0
        self.conservative_from_shared = 0
        self.direct_requests = 0
        self.direct_from_shared = 0  # direct replies that came out of a both-heads pass

    def _both(self, cells_bohr: list[np.ndarray], positions_bohr: list[np.ndarray]) -> tuple:
        with self.model_lock:
            return self.conservative_evaluator.call_with_direct(cells_bohr, positions_bohr, self.direct_evaluator)

    def _note_shared(self, number: int) -> None:
        with self._lock:
            if not self._shared_numbers or self._shared_numbers[-1] != number:
                self._shared_numbers.append(number)
                del self._shared_numbers[:-2]

    def _outer_step_due(self, number: int) -> bool:
        with self._lock:
            if len(self._shared_numbers) < 2:
                return False
            period = self._shared_numbers[-1] - self._shared_numbers[-2]
            return period > 0 and number - self._shared_numbers[-1] == period

    def conservative(self, cells_bohr: list[np.ndarray], positions_bohr: list[np.ndarray]) -> list:
        key = request_key(cells_bohr, positions_bohr)
        self.conservative_requests += 1
        with self._lock:
            number = self._direct_seen.get(key)
        if number is not None:
            self._note_shared(number)
        shared = self.for_conservative.take(key)
        if shared is not None:
            self.conservative_from_shared += 1
        else:
            self.for_direct.begin(key)  # registered before computing: the direct thread waits for it
            try:
                shared, direct_replies = self._both(cells_bohr, positions_bohr)
            except BaseException:
                self.for_direct.abandon(key)
                raise
            self.for_direct.publish(key, direct_replies)
        if isinstance(shared, ForceError):
            raise shared
        return shared

    def direct(self, cells_bohr: list[np.ndarray], positions_bohr: list[np.ndarray]) -> list:
        key = request_key(cells_bohr, positions_bohr)
        self.direct_requests += 1
        number = self.direct_requests
        with self._lock:
            self._direct_seen[key] = number
            while len(self._direct_seen) > self.HISTORY:
                self._direct_seen.popitem(last=False)
        shared = self.for_direct.take(key)
        if shared is not None:
            self._note_shared(number)
        elif self._outer_step_due(number):
            self.for_conservative.begin(key)
            try:
                cons_replies, shared = self._both(cells_bohr, positions_bohr)
            except BaseException:
                self.for_conservative.abandon(key)
                raise
            self.for_conservative.publish(key, cons_replies)
        else:
            with self.model_lock:
                return self.direct_evaluator(cells_bohr, positions_bohr)
        self.direct_from_shared += 1
        if isinstance(shared, ForceError):
            raise shared
        return shared

    def summary(self) -> str:
        return (
            f"both-heads passes: {self.conservative_evaluator.timings.summary()}\n"
            f"conservative socket: {self.conservative_requests} requests, {self.conservative_from_shared} answered "
            f"from a pass started by the direct socket\n"
            f"direct socket: {self.direct_requests} requests, {self.direct_from_shared} served from the shared pass; "
            f"direct-only passes: {self.direct_evaluator.timings.summary()}"
        )


def build_shared_pass(
    *,
    model_path: str,
    structure_path: str,
    device: str = "cpu",
    dtype: str | None = None,
    remove_net_force: bool = True,
    extras_other_head: bool = False,
    neighbor_skin_ang: float | None = None,
    variant: str | None = None,
    extensions_directory: str | None = None,
    check_consistency: bool = False,
) -> SharedPass:
    """Load the model once; a conservative and a direct evaluator on it (SetupError if the
    model lacks the direct head or anything else is wrong, one line)."""
    skin = default_skin_ang(device) if neighbor_skin_ang is None else neighbor_skin_ang
    conservative = build_evaluator(
        model_path=model_path,
        structure_path=structure_path,
        mode=CONSERVATIVE,
        device=device,
        dtype=dtype,
        remove_net_force=remove_net_force,
        extras_other_head=extras_other_head,
        neighbor_skin_ang=skin,
        variant=variant,
        extensions_directory=extensions_directory,
        check_consistency=check_consistency,
    )
    try:
        direct = ForceEvaluator(
            conservative.backend,
            conservative.species.cpu().numpy(),
            DIRECT,
            remove_net_force=remove_net_force,
            extras_other_head=extras_other_head,
            neighbor_skin_ang=skin,
        )
    except ValueError as exc:
        raise SetupError(
            f"--mts-direct-address/--mts-direct-port need a model with both heads: {exc} [model '{model_path}']"
        ) from None
    return SharedPass(conservative, direct)


@dataclass
class _Side:
    """One socket served by one thread."""

    label: str
    unix: bool
    address: str
    port: int
    evaluator: object
    client: IPIClient | None = None
    outcome: BaseException | None = None  # None after EXIT
    finished: bool = False
    closed_by_us: bool = False
    order: int = 0  # 1 for the first side to finish, 2 for the second


class _StopFlag:
    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum, frame) -> None:
        self.signum = signum


def serve_shared(
    shared: SharedPass,
    *,
    unix: bool,
    conservative_address: str,
    conservative_port: int,
    direct_address: str,
    direct_port: int,
    sockets_prefix: str,
    connect_timeout_s: float,
    log: TextIO = sys.stderr,
) -> tuple[int | None, list[tuple[str, BaseException]]]:
    """Serve both sockets until both got EXIT, one fails, or a signal arrives.

    Returns (signal number or None, [(socket label, exception)] of the sides that failed).
    On a failure or a signal the other side's socket is closed once it is idle (at most
    60 s of waiting for a request in flight)."""
    sides = [
        _Side(CONSERVATIVE, unix, conservative_address, conservative_port, shared.conservative),
        _Side(DIRECT, unix, direct_address, direct_port, shared.direct),
    ]
    done: queue.Queue[_Side] = queue.Queue()

    def work(side: _Side) -> None:
        try:
            sock = connect(
                unix=side.unix,
                address=side.address,
                port=side.port,
                sockets_prefix=sockets_prefix,
                timeout_s=connect_timeout_s,
            )
            side.client = IPIClient(sock, side.evaluator, log=log)
            side.client.serve()
        except BaseException as exc:  # reported by the main thread
            side.outcome = exc
        finally:
            side.finished = True
            done.put(side)

    for side in sides:
        where = socket_description(side.unix, side.address, side.port, sockets_prefix)
        print(f"ipi-nc driver: {side.label} socket: connecting to {where}", file=log)
    stop = _StopFlag()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    threads = [threading.Thread(target=work, args=(side,), name=side.label, daemon=True) for side in sides]
    try:
        for t in threads:
            t.start()
        finished = 0
        while finished < len(sides):
            if stop.signum is not None:
                break
            try:
                side = done.get(timeout=0.1)
            except queue.Empty:
                continue
            finished += 1
            side.order = finished
            if side.outcome is not None:
                break
        if stop.signum is not None or any(s.outcome is not None for s in sides):
            _close_when_idle(sides)
        for t in threads:
            t.join(timeout=5.0)
        for side in sides:
            if side.client is not None:
                print(f"ipi-nc driver: {side.label} {side.client.timing_summary()}", file=log)
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
    failed = [
        (s.label, s.outcome)
        for s in sorted(sides, key=lambda s: s.order or len(sides) + 1)
        if s.outcome is not None and not s.closed_by_us and not isinstance(s.outcome, StopRequested)
    ]
    return stop.signum, failed


def _close_when_idle(sides: list[_Side], grace_s: float = 60.0) -> None:
    """Close every still-running side's socket once no request is in flight there (a
    driver that closes while i-PI waits for forces makes i-PI 3.3.1 hang or die)."""
    deadline = time.monotonic() + grace_s
    for side in sides:
        while not side.finished and side.client is not None and not side.client.request_stop():
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if not side.finished and side.client is not None:
            side.closed_by_us = True
            side.client.close()  # its thread's blocking read ends (ServerGone), ignored
