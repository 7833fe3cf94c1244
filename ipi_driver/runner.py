"""``ipi-nc run``: start i-PI and one driver per declared socket, show progress, stop cleanly.

    ipi-nc run inputs/nve/nve-mts.xml --model models/data/water-m.pt
    ipi-nc run inputs/nvt/svr-tau10-direct.xml --model m.pt --drivers 2 --steps 200
    ipi-nc run inputs/nve/nve-mts.xml --model m.pt --resume      # continue after a crash/kill

What it does, in order:
1. reads the XML (lxml): the ``<ffsocket>``s (name, unix/inet, address, port), the
   ``<ffdirect>``s, the structure file, the output prefix and the properties file;
2. writes ``WORKDIR/input.xml``: structure path made absolute, ``--steps`` applied, the
   model filled into ``<ffdirect>`` parameters (``--resume``: the newest checkpoint
   instead, with every output truncated to the checkpoint's step so nothing is doubled);
3. starts ``i-pi`` in WORKDIR, waits for its unix sockets, starts ``--drivers N``
   ``ipi-nc driver`` processes per socket with the mode mapped from the forcefield name
   (cons/conservative -> conservative, direct -> direct, corr/correction -> correction,
   ``--mode-for NAME=MODE`` overrides); an MTS input (one conservative + one direct
   socket) with a two-headed model gets ONE driver per --drivers serving both sockets with
   a shared backbone pass (``ipi-nc driver --mts-direct-address``; the faster path, see
   README "Benchmarks"), unless ``--separate-mts-drivers``. With ``--transport auto`` (the
   default) a single-level or MTS input of one system on CPU is served inside i-PI instead
   (``<ffdirect>``, no drivers; :func:`serve_in_process`);
4. prints step, simulated ps, steps/s and ETA from i-PI's properties file as it grows;
5. on completion waits for everything to exit; on Ctrl-C / SIGTERM stops the rest (i-PI
   gets SIGTERM, i.e. its soft exit that writes RESTART) and returns 128 + signal;
6. recovers, at most ``--max-restarts`` times, one stderr line each: a driver that dies
   is replaced by a new one (the written input sets ``consolidate_messages`` false on
   every unbatched ``<ffsocket>`` that does not choose, so i-PI requeues the lost request); when
   i-PI dies, or makes no step for ``--hang-timeout`` s after a driver died, i-PI and the
   drivers are stopped and started again from the newest checkpoint (as ``--resume``:
   outputs truncated to the checkpoint step, so every step is in them once). Past the
   limit: non-zero exit with a one-line reason.
Logs: WORKDIR/ipi.log and WORKDIR/driver-<forcefield>-<k>.log.
Exit codes: 0 done; 2 bad input (options, input/structure/model files, a model that
cannot serve the input, a template that does not match the checkpoint, an unwritable
--workdir), reported before anything starts; 1 the run failed (a driver error such as
NaN forces, an i-PI error, a write error, recoveries used up); 128 + N after signal N.
A driver or i-PI killed by a signal (exit code < 0 or > 128) is recovered; an error a
process reports itself (exit code 1..128) is not: a retry would repeat it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import sys
import time
from pathlib import Path

from lxml import etree

from ipi_ncforces.cli import absolute_paths
from ipi_ncforces.ipi_driver import launch
from ipi_ncforces.models.modes import CONSERVATIVE, CORRECTION, DIRECT, DIRECT_HEAD, ENERGY_HEAD, FORCE_MODES

PES_PATH = Path(__file__).resolve().parent / "pes.py"  # our PES class for <ffdirect> and i-pi-py_driver
MODE_FOR_NAME = {"cons": CONSERVATIVE, "nc": DIRECT, "corr": CORRECTION, **{m: m for m in FORCE_MODES}}


class RunError(RuntimeError):
    """Something that stops the run (exit code 1); the message is one line."""


class RunInputError(RunError):
    """Bad input (options, files, model), found before anything starts (exit code 2)."""


@dataclasses.dataclass
class SocketSpec:
    """One ``<ffsocket>``: forcefield name, 'unix' or 'inet', address, TCP port."""

    name: str
    mode: str
    address: str
    port: int


@dataclasses.dataclass
class InputInfo:
    """What the runner needs to know about an i-PI input."""

    sockets: list[SocketSpec]
    ffdirect: list[str]
    structure: Path | None
    prefix: str
    properties_file: str | None
    total_steps: int
    timestep_fs: float | None
    sockets_prefix: str


def _text(el) -> str:
    return (el.text or "").strip() if el is not None else ""


def read_input(tree: etree._ElementTree, base_dir: Path) -> InputInfo:
    """Collect sockets, structure, outputs and step count from a parsed input or checkpoint."""
    root = tree.getroot()
    sockets = []
    for el in root.findall("ffsocket"):
        mode = el.get("mode", "inet")
        if mode not in ("unix", "inet"):
            raise RunError(f"ffsocket '{el.get('name')}' has mode '{mode}': the runner serves unix and inet sockets")
        port = int(_text(el.find("port")) or 65535)
        sockets.append(SocketSpec(el.get("name"), mode, _text(el.find("address")) or "localhost", port))
    init_file = root.find("system/initialize/file")
    structure = None
    if init_file is not None:
        structure = Path(_text(init_file))
        if not structure.is_absolute():
            structure = (base_dir / structure).resolve()
    output = root.find("output")
    prefix = output.get("prefix", "") if output is not None else ""
    props = output.find("properties") if output is not None else None
    props_file = None
    if props is not None:
        props_file = (f"{prefix}." if prefix else "") + props.get("filename", "out")
    ts = root.find("system/motion/dynamics/timestep")
    timestep_fs = None
    if ts is not None:
        from ipi.utils.units import unit_to_internal, unit_to_user

        timestep_fs = unit_to_user("time", "femtosecond", unit_to_internal("time", ts.get("units", "atomic_unit"), float(_text(ts))))
    return InputInfo(
        sockets=sockets,
        ffdirect=[el.get("name") for el in root.findall("ffdirect")],
        structure=structure,
        prefix=prefix,
        properties_file=props_file,
        total_steps=int(_text(root.find("total_steps")) or 1000),
        timestep_fs=timestep_fs,
        sockets_prefix=root.get("sockets_prefix", launch.DEFAULT_SOCKETS_PREFIX),
    )


def driver_mode(name: str, overrides: dict[str, str]) -> str:
    """Driver mode for a forcefield name; RunError if it cannot be guessed."""
    if name in overrides:
        return overrides[name]
    key = name.lower()
    if key in MODE_FOR_NAME:
        return MODE_FOR_NAME[key]
    raise RunError(
        f"cannot tell which driver mode forcefield '{name}' needs: name it cons/direct/corr "
        f"or pass --mode-for {name}=conservative|direct|correction"
    )


# ----------------------------------------------------------------------------- resume


def checkpoint_step(path: Path) -> int:
    """The step stored in an i-PI checkpoint (number of steps already done); -1 if the
    file is unreadable (a hard kill while i-PI was writing it)."""
    try:
        return int(_text(etree.parse(str(path)).getroot().find("step")) or 0)
    except (etree.XMLSyntaxError, ValueError, AttributeError):
        return -1


def latest_checkpoint(workdir: Path, info: InputInfo) -> Path:
    """The checkpoint with the largest step among RESTART and the periodic ones."""
    candidates = [workdir / "RESTART"] + sorted(workdir.glob(f"{info.prefix}.*chk*" if info.prefix else "*chk*"))
    found = [(checkpoint_step(p), p) for p in candidates if p.is_file() and not p.name.startswith("#")]
    found = [(step, p) for step, p in found if step >= 0]
    if not found:
        raise RunError(f"--resume: no checkpoint (RESTART or {info.prefix}.chk) in '{workdir}'")
    return max(found, key=lambda sp: sp[0])[1]


def prune_checkpoints(workdir: Path, prefix: str, keep: int) -> list[Path]:
    """Delete i-PI's numbered checkpoints (``PREFIX.chk_K``, written with overwrite="false")
    but the ``keep`` with the largest K; ``keep`` <= 0 keeps all. RESTART is never touched.
    Keeping more than one leaves a fallback if the newest was cut short by a hard kill
    (:func:`latest_checkpoint` skips an unreadable file). Returns the deleted paths."""
    if keep <= 0:
        return []
    numbered = []
    for path in workdir.glob(f"{prefix}.*chk_*" if prefix else "*chk_*"):
        index = path.name.rsplit("_", 1)[1]
        if index.isdigit() and path.is_file():
            numbered.append((int(index), path))
    old = [path for _, path in sorted(numbered)[:-keep]]
    for path in old:
        path.unlink(missing_ok=True)
    return old


def check_template_matches_checkpoint(template: Path, chk: Path) -> None:
    """RunError unless the structure file the drivers get as template lists the same
    elements in the same order as the atoms i-PI continues from: i-PI sends positions only,
    so a template with other atoms would give every force to the wrong atom."""
    names = _text(etree.parse(str(chk)).getroot().find("system/beads/names"))
    if not names:
        return
    chk_symbols = [n.strip() for n in names.strip("[] \n").split(",") if n.strip()]
    from ase.data import chemical_symbols

    from ipi_ncforces.ipi_driver.setup import SetupError, read_species

    try:
        template_symbols = [chemical_symbols[z] for z in read_species(template)]
    except SetupError as exc:
        raise RunError(str(exc)) from None
    if len(template_symbols) != len(chk_symbols):
        raise RunError(
            f"structure file '{template}' has {len(template_symbols)} atoms but checkpoint '{chk}' has "
            f"{len(chk_symbols)}: restore the structure file the run started from"
        )
    wrong = [i for i, (a, b) in enumerate(zip(template_symbols, chk_symbols)) if a != b]
    if wrong:
        i = wrong[0]
        raise RunError(
            f"structure file '{template}' orders the elements differently from checkpoint '{chk}' "
            f"(atom {i}: {template_symbols[i]} vs {chk_symbols[i]}, {len(wrong)} atoms differ): "
            f"restore the structure file the run started from"
        )


_STEP_IN_COMMENT = re.compile(r"Step:\s*(\d+)")


def truncate_outputs(workdir: Path, prefix: str, keep_below_step: int) -> None:
    """Drop output records from steps >= ``keep_below_step`` (written after the checkpoint
    by the killed run), so that the resumed run appends without duplicates or gaps.
    Properties: first column must be ``step``; trajectories: i-PI's xyz 'Step: N' comments."""
    for path in sorted(workdir.glob(f"{prefix}.*" if prefix else "*")):
        if path.name.startswith("#") or "chk" in path.name or path.suffix == ".xml" or not path.is_file():
            continue
        lines = path.read_text().splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines.pop()  # a record cut short (kill, disk full) is never kept
        if not lines:
            continue
        kept: list[str] = []
        if lines[0].startswith("#") and "column" in lines[0]:  # properties
            for line in lines:
                if line.startswith("#") or not line.strip() or float(line.split()[0]) < keep_below_step:
                    kept.append(line)
        else:  # xyz trajectory: natoms line, comment line, natoms atom lines
            i = 0
            while i < len(lines):
                natoms = int(lines[i].split()[0])
                frame = lines[i : i + natoms + 2]
                match = _STEP_IN_COMMENT.search(frame[1]) if len(frame) > 1 else None
                if match is None or int(match.group(1)) >= keep_below_step or len(frame) < natoms + 2:
                    break
                kept.extend(frame)
                i += natoms + 2
        path.write_text("".join(kept))


# ----------------------------------------------------------------------------- processes


def driver_command(
    spec: SocketSpec, mode: str, model: Path, structure: Path, device: str, sockets_prefix: str, kind: str,
    remove_net_force: bool = True,
) -> list[str]:
    """The command line of one driver for one socket (``ipi-nc driver`` contract). ``remove_net_force``
    reaches the stock driver's PES here; ``ipi-nc driver`` gets it from :func:`_driver_options`."""
    if kind == "stock":  # i-PI's own client with our PES class (no ipi-nc driver needed)
        cmd = [launch.find_executable("i-pi-py_driver"), "-m", "custom", "-P", str(PES_PATH)]
        options = f"model={model},template={structure},mode={mode},device={device}"
        cmd += ["-o", options + ("" if remove_net_force else ",remove_net_force=false")]
        if spec.mode == "unix":
            return cmd + ["-u", "-a", spec.address, "-S", sockets_prefix]
        return cmd + ["-a", spec.address, "-p", str(spec.port)]
    args = ["--model", model, "--structure", structure, "--mode", mode, "--device", device]
    cmd = launch.driver_command(args)
    if spec.mode == "unix":
        return cmd + ["--unix", "--address", spec.address, "--sockets-prefix", sockets_prefix]
    return cmd + ["--address", spec.address, "--port", str(spec.port)]


def shared_mts_pair(
    sockets: list[SocketSpec], modes: dict[str, str], model: Path
) -> tuple[SocketSpec, SocketSpec] | None:
    """(conservative, direct) sockets when the input is an MTS pair that ONE driver can serve
    with a shared backbone pass (``ipi-nc driver --mts-direct-address``): exactly two
    sockets, one conservative and one direct, same kind (unix / inet on one host), and a
    model with both heads. None otherwise."""
    if len(sockets) != 2 or sorted(modes[s.name] for s in sockets) != sorted([CONSERVATIVE, DIRECT]):
        return None
    cons, direct = sorted(sockets, key=lambda s: modes[s.name] != CONSERVATIVE)
    if cons.mode != direct.mode or (cons.mode == "inet" and cons.address != direct.address):
        return None
    from ipi_ncforces.models.loader import model_heads

    try:
        heads = model_heads(model)
    except Exception:
        return None  # the drivers report a bad model themselves
    return (cons, direct) if {ENERGY_HEAD, DIRECT_HEAD} <= set(heads) else None


def shared_driver_command(
    cons: SocketSpec, direct: SocketSpec, model: Path, structure: Path, device: str, sockets_prefix: str
) -> list[str]:
    """One ``ipi-nc driver`` serving both MTS sockets (conservative + direct)."""
    cmd = driver_command(cons, CONSERVATIVE, model, structure, device, sockets_prefix, "ipi-nc")
    if cons.mode == "unix":
        return cmd + ["--mts-direct-address", direct.address]
    return cmd + ["--mts-direct-port", str(direct.port)]


def _n_beads(root: etree._Element) -> int:
    """Beads of the system in an input (``initialize nbeads``) or a checkpoint (``beads nbeads``)."""
    for path in ("system/initialize", "system/beads"):
        el = root.find(path)
        if el is not None and el.get("nbeads"):
            return int(el.get("nbeads"))
    return 1


def serve_in_process(args: argparse.Namespace, root: etree._Element, info: InputInfo, model: Path) -> bool:
    """Whether the input's ``<ffsocket>``s are to be served inside i-PI (``<ffdirect>``) instead of
    by driver processes. ``--transport sockets``: never; ``in-process``: always; ``auto`` (the
    default): where it was measured faster (README "Benchmarks", issue 14): one system (no
    beads) on CPU, our driver, one driver per socket, and either one conservative or direct
    socket, or an MTS pair that one shared-backbone driver would serve (:func:`shared_mts_pair`);
    everything else (PIMD, GPU, stock driver, other socket sets) keeps its sockets."""
    if not info.sockets or args.transport == "sockets":
        return False
    if args.transport == "in-process":
        return True
    if not (args.driver == "ipi-nc" and args.drivers == 1 and args.device == "cpu" and _n_beads(root) == 1):
        return False
    modes = {s.name: driver_mode(s.name, args.mode_overrides) for s in info.sockets}
    if len(info.sockets) == 1:
        return modes[info.sockets[0].name] in (CONSERVATIVE, DIRECT)  # check_model vetted the model's heads
    return not args.separate_mts_drivers and shared_mts_pair(info.sockets, modes, model) is not None


class Progress:
    """Follows i-PI's properties file; reports step, ps, steps/s, ETA."""

    def __init__(self, path: Path, total_steps: int, timestep_fs: float | None, start_step: int):
        self.follower = launch.StepFollower(path)
        self.total, self.dt_fs = total_steps, timestep_fs
        self.step = start_step
        self.t0, self.step0 = time.monotonic(), start_step
        self.started = False  # the clock starts at the first step seen (startup excluded)

    def poll(self) -> None:
        self.step = max(self.step, self.follower.poll())
        if not self.started and self.step > self.step0:
            # the clock starts at the first rows seen: i-PI and driver start-up excluded
            self.started, self.t0, self.step0 = True, time.monotonic(), self.step

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        rate = (self.step - self.step0) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.step) / rate if rate > 0 else float("nan")
        sim = f"{self.step * self.dt_fs / 1000.0:.3f} ps, " if self.dt_fs else ""
        return f"step {self.step}/{self.total}, {sim}{rate:.1f} steps/s, ETA {eta:.0f} s"


def _parse_mode_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, mode = item.partition("=")
        if not sep or mode not in FORCE_MODES:
            raise RunError(f"--mode-for '{item}': expected NAME={'|'.join(FORCE_MODES)}")
        out[name] = mode
    return out


def prepare(args: argparse.Namespace, announce: bool = True) -> tuple[Path, InputInfo, int]:
    """Write the i-PI input to run in the workdir; returns (xml path, info, start step)."""
    src = Path(args.input).resolve()
    if not src.is_file():
        raise RunError(f"input file '{args.input}' does not exist")
    workdir = Path(args.workdir or Path("runs") / src.stem).resolve()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".ipi-nc-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"--workdir '{workdir}' is not a writable folder ({exc.strerror}): choose another --workdir") from None
    from ipi_ncforces.inputs.validate import InputValidationError, validate_file

    try:
        validate_file(src)
    except InputValidationError as exc:
        raise RunError(str(exc)) from None
    tree = etree.parse(str(src))
    info = read_input(tree, src.parent)
    start_step = 0
    if args.resume:
        chk = latest_checkpoint(workdir, info)
        start_step = checkpoint_step(chk)
        tree = etree.parse(str(chk))
        if info.structure is not None and info.structure.is_file():
            check_template_matches_checkpoint(info.structure, chk)  # before any output is touched
        # the checkpoint's structure is embedded; its forcefields come from the original input
        truncate_outputs(workdir, info.prefix, start_step + 1)
        if announce and not args.quiet:
            print(f"resuming from {chk.name} at step {start_step}")
    root = tree.getroot()
    if args.steps is not None:
        root.find("total_steps").text = f" {args.steps} "
        info.total_steps = args.steps
    else:
        info.total_steps = int(_text(root.find("total_steps")))
    init_file = root.find("system/initialize/file")
    if init_file is not None and info.structure is not None:
        init_file.text = f" {info.structure} "
    if serve_in_process(args, root, info, Path(args.model).resolve()):
        from ipi_ncforces.inputs.make import sockets_to_ffdirect

        sockets_to_ffdirect(root)
    # what i-PI will serve: the input's forcefields, or on --resume the checkpoint's (a run
    # resumes with the transport it started with)
    present = {el.get("name") for el in root.findall("ffsocket")}
    moved = [s.name for s in info.sockets if s.name not in present]
    info.sockets = [s for s in info.sockets if s.name in present]
    info.ffdirect = [el.get("name") for el in root.findall("ffdirect")]
    if moved and announce and not args.quiet:
        print(f"serving {', '.join(moved)} inside i-PI (<ffdirect>, --transport {args.transport}, no driver processes); "
              "--transport sockets starts drivers instead")
    for el in root.findall("ffdirect"):
        mode = driver_mode(el.get("name"), args.mode_overrides)
        el.find("pes_path").text = f" {PES_PATH} "
        extra = "".join(f", {k}: {v}" for k, v in (("variant", args.variant), ("extensions", args.extensions)) if v)
        extra += "" if args.remove_net_force else ", remove_net_force: false"
        el.find("parameters").text = f" {{model: {Path(args.model).resolve()}, template: {info.structure}, mode: {mode}, device: {args.device}{extra}}} "
    _ffsockets_survive_driver_kills(tree)
    xml = workdir / ("resume.xml" if args.resume else "input.xml")
    tree.write(str(xml))
    if info.structure is None or not info.structure.is_file():
        raise RunError(f"structure file '{info.structure}' from {src} does not exist")
    return xml, info, start_step


def _driver_options(args: argparse.Namespace) -> list[str]:
    """--no-remove-net-force, and --variant / --extensions for the drivers of a metatomic model."""
    out = [] if args.remove_net_force else ["--no-remove-net-force"]
    if args.variant:
        out += ["--variant", args.variant]
    if args.extensions:
        out += ["--extensions", str(Path(args.extensions).resolve())]
    return out


def check_model(args: argparse.Namespace) -> None:
    """RunInputError (one line, exit 2) if the model cannot serve this input's forcefields (species,
    modes, barostat without a direct virial); nothing is written or started before."""
    from ipi_ncforces.ipi_driver.model_check import check_model_for_input
    from ipi_ncforces.ipi_driver.setup import SetupError

    src = Path(args.input).resolve()
    if not src.is_file():
        raise RunInputError(f"input file '{args.input}' does not exist")
    try:
        tree = etree.parse(str(src))
    except etree.XMLSyntaxError as exc:
        raise RunInputError(f"input file '{args.input}' is not valid XML: {exc}".splitlines()[0]) from None
    info = read_input(tree, src.parent)
    names = [s.name for s in info.sockets] + info.ffdirect
    modes = [driver_mode(name, args.mode_overrides) for name in names]
    if not modes or info.structure is None or not info.structure.is_file():
        return  # prepare() reports these
    try:
        check_model_for_input(
            model_path=args.model,
            structure_path=info.structure,
            modes=modes,
            input_path=args.input,
            tree=tree,
            device=args.device,
            variant=args.variant,
            extensions_directory=args.extensions,
        )
    except SetupError as exc:
        raise RunInputError(str(exc)) from None


class _Resume(Exception):
    """i-PI cannot go on (it died, or hangs on a dead driver): restart it from the newest checkpoint."""


def _ffsockets_survive_driver_kills(tree: etree._ElementTree) -> None:
    """Set ``consolidate_messages`` false on every ``<ffsocket>`` that does not choose: i-PI
    3.3.1's consolidated poller dies when a SIGKILLed driver resets its connection (i-PI then
    hangs), its threaded dispatcher requeues the request for the next driver instead.
    Batched sockets (``batch_size`` > 1) need consolidated messages: there a dead driver
    is recovered by the hang detection (restart from the checkpoint)."""
    for el in tree.getroot().findall("ffsocket"):
        if el.find("consolidate_messages") is None and int(_text(el.find("batch_size")) or 1) <= 1:
            etree.SubElement(el, "consolidate_messages").text = " false "


def run(args: argparse.Namespace) -> int:
    """The whole run; returns the exit code. RunInputError for bad input (options, files,
    a model that cannot serve the input), found before anything is started. A driver that
    dies is replaced, and an i-PI that dies or hangs is restarted from its newest
    checkpoint, at most ``--max-restarts`` times (one line on stderr per recovery)."""
    try:
        args.mode_overrides = _parse_mode_overrides(args.mode_for)
        model = Path(args.model).resolve()
        if not model.is_file():
            raise RunError(f"model file '{args.model}' (--model) does not exist")
        check_model(args)  # before anything is written: a bad model leaves earlier outputs alone
        xml, info, start_step = prepare(args)
        modes = {s.name: driver_mode(s.name, args.mode_overrides) for s in info.sockets}
    except RunError as exc:
        raise RunInputError(str(exc)) from None
    workdir = xml.parent
    if not args.resume:
        for stale in [workdir / "RESTART"] + list(workdir.glob(f"{info.prefix}.*")):
            if stale.is_file():
                stale.unlink()  # a fresh run must not be mistaken for a continuation
    stop_signal: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: stop_signal.append(signum))
    recoveries = [0]  # shared count of driver replacements and i-PI restarts
    try:
        while True:
            try:
                return _launch(args, xml, info, start_step, model, modes, stop_signal, recoveries)
            except _Resume as exc:
                recoveries[0] += 1
                args.resume = True
                try:
                    xml, info, start_step = prepare(args, announce=False)
                except RunError as err:
                    raise RunError(f"{exc}; cannot resume: {err}") from None
                print(
                    f"ipi-nc run: recovery {recoveries[0]}/{args.max_restarts}: {exc}; "
                    f"restarting i-PI and the drivers from the checkpoint at step {start_step}",
                    file=sys.stderr, flush=True,
                )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _launch(args, xml: Path, info: InputInfo, start_step: int, model: Path, modes: dict[str, str],
            stop_signal: list[int], recoveries: list[int]) -> int:
    """Start i-PI on ``xml`` and its drivers, follow to the end; always stops what it started."""
    workdir = xml.parent
    try:
        for s in info.sockets:
            if s.mode == "unix":
                launch.clear_stale_socket(s.address, info.sockets_prefix)
    except launch.LaunchError as exc:
        raise RunError(str(exc)) from None
    threads = int(os.environ.get("OMP_NUM_THREADS") or 1)  # one driver = one core unless told otherwise
    ipi, drivers = None, []
    try:
        ipi = launch.start_ipi(xml, workdir, threads=threads)
        sockets = [(s.mode, s.address, s.port) for s in info.sockets]
        launch.wait_for_sockets(ipi, sockets, args.startup_timeout, info.sockets_prefix, lambda: bool(stop_signal))
        pair = None
        if args.driver == "ipi-nc" and not args.separate_mts_drivers:
            pair = shared_mts_pair(info.sockets, modes, model)
        if pair is not None:  # MTS: one process per driver serves both sockets, one backbone pass
            commands = {
                f"{pair[0].name}+{pair[1].name}-{k}": shared_driver_command(*pair, model, info.structure, args.device, info.sockets_prefix)
                for k in range(args.drivers)
            }
        else:
            commands = {
                f"{s.name}-{k}": driver_command(s, modes[s.name], model, info.structure, args.device, info.sockets_prefix, args.driver,
                                                args.remove_net_force)
                for s in info.sockets
                for k in range(args.drivers)
            }
        if args.driver == "ipi-nc":
            commands = {label: cmd + _driver_options(args) for label, cmd in commands.items()}
        for label, cmd in commands.items():
            drivers.append(launch.start_process(cmd, workdir, f"driver-{label}.log", threads, label))
        return _follow(args, ipi, drivers, commands, threads, info, start_step, stop_signal, recoveries)
    except launch.LaunchError as exc:
        raise RunError(str(exc)) from None
    finally:
        launch.stop_run(ipi, drivers, ipi_grace_s=min(30.0, args.hang_timeout))


WRITE_ERRORS = ("No space left on device", "Disk quota exceeded", "File too large", "Input/output error", "Read-only file system")


def _write_error(ipi: launch.Process) -> str:
    """The write error (disk full, quota, file size limit, I/O error) i-PI's log ends with; '' if none."""
    tail = ipi.log_tail(30)
    return next((word for word in WRITE_ERRORS if word in tail), "")


def _follow(args, ipi: launch.Process, drivers: list[launch.Process], commands: dict[str, list[str]], threads: int,
            info: InputInfo, start_step: int, stop_signal: list[int], recoveries: list[int]) -> int:
    """Print progress until i-PI finishes (0) or a signal arrives (128 + signal). A driver
    that dies is replaced; _Resume when i-PI dies or makes no step for ``--hang-timeout`` s
    after a driver died; RunError once ``--max-restarts`` recoveries are used up."""
    workdir = ipi.log_path.parent
    follower = launch.StepFollower(workdir / info.properties_file) if info.properties_file else None
    progress = None
    if info.properties_file and not args.quiet:
        progress = Progress(workdir / info.properties_file, info.total_steps, info.timestep_fs, start_step)
    last_print = last_prune = time.monotonic()
    exit_seen = 0.0
    stalled_since, stalled_step = None, -1  # a driver died: when, and the last step then
    while True:
        if stop_signal:
            name = signal.Signals(stop_signal[0]).name
            print(f"ipi-nc run: {name} received, stopping i-PI (it writes RESTART) and the drivers; continue with --resume", file=sys.stderr)
            return 128 + stop_signal[0]
        code = ipi.returncode
        if code is not None:
            if code == -signal.SIGXFSZ:
                raise RunError(
                    f"i-PI was stopped by SIGXFSZ, its outputs in '{workdir}' reached the file size limit (ulimit -f): "
                    f"raise the limit or free space, then continue with --resume"
                )
            if code != 0 and _write_error(ipi):
                raise RunError(
                    f"i-PI could not write its outputs in '{workdir}' ({_write_error(ipi)}): free space or raise "
                    f"the limit, then continue with --resume (see {ipi.log_path})"
                )
            if code > 0:  # an error i-PI reported: a retry would repeat it
                raise RunError(f"i-PI exited with code {code}: {ipi.log_tail()} (see {ipi.log_path})")
            if code != 0:  # killed by a signal: restart from the checkpoint
                reason = f"i-PI exited with code {code}: {ipi.log_tail()} (see {ipi.log_path})"
                if recoveries[0] >= args.max_restarts:
                    raise RunError(reason + "; continue with --resume")
                raise _Resume(f"i-PI exited with code {code}")
            for driver in drivers:  # finished: the drivers got EXIT and stop on their own
                try:
                    driver.wait(30)
                except TimeoutError:
                    pass
            if progress:
                progress.poll()
                print(progress.line())
            prune_checkpoints(workdir, info.prefix, args.keep_checkpoints)
            print(f"ipi-nc run: finished; outputs in {workdir}")
            return 0
        step = follower.poll() if follower else -1
        if stalled_since is not None and step > stalled_step:
            stalled_since = None  # steps advance again: the recovery worked
        if stalled_since is not None and time.monotonic() - stalled_since > args.hang_timeout:
            message = f"i-PI made no step for {args.hang_timeout:g} s after a driver died (see {ipi.log_path})"
            if recoveries[0] >= args.max_restarts:
                raise RunError(message + "; continue with --resume")
            raise _Resume(f"i-PI made no step for {args.hang_timeout:g} s after a driver died")
        for k, driver in enumerate(drivers):
            if driver.returncode == 0:
                # exit 0 = the driver got i-PI's EXIT: i-PI is finishing, give it time to write its files
                exit_seen = exit_seen or time.monotonic()
                if time.monotonic() - exit_seen > launch.IPI_EXIT_GRACE_S:
                    raise RunError(
                        f"i-PI sent EXIT to driver '{driver.label}' but is still running after "
                        f"{launch.IPI_EXIT_GRACE_S:.0f} s (see {ipi.log_path})"
                    )
            elif driver.returncode is not None:
                if not ipi.running():
                    break  # i-PI died first, the driver only followed it: handled above next round
                reason = f"driver '{driver.label}' exited with code {driver.returncode} while i-PI was running (see {driver.log_path})"
                if 0 < driver.returncode <= 128:  # an error it reported (NaN forces, bad model): a new one would repeat it
                    errors = [ln.strip() for ln in driver.log_text().splitlines() if "error:" in ln]
                    raise RunError(f"{reason}: {errors[-1] if errors else driver.log_tail(1)}; i-PI stopped")
                if recoveries[0] >= args.max_restarts:
                    raise RunError(f"{reason}; i-PI stopped, continue with --resume")
                recoveries[0] += 1
                print(f"ipi-nc run: recovery {recoveries[0]}/{args.max_restarts}: {reason} at step {step}; starting a new driver",
                      file=sys.stderr, flush=True)
                drivers[k] = launch.start_process(commands[driver.label], workdir, driver.log_path.name, threads, driver.label)
                if stalled_since is None:
                    stalled_since, stalled_step = time.monotonic(), step
        if time.monotonic() - last_prune >= 10.0:
            prune_checkpoints(workdir, info.prefix, args.keep_checkpoints)
            last_prune = time.monotonic()
        if progress:
            progress.poll()  # every loop: the steps/s clock must see the first rows early
        if progress and time.monotonic() - last_print >= args.progress_every:
            print(progress.line(), flush=True)
            last_print = time.monotonic()
        time.sleep(0.1)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ipi-nc run",
        description="Start i-PI on INPUT.xml plus one model driver per <ffsocket>; show progress; stop cleanly.",
        epilog="Forcefield name -> driver mode: cons/conservative -> conservative, direct -> direct, "
        "corr/correction -> correction. Logs: WORKDIR/ipi.log, WORKDIR/driver-*.log.",
    )
    p.add_argument("input", help="i-PI input XML (e.g. inputs/nve/nve-mts.xml)")
    p.add_argument("--model", required=True, help="model file served by the drivers / ffdirect: ipi-ncforces .pt or metatomic export")
    p.add_argument("--device", default="cpu", help="torch device for the drivers: cpu, cuda, cuda:K (default cpu)")
    p.add_argument("--variant", help="metatomic models: output variant (energy/VARIANT, non_conservative_force/VARIANT)")
    p.add_argument("--extensions", metavar="DIR", help="metatomic models: directory with the model's TorchScript extensions")
    p.add_argument("--remove-net-force", action=argparse.BooleanOptionalAction, default=True,
                   help="subtract the per-structure mean of the direct forces (direct and MTS forcefields), as i-PI's "
                   "metatomic PES does (default on); --no-remove-net-force serves the raw direct head")
    p.add_argument("--drivers", type=int, default=1, help="driver processes per socket (default 1)")
    p.add_argument("--workdir", help="run directory (default runs/<input stem>)")
    p.add_argument("--steps", type=int, help="override <total_steps> (outer steps)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the workdir")
    p.add_argument("--mode-for", action="append", default=[], metavar="NAME=MODE", help="driver mode of a forcefield")
    p.add_argument("--driver", choices=("ipi-nc", "stock"), default="ipi-nc", help="ipi-nc driver (default) or i-PI's i-pi-py_driver with our PES")
    p.add_argument("--transport", choices=("auto", "sockets", "in-process"), default="auto",
                   help="how the input's <ffsocket>s are served: by driver processes (sockets), or by the model inside "
                   "i-PI (in-process: each becomes an <ffdirect> with our PES; no drivers). auto (default): in-process "
                   "for one conservative or direct socket, or an MTS pair (conservative + direct socket, two-headed "
                   "model), with one system on CPU and one driver per socket, measured faster (README Benchmarks); "
                   "sockets otherwise (PIMD, GPU, --driver stock, --drivers N)")
    p.add_argument(
        "--separate-mts-drivers",
        action="store_true",
        help="MTS inputs (one conservative + one direct socket): one driver process per socket, each running "
        "the backbone, instead of the default for two-headed models: ONE process serving both sockets with "
        "one backbone pass at the outer steps (faster; see README Benchmarks)",
    )
    p.add_argument("--shared-mts-driver", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    p.add_argument("--max-restarts", type=int, default=3, metavar="N",
                   help="recoveries allowed: a dead driver is replaced, a dead or hung i-PI restarted from its newest "
                   "checkpoint (default 3; 0 = stop at the first failure)")
    p.add_argument("--hang-timeout", type=float, default=60.0, metavar="S",
                   help="seconds without a new step after a driver died before i-PI counts as hung and is "
                   "restarted from its checkpoint (default 60)")
    p.add_argument("--keep-checkpoints", type=int, default=3, metavar="N",
                   help="numbered i-PI checkpoints (PREFIX.chk_K) kept in the workdir, the newest N; older ones are "
                   "deleted as the run goes (default 3; 0 = keep all). RESTART is always kept")
    p.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines (default 5)")
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for i-PI's sockets (default 120)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    absolute_paths(args, "input", "model", "extensions", "workdir")  # i-PI and the drivers run in the workdir
    if args.drivers < 1:
        print("ipi-nc run: --drivers must be >= 1", file=sys.stderr)
        return 2
    try:
        return run(args)
    except RunInputError as exc:
        print(f"ipi-nc run: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:
        print(f"ipi-nc run: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
