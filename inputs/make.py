"""Write i-PI inputs (NVE / NVT / PIMD / MTS / geometry optimization) with lxml.

One :class:`Variant` (plain options with units in their names) becomes one i-PI XML
document. :func:`shipped_variants` lists the inputs shipped under ``inputs/`` and
:func:`write_shipped` regenerates them, so the shipped files cannot drift from this code.

Conventions:
* ``dt_fs`` is the *inner* time step; with MTS the i-PI ``<timestep>`` is the outer one,
  ``mts_m * dt_fs``, and ``<nmts>[1, M]</nmts>`` splits it (paper-notes "MTS scheme").
* Output strides are chosen in femtoseconds and converted to (outer) steps.
* Forcefields are named ``cons`` (conservative forces) and ``direct`` (direct forces);
  the runner maps these names to driver modes.
* Unix socket addresses are ``<name>-<forcefield>`` so several runs can go at once.
* ``<ffdirect>`` names its PES file and model by placeholders (``PES.py``, ``MODEL.pt``)
  unless the caller sets ``pes_path`` / ``model``: the runner fills them in, so this
  package never needs to know where ipi_driver lives.

Every caller that needs an i-PI input (runner tests, benchmarks, the reference-data
workflow) builds a :class:`Variant` here; :func:`write` always validates with i-PI.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from ipi.utils.units import unit_to_internal

from ipi_ncforces.models.modes import CONSERVATIVE, DIRECT

FORCES = (CONSERVATIVE, DIRECT, "mts")  # "mts": conservative outer + direct inner level
MD_THERMOSTATS = ("langevin", "svr", "gle")
PIMD_THERMOSTATS = ("pile_l", "pile_g")
# i-PI 3.3.1 geometry optimizers (ipi/inputs/motion/geop.py, attribute "mode");
# FIRE exists in i-PI only inside NEB, not as a <geop> mode.
GEOP_MODES = ("sd", "cg", "bfgs", "bfgstrm", "lbfgs", "damped_bfgs")
SOCKETS = ("unix", "inet", "ffdirect")

# Socket polling latency (s), chosen by measurement: NVE, 192 atoms, toy model, 2 shared
# CPU cores: 1e-4 s gave 122 steps/s, 1e-5 s only 49 steps/s (the faster-polling i-PI
# thread steals the CPU the driver needs). On a dedicated node with a GPU driver a
# smaller value can pay off: --latency-s, and `ipi-nc bench` to measure.
DEFAULT_LATENCY_S = 1e-4
OUTPUT_KINDS = ("properties", "trajectory", "checkpoint")
VERBOSITIES = ("quiet", "low", "medium", "high", "debug")


class VariantError(ValueError):
    """An impossible combination of options; the message is one line naming the option."""


@dataclass(frozen=True)
class Output:
    """One i-PI output stream.

    kind: "properties", "trajectory" or "checkpoint"; filename: i-PI's ``filename`` (it
    adds the prefix, ``_<bead>`` for per-bead quantities and the extension); what: the
    element text, e.g. ``[ step, potential ]`` or ``positions{angstrom}``; stride: period
    in (outer) steps; format: trajectory format (xyz, ase, pdb, ...).
    """

    kind: str
    filename: str
    what: str = ""
    stride: int = 1
    format: str = "xyz"


@dataclass(frozen=True)
class Variant:
    """All choices that define one input file.

    Times in fs, temperatures in K, forces in eV/A, energies in eV, lengths in A.
    """

    name: str
    motion: str = "md"  # "md" or "geop"
    ensemble: str = "nve"  # "nve" or "nvt" (md only)
    thermostat: str | None = None  # MD_THERMOSTATS (1 bead) or PIMD_THERMOSTATS
    tau_fs: float = 100.0
    forces: str = CONSERVATIVE  # FORCES
    mts_m: int = 8
    dt_fs: float = 0.5  # inner time step
    beads: int = 1
    contract_beads: int = 0  # >0: slow forces on this many beads (ring-polymer contraction)
    steps: int = 20000  # outer steps (md) or optimizer iterations (geop)
    temperature_k: float = 300.0
    seed: int = 31415
    structure: str = "../water64.xyz"  # relative to the XML file
    sockets: str = "unix"
    host: str = "localhost"
    port: int = 31415  # inet: first forcefield's port; the next one gets port + 1
    latency_s: float = DEFAULT_LATENCY_S
    model: str = "MODEL.pt"  # used only by ffdirect (the runner fills it in)
    pes_path: str = "PES.py"  # ffdirect: the PES file (the runner fills in ipi_driver/pes.py)
    pes: str = "custom"  # ffdirect: "custom" (our PES at pes_path) or "metatomic" (i-PI's own, model = metatomic file)
    device: str = ""  # ffdirect: torch device in the PES parameters ("" = the PES default)
    dtype: str = ""  # ffdirect: float32 / float64 in the PES parameters ("" = the PES default)
    prefix: str = ""  # output prefix ("" = name)
    socket_address: str = ""  # unix addresses are <socket_address>-<forcefield> ("" = name)
    batch_size: int = 0  # structures per force request; 0 = all beads for sockets when beads > 1
    consolidate_messages: bool | None = None  # ffsocket option; None = i-PI's default (see ipi_driver.launch)
    verbosity: str = "low"  # "high" prints per-step timings (benchmarks)
    safe_stride: int = 1  # steps between saved states for a soft exit (each save costs time)
    pile_lambda: float = 0.5  # PILE thermostats: damping relative to critical (i-PI's default is 1)
    thermal_velocities: bool = True  # md: start from Maxwell-Boltzmann velocities at temperature_k
    fixcom: bool = True  # md: i-PI removes the centre-of-mass motion
    outputs: tuple[Output, ...] = ()  # () = the standard outputs from the *_fs periods below
    species: tuple[str, ...] = ("H", "O")  # per-species temperature outputs
    geop_mode: str = "lbfgs"
    geop_fmax_ev_ang: float = 1e-4  # paper: 1e-4 eV/A for bulk
    geop_energy_ev: float = 1e-7  # energy change per atom
    geop_step_ang: float = 1e-4  # position change
    properties_fs: float = 2.0
    positions_fs: float = 10.0
    velocities_fs: float = 4.0
    forces_fs: float = 20.0
    checkpoint_fs: float = 500.0
    comment: str = field(default="", compare=False)

    @property
    def outer_dt_fs(self) -> float:
        return self.dt_fs * (self.mts_m if self.forces == "mts" else 1)

    def stride(self, every_fs: float) -> int:
        """Output stride in (outer) steps for a period in fs; at least 1."""
        if self.motion == "geop":
            return 1
        return max(1, int(round(every_fs / self.outer_dt_fs)))

    def check(self) -> None:
        """Raise VariantError for an impossible combination."""
        if self.motion not in ("md", "geop"):
            raise VariantError(f"motion '{self.motion}' unknown: use md or geop")
        if self.forces not in FORCES:
            raise VariantError(f"forces '{self.forces}' unknown (--forces): choose {', '.join(FORCES)}")
        if self.sockets not in SOCKETS:
            raise VariantError(f"sockets '{self.sockets}' unknown (--sockets): choose {', '.join(SOCKETS)}")
        if self.pes not in ("custom", "metatomic"):
            raise VariantError(f"pes '{self.pes}' unknown: use custom (our PES) or metatomic (i-PI's)")
        if self.steps < 1:
            raise VariantError(f"steps must be >= 1 (--steps), got {self.steps}")
        if self.beads < 1:
            raise VariantError(f"beads must be >= 1 (--beads), got {self.beads}")
        if self.contract_beads and not (1 <= self.contract_beads < self.beads):
            raise VariantError(f"contract-beads {self.contract_beads} must be between 1 and beads-1 "
                               f"({self.beads - 1})")
        if self.motion == "geop":
            if self.geop_mode not in GEOP_MODES:
                raise VariantError(f"geop mode '{self.geop_mode}' unknown (--geop-mode): choose {', '.join(GEOP_MODES)}")
            if self.forces == "mts":
                raise VariantError("forces 'mts' makes no sense for a geometry optimization: use conservative or direct")
            if self.beads != 1:
                raise VariantError("geometry optimization uses one bead (--beads 1)")
            return
        if self.dt_fs <= 0:
            raise VariantError(f"dt must be > 0 fs (--dt-fs), got {self.dt_fs}")
        if self.forces == "mts" and self.mts_m < 1:
            raise VariantError(f"M must be >= 1 (--mts-m), got {self.mts_m}")
        if self.verbosity not in VERBOSITIES:
            raise VariantError(f"verbosity '{self.verbosity}' unknown: choose {', '.join(VERBOSITIES)}")
        if self.batch_size < 0 or self.safe_stride < 1:
            raise VariantError(f"batch_size must be >= 0 and safe_stride >= 1, got {self.batch_size}, {self.safe_stride}")
        for out in self.outputs:
            if out.kind not in OUTPUT_KINDS or out.stride < 1:
                raise VariantError(f"output '{out.filename}': kind must be one of {', '.join(OUTPUT_KINDS)}, stride >= 1")
        if self.ensemble == "nve":  # with beads > 1: ring-polymer MD
            if self.thermostat:
                raise VariantError(f"ensemble nve takes no thermostat (got --thermostat {self.thermostat})")
        elif self.ensemble == "nvt":
            allowed = MD_THERMOSTATS if self.beads == 1 else PIMD_THERMOSTATS
            if self.beads == 1 and self.thermostat in PIMD_THERMOSTATS:
                allowed = MD_THERMOSTATS + PIMD_THERMOSTATS  # PILE on one bead = Langevin / SVR
            if self.thermostat not in allowed:
                raise VariantError(f"thermostat '{self.thermostat}' not available with {self.beads} bead(s) "
                                   f"(--thermostat): choose {', '.join(allowed)}")
            if self.tau_fs <= 0:
                raise VariantError(f"tau must be > 0 fs (--tau-fs), got {self.tau_fs}")
        else:
            raise VariantError(f"ensemble '{self.ensemble}' unknown (--ensemble): use nve or nvt")


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrib: str) -> etree._Element:
    element = etree.SubElement(parent, tag, {k: str(v) for k, v in attrib.items()})
    if text is not None:
        element.text = f" {text} "
    return element


def _fmt(x: float) -> str:
    return repr(float(x)) if not float(x).is_integer() else f"{float(x):.1f}"


def _gle_drift_matrix_au(tau_fs: float) -> list[list[float]]:
    """A canonical GLE drift matrix (1 physical + 2 auxiliary momenta), atomic units.

    The symmetric part is diagonal and positive, so with i-PI's default C = kT * 1 the
    noise B B^T = kT (A + A^T) is positive and the stationary distribution is canonical.
    The momentum friction is 1/tau; the auxiliary momenta couple at 1/(2 tau) and
    1/(10 tau) with oscillation at 1/tau, i.e. a coloured noise that is strongest in a
    frequency band instead of white (enough to expose what direct forces do to GLE).
    """
    per_fs = 1.0 / unit_to_internal("time", "femtosecond", 1.0)  # 1/fs in atomic units
    g = per_fs / tau_fs
    return [
        [g, 0.5 * g, 0.1 * g],
        [-0.5 * g, g, g],
        [-0.1 * g, -g, 0.2 * g],
    ]


def forcefield_names(v: Variant) -> list[str]:
    """Names of the forcefields a variant declares: ``cons`` and/or ``direct``."""
    return {CONSERVATIVE: ["cons"], DIRECT: ["direct"], "mts": ["cons", "direct"]}[v.forces]


def unix_address(v: Variant, forcefield: str) -> str:
    """The unix socket address of one forcefield (i-PI's socket file is /tmp/ipi_<address>)."""
    return f"{v.socket_address or v.name}-{forcefield}"


def _forcefields(v: Variant, root: etree._Element) -> None:
    """Add the <ffsocket>/<ffdirect> elements."""
    # PIMD: all beads in one request -> one batched model call in the driver
    batch_size = v.batch_size or (v.beads if v.beads > 1 else 0)
    for i, ff in enumerate(forcefield_names(v)):
        mode = CONSERVATIVE if ff == "cons" else DIRECT
        if v.sockets == "ffdirect":
            el = _sub(root, "ffdirect", name=ff)
            _sub(el, "pes", v.pes)
            if v.pes == "metatomic":
                extra = f", device: {v.device}" if v.device else ""
                nc = "True" if mode == DIRECT else "False"
                _sub(el, "parameters", f"{{model: {v.model}, template: {v.structure}, non_conservative: {nc}{extra}}}")
            else:
                _sub(el, "pes_path", v.pes_path)
                extra = "".join(f", {key}: {value}" for key, value in (("device", v.device), ("dtype", v.dtype)) if value)
                _sub(el, "parameters", f"{{model: {v.model}, template: {v.structure}, mode: {mode}{extra}}}")
            if v.batch_size:  # not by default: a contracted force asks fewer than `beads` structures
                _sub(el, "batch_size", str(v.batch_size))
            continue
        el = _sub(root, "ffsocket", name=ff, mode=v.sockets, pbc="false")
        if v.sockets == "unix":
            _sub(el, "address", unix_address(v, ff))
        else:
            _sub(el, "address", v.host)
            _sub(el, "port", str(v.port + i))
        _sub(el, "latency", f"{v.latency_s:g}")
        # a driver that hangs should stop the run, not stall it forever (seconds)
        _sub(el, "timeout", "600")
        if batch_size:
            _sub(el, "batch_size", str(batch_size))
        if v.consolidate_messages is not None:
            _sub(el, "consolidate_messages", str(v.consolidate_messages).lower())


def sockets_to_ffdirect(root: etree._Element) -> None:
    """Replace every ``<ffsocket>`` of an input (or checkpoint) tree by an ``<ffdirect>`` of the
    same name with our PES (``pbc`` and ``batch_size`` kept; the runner fills in pes_path and
    parameters as for any ``<ffdirect>``)."""
    for sock in root.findall("ffsocket"):
        direct = etree.Element("ffdirect", name=sock.get("name"), **({"pbc": sock.get("pbc")} if sock.get("pbc") else {}))
        for tag, text in (("pes", "custom"), ("pes_path", ""), ("parameters", "")):
            _sub(direct, tag, text)
        if sock.find("batch_size") is not None:
            _sub(direct, "batch_size", sock.find("batch_size").text.strip())
        direct.tail = sock.tail
        sock.getparent().replace(sock, direct)


def _force_components(v: Variant, system: etree._Element) -> None:
    forces = _sub(system, "forces")
    contract = {"nbeads": str(v.contract_beads)} if v.contract_beads else {}
    if v.forces == CONSERVATIVE:
        _sub(forces, "force", forcefield="cons", **contract)
    elif v.forces == DIRECT:
        _sub(forces, "force", forcefield="direct", **contract)
    elif not v.contract_beads:
        # outer level: cons - direct; inner level: direct. Each ff evaluated once per position.
        _sub(_sub(forces, "force", forcefield="cons"), "mts_weights", "[1, 0]")
        _sub(_sub(forces, "force", forcefield="direct"), "mts_weights", "[-1, 1]")
    else:
        # contracted slow part (cons - direct on contract_beads) + full-bead fast direct force
        _sub(_sub(forces, "force", forcefield="cons", **contract), "mts_weights", "[1, 0]")
        _sub(_sub(forces, "force", forcefield="direct", **contract), "mts_weights", "[-1, 0]")
        _sub(_sub(forces, "force", forcefield="direct"), "mts_weights", "[0, 1]")


def standard_outputs(v: Variant) -> tuple[Output, ...]:
    """The outputs of the shipped inputs, with periods from the variant's ``*_fs`` fields."""
    if v.motion == "geop":
        return (
            Output("properties", "out", "[ step, potential{electronvolt} ]"),
            Output("trajectory", "pos", "positions{angstrom}"),
            Output("trajectory", "frc", "forces{ev/ang}"),
            Output("checkpoint", "chk", stride=10),
        )
    props = ["step", "time{picosecond}", "conserved{electronvolt}", "temperature{kelvin}"]
    props += [f"temperature{{kelvin}}({s})" for s in v.species]
    props += ["kinetic_md{electronvolt}", "potential{electronvolt}"]
    if v.beads > 1:
        props += ["kinetic_cv{electronvolt}"] + [f"kinetic_cv{{electronvolt}}({s})" for s in v.species]
    # one bead: the physical trajectory; PIMD: the centroid (what diffusion and g(r) use)
    pos, vel = ("positions", "velocities") if v.beads == 1 else ("x_centroid", "v_centroid")
    frc = "forces{ev/ang}" if v.beads == 1 else "f_centroid{ev/ang}"
    return (
        Output("properties", "out", "[ " + ", ".join(props) + " ]", v.stride(v.properties_fs)),
        Output("trajectory", "pos", f"{pos}{{angstrom}}", v.stride(v.positions_fs)),
        Output("trajectory", "vel", f"{vel}{{atomic_unit}}", v.stride(v.velocities_fs)),
        Output("trajectory", "frc", frc, v.stride(v.forces_fs)),
        # numbered checkpoints: a kill while one is being written leaves the previous one intact
        Output("checkpoint", "chk", stride=v.stride(v.checkpoint_fs)),
    )


def _outputs(v: Variant, root: etree._Element) -> None:
    out = _sub(root, "output", prefix=v.prefix or v.name)
    for o in v.outputs or standard_outputs(v):
        if o.kind == "properties":
            _sub(out, "properties", o.what, filename=o.filename, stride=str(o.stride))
        elif o.kind == "trajectory":
            units = {"cell_units": "angstrom"} if o.format == "xyz" else {}
            _sub(out, "trajectory", o.what, filename=o.filename, stride=str(o.stride), format=o.format, **units)
        else:
            _sub(out, "checkpoint", filename=o.filename, stride=str(o.stride), overwrite="false")


def build(v: Variant) -> etree._Element:
    """The <simulation> element for a variant (raises VariantError if impossible)."""
    v.check()
    # checkpoints are written with floatformat: full double precision makes --resume exact
    root = etree.Element(
        "simulation", verbosity=v.verbosity, safe_stride=str(v.safe_stride), threading="false", floatformat="%.16e"
    )
    if v.comment:
        root.append(etree.Comment(f" {v.comment} "))
    _outputs(v, root)
    _sub(root, "total_steps", str(v.steps))
    prng = _sub(root, "prng")
    _sub(prng, "seed", str(v.seed))
    _forcefields(v, root)
    system = _sub(root, "system")
    init = _sub(system, "initialize", nbeads=str(v.beads))
    _sub(init, "file", v.structure, mode="xyz", units="angstrom")
    if v.motion == "md" and v.thermal_velocities:
        _sub(init, "velocities", _fmt(v.temperature_k), mode="thermal", units="kelvin")
    _force_components(v, system)
    if v.motion == "md":
        ens = _sub(system, "ensemble")
        _sub(ens, "temperature", _fmt(v.temperature_k), units="kelvin")
        motion = _sub(system, "motion", mode="dynamics")
        dyn = _sub(motion, "dynamics", mode=v.ensemble)
        _sub(dyn, "timestep", _fmt(v.outer_dt_fs), units="femtosecond")
        if v.forces == "mts":
            _sub(dyn, "nmts", f"[1, {v.mts_m}]")
        if v.ensemble == "nvt":
            th = _sub(dyn, "thermostat", mode=v.thermostat)
            if v.thermostat == "gle":
                a = _gle_drift_matrix_au(v.tau_fs)
                flat = ", ".join(f"{x:.10e}" for row in a for x in row)
                _sub(th, "A", f"[ {flat} ]", shape=f"({len(a)},{len(a)})")
            else:
                _sub(th, "tau", _fmt(v.tau_fs), units="femtosecond")
            if v.thermostat in PIMD_THERMOSTATS:
                _sub(th, "pile_lambda", f"{v.pile_lambda:g}")
        # direct forces have a non-zero sum: the engine, not the model, pins the centre of mass
        _sub(motion, "fixcom", "true" if v.fixcom else "false")
    else:
        motion = _sub(system, "motion", mode="minimize")
        geop = _sub(motion, "optimizer", mode=v.geop_mode)
        tol = _sub(geop, "tolerances")
        _sub(tol, "energy", f"{v.geop_energy_ev:g}", units="electronvolt")
        _sub(tol, "force", f"{v.geop_fmax_ev_ang:g}", units="ev/ang")
        _sub(tol, "position", f"{v.geop_step_ang:g}", units="angstrom")
        _sub(geop, "exit_on_convergence", "true")
    return root


def to_string(v: Variant) -> str:
    """The XML text of a variant (deterministic: same variant -> same bytes)."""
    return etree.tostring(build(v), pretty_print=True, encoding="unicode")


def write(v: Variant, path: str | Path) -> Path:
    """Write a variant to ``path`` after validating it with i-PI's input classes."""
    from ipi_ncforces.inputs.validate import validate_string

    path = Path(path)
    text = to_string(v)
    validate_string(text, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def shipped_variants(**overrides) -> dict[str, Variant]:
    """Relative path (under inputs/) -> variant, for every shipped input."""
    out: dict[str, Variant] = {}
    short = {CONSERVATIVE: "cons", DIRECT: "direct", "mts": "mts"}

    def add(rel: str, **kw) -> None:
        name = rel.split("/")[-1]
        kw = {**kw, **overrides}
        out[f"{rel}.xml"] = Variant(name=name, **kw)

    for f in FORCES:
        add(f"nve/nve-{short[f]}", forces=f, steps=20000 if f != "mts" else 2500)
    for f in FORCES:
        steps = 20000 if f != "mts" else 2500
        for tau in (10, 100, 1000):
            add(f"nvt/langevin-tau{tau}-{short[f]}", ensemble="nvt", thermostat="langevin", tau_fs=tau, forces=f, steps=steps)
        add(f"nvt/svr-tau10-{short[f]}", ensemble="nvt", thermostat="svr", tau_fs=10, forces=f, steps=steps)
        add(f"nvt/gle-{short[f]}", ensemble="nvt", thermostat="gle", tau_fs=100, forces=f, steps=steps)
    for th in PIMD_THERMOSTATS:
        for beads in (8, 32):
            for f in FORCES:
                steps = 4000 if f != "mts" else 500
                contract = 8 if beads == 32 else 0
                add(f"pimd/{th.replace('_', '')}-{beads}b-{short[f]}", ensemble="nvt", thermostat=th, tau_fs=100,
                    beads=beads, contract_beads=contract, forces=f, steps=steps)
    for mode in GEOP_MODES:
        for f in (CONSERVATIVE, DIRECT):
            add(f"geop/{mode}-{short[f]}", motion="geop", forces=f, steps=1000, geop_mode=mode)
    return out


def with_changes(v: Variant, **changes) -> Variant:
    """A copy of ``v`` with some fields replaced (dataclasses.replace, re-checked)."""
    new = dataclasses.replace(v, **changes)
    new.check()
    return new


def write_shipped(root: str | Path | None = None) -> list[Path]:
    """(Re)write every shipped input under ``root`` (default: this package's folder)."""
    root = Path(root) if root else Path(__file__).resolve().parent
    return [write(v, root / rel) for rel, v in shipped_variants().items()]


def steps_for_time(total_ps: float, v: Variant) -> int:
    """Outer steps that cover ``total_ps`` picoseconds."""
    return int(math.ceil(total_ps * 1000.0 / v.outer_dt_fs))
