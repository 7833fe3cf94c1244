"""``ipi-nc driver``: serve a model's forces to a running i-PI over a socket.

Example (GPU node, i-PI listening on the unix socket /tmp/ipi_nc-direct)::

    ipi-nc driver --model water-m.pt --structure water64.xyz --mode direct \\
        --unix --address nc-direct --device cuda:0

Exit codes: 0 when i-PI sends EXIT; 2 for bad input (command line, structure or model
file, a model that cannot serve the mode); 1 when serving fails: bad model output, a
request that does not fit the structure, no server within --connect-timeout, or i-PI
vanishing mid-run (one-line message on stderr); 143 after SIGTERM and 130 after SIGINT
(a request in flight is answered first, then the socket is closed; i-PI waits for
another driver).
A timing summary goes to stderr on every exit after the model was loaded.

MTS with one process (conservative outer level + direct inner level, one backbone pass
for both at the outer step)::

    ipi-nc driver --model water-m.pt --structure water64.xyz --mode conservative \
        --unix --address nve-mts-cons --mts-direct-address nve-mts-direct
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from ipi_ncforces.models.modes import CONSERVATIVE, FORCE_MODES

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2  # EXIT_USAGE: any bad input (options, files, model)
EXIT_SIGNAL_BASE = 128


class Terminated(Exception):
    """Raised from the signal handler so blocking socket calls unwind cleanly."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _SignalHandler:
    """SIGTERM/SIGINT: stop at once while waiting for i-PI, else after answering the
    request in flight (see IPIClient.request_stop)."""

    def __init__(self) -> None:
        self.client = None
        self.signum: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        if self.client is None or self.client.request_stop():
            raise Terminated(signum)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipi-nc driver",
        description="Serve energies, forces and virials of an ipi-ncforces model to a running i-PI "
        "(socket protocol in atomic units; the model works in eV and Angstrom).",
        epilog="Exit codes: 0 i-PI sent EXIT; 1 error (message on stderr); 2 usage error; "
        "143 SIGTERM, 130 SIGINT (request in flight answered, socket closed, i-PI waits for another driver).",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="model file: an ipi-ncforces .pt ('ipi-nc train') or a metatomic model ('ipi-nc export', 'mtt export')",
    )
    parser.add_argument(
        "--structure",
        required=True,
        help="structure file with the atoms in i-PI's order (e.g. the i-PI init xyz); gives the species",
    )
    parser.add_argument(
        "--mode",
        required=True,
        choices=FORCE_MODES,
        help="conservative: F=-dE/dr; direct: the direct-force head; correction: conservative minus direct "
        "(MTS outer level)",
    )
    where = parser.add_argument_group("socket (as in i-PI's <ffsocket>)")
    where.add_argument("--unix", action="store_true", help="use a unix socket named --address")
    where.add_argument(
        "--address", required=True, help="unix socket name (with --unix) or host name / IP of the i-PI server"
    )
    where.add_argument("--port", type=int, help="TCP port of the i-PI server (inet sockets)")
    where.add_argument(
        "--sockets-prefix",
        default="/tmp/ipi_",
        help="unix socket path = PREFIX + ADDRESS (default /tmp/ipi_, i-PI's default)",
    )
    where.add_argument(
        "--connect-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="keep retrying while i-PI is not up yet for this many seconds (default 60)",
    )
    mts = parser.add_argument_group(
        "MTS: serve the direct socket too (one process, one model, one backbone pass per outer step)"
    )
    mts.add_argument(
        "--mts-direct-address",
        metavar="NAME",
        help="also serve i-PI's direct-force socket NAME (unix name with --unix, else host; inet default: "
        "--address) from this process; needs --mode conservative and a model with both heads",
    )
    mts.add_argument("--mts-direct-port", type=int, metavar="N", help="TCP port of the direct socket (inet)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:K (default cpu)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        help="default: float32 on cuda, float64 on cpu; a metatomic model runs in its own dtype",
    )
    parser.add_argument(
        "--remove-net-force",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="subtract the per-structure mean of the direct forces so they sum to zero (direct and correction "
        "modes; conservative forces already do), as i-PI's metatomic PES does. Default on; "
        "--no-remove-net-force serves the raw direct head (its net force drifts the centre of mass)",
    )
    parser.add_argument(
        "--extras-other-head",
        action="store_true",
        help="also send the other head's forces (eV/A) in i-PI's extras JSON",
    )
    mta = parser.add_argument_group("metatomic models")
    mta.add_argument("--variant", help="output variant of a metatomic model (energy/VARIANT, non_conservative_force/VARIANT)")
    mta.add_argument("--extensions", metavar="DIR", help="directory with the TorchScript extensions the model needs")
    mta.add_argument(
        "--check-consistency",
        action="store_true",
        help="let metatomic check inputs and outputs on every call (slow; for debugging a model)",
    )
    parser.add_argument(
        "--neighbor-skin",
        type=float,
        default=None,
        metavar="ANGSTROM",
        help="Verlet skin (A) for neighbour lists kept between steps; 0 disables "
        "(default: 0.5 on cpu, off on cuda)",
    )
    return parser


def _check_socket_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.unix and args.port is not None:
        parser.error("--port is for inet sockets; drop it or drop --unix")
    if not args.unix and args.port is None:
        parser.error("inet sockets need --port N (or use --unix --address NAME)")
    if args.connect_timeout < 0:
        parser.error("--connect-timeout must be >= 0 seconds")
    if args.neighbor_skin is not None and args.neighbor_skin < 0:
        parser.error("--neighbor-skin must be >= 0 Angstrom")


def _mts_usage_error(args: argparse.Namespace) -> str | None:
    """One-line reason why the MTS options do not fit the others, or None."""
    if args.mts_direct_address is None and args.mts_direct_port is None:
        return None
    if args.mode != CONSERVATIVE:
        return f"--mts-direct-address/--mts-direct-port need --mode conservative (got --mode {args.mode})"
    if args.unix and args.mts_direct_port is not None:
        return "--mts-direct-port is for inet sockets; drop it or drop --unix"
    if args.unix and args.mts_direct_address is None:
        return "with --unix, name the direct socket with --mts-direct-address NAME"
    if not args.unix and args.mts_direct_port is None:
        return "inet MTS needs --mts-direct-port N (the direct socket's TCP port)"
    return None


def _metatomic_options(args: argparse.Namespace) -> dict:
    return {
        "variant": args.variant,
        "extensions_directory": args.extensions,
        "check_consistency": args.check_consistency,
    }


def _error(message: str) -> None:
    print(f"ipi-nc driver: error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the driver; returns the process exit code (see module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_socket_args(parser, args)
    mts_error = _mts_usage_error(args)
    if mts_error is not None:
        _error(mts_error)
        return EXIT_USAGE
    if args.mts_direct_address is not None or args.mts_direct_port is not None:
        return _main_shared(args)

    handler = _SignalHandler()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    evaluator = None
    sock = None
    client = None
    try:
        from ipi_ncforces.ipi_driver.client import (
            ConnectFailed,
            IPIClient,
            ProtocolError,
            ServerGone,
            StopRequested,
            connect,
            socket_description,
        )
        from ipi_ncforces.ipi_driver.evaluator import ForceError
        from ipi_ncforces.ipi_driver.setup import SetupError, build_evaluator

        try:
            evaluator = build_evaluator(
                model_path=args.model,
                structure_path=args.structure,
                mode=args.mode,
                device=args.device,
                dtype=args.dtype,
                remove_net_force=args.remove_net_force,
                extras_other_head=args.extras_other_head,
                neighbor_skin_ang=args.neighbor_skin,
                **_metatomic_options(args),
            )
            where = socket_description(args.unix, args.address, args.port or 0, args.sockets_prefix)
            print(
                f"ipi-nc driver: {args.mode} forces of '{args.model}' on {evaluator.device} "
                f"({str(evaluator.dtype).replace('torch.', '')}); connecting to {where}",
                file=sys.stderr,
            )
            sock = connect(
                unix=args.unix,
                address=args.address,
                port=args.port or 0,
                sockets_prefix=args.sockets_prefix,
                timeout_s=args.connect_timeout,
                log=sys.stderr,
            )
            client = handler.client = IPIClient(sock, evaluator, log=sys.stderr)
            try:
                client.serve()
            except StopRequested:
                raise Terminated(handler.signum or signal.SIGTERM) from None
            return EXIT_OK
        except SetupError as exc:
            _error(str(exc))
            return EXIT_USAGE
        except (ConnectFailed, ForceError) as exc:
            _error(str(exc))
        except ServerGone as exc:
            served = client.requests if client is not None else 0
            _error(f"{exc} after {served} requests (i-PI killed or crashed?)")
        except ProtocolError as exc:
            _error(str(exc))
        except ValueError as exc:  # the evaluator's checks on what i-PI sent (e.g. atom count)
            request = client.requests if client is not None else 0
            _error(f"request {request}: {exc}".splitlines()[0])
        return EXIT_ERROR
    except Terminated as exc:
        print(f"ipi-nc driver: received {exc}, closing the socket and exiting", file=sys.stderr)
        return EXIT_SIGNAL_BASE + exc.signum
    finally:
        if client is not None:
            client.close()
        elif sock is not None:
            sock.close()
        if evaluator is not None:
            print(f"ipi-nc driver: {evaluator.timings.summary()}", file=sys.stderr)
        if client is not None:
            print(f"ipi-nc driver: {client.timing_summary()}", file=sys.stderr)
        for signum, old_handler in previous.items():
            signal.signal(signum, old_handler)


def _main_shared(args: argparse.Namespace) -> int:
    """Serve the conservative socket and the MTS direct socket from one process."""
    from ipi_ncforces.ipi_driver.client import ProtocolError, ServerGone
    from ipi_ncforces.ipi_driver.evaluator import ForceError
    from ipi_ncforces.ipi_driver.setup import SetupError
    from ipi_ncforces.ipi_driver.shared_pass import build_shared_pass, serve_shared

    shared = None
    try:
        try:
            shared = build_shared_pass(
                model_path=args.model,
                structure_path=args.structure,
                device=args.device,
                dtype=args.dtype,
                remove_net_force=args.remove_net_force,
                extras_other_head=args.extras_other_head,
                neighbor_skin_ang=args.neighbor_skin,
                **_metatomic_options(args),
            )
        except SetupError as exc:
            _error(str(exc))
            return EXIT_USAGE
        ev = shared.conservative_evaluator
        print(
            f"ipi-nc driver: conservative + direct (MTS, shared backbone pass) forces of '{args.model}' "
            f"on {ev.device} ({str(ev.dtype).replace('torch.', '')})",
            file=sys.stderr,
        )
        signum, failed = serve_shared(
            shared,
            unix=args.unix,
            conservative_address=args.address,
            conservative_port=args.port or 0,
            direct_address=args.mts_direct_address or args.address,
            direct_port=args.mts_direct_port or 0,
            sockets_prefix=args.sockets_prefix,
            connect_timeout_s=args.connect_timeout,
        )
        if failed:
            label, exc = failed[0]
            if isinstance(exc, ServerGone):
                message = f"{exc} (i-PI killed or crashed?)"
            elif isinstance(exc, (ConnectionError, ForceError, ProtocolError, ValueError)):
                message = str(exc)
            else:
                message = f"{type(exc).__name__}: {exc}"
            _error(f"{label} socket: {message}".splitlines()[0])
            return EXIT_ERROR
        if signum is not None:
            name = signal.Signals(signum).name
            print(f"ipi-nc driver: received {name}, closing the sockets and exiting", file=sys.stderr)
            return EXIT_SIGNAL_BASE + signum
        return EXIT_OK
    finally:
        if shared is not None:
            for line in shared.summary().splitlines():
                print(f"ipi-nc driver: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
