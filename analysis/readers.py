"""Find and read i-PI outputs (properties and trajectories) in analysis units.

A RUN on the command line is either an i-PI output prefix (``runs/nve/simulation``)
or a directory holding the outputs of one i-PI run (``runs/nve/``). Files found:

- properties: ``<prefix>.out`` (any file whose first line is an i-PI ``# column``
  header is accepted; ``.out`` wins when there are several);
- trajectories: ``<prefix>.<name>_<bead>.<ext>`` (one per bead, PIMD) and
  ``<prefix>.<name>.<ext>`` (e.g. centroid), ext in xyz/pdb/extxyz. What a file
  holds (positions, velocities, forces, x_centroid, ...) is read from its comment
  line (``velocities{atomic_unit}``), not guessed from its name.

Properties are read with ``ipi.scripting.parsing.read_output`` (formerly
``ipi.utils.parsing``), trajectories with ``read_trajectory``; units come from the
headers and are converted with ``ipi.utils.units``. A column or frame without units
is taken in i-PI's default (atomic units) with a warning. A truncated last line or
frame is dropped with a warning; other damage raises :class:`AnalysisInputError`.

Analysis units: time ps, energy eV, temperature K, length A, velocity A/ps,
force eV/A, mass amu.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ipi.scripting.parsing import read_output, read_trajectory
from ipi.utils.units import unit_to_internal, unit_to_user

# i-PI dimension -> unit string used by the analysis (i-PI unit names)
ANALYSIS_UNITS: dict[str, str] = {
    "energy": "electronvolt",
    "time": "picosecond",
    "temperature": "kelvin",
    "length": "angstrom",
    "force": "ev/ang",
    "velocity": "atomic_unit",  # converted to A/ps by hand below (i-PI has no A/ps name)
}
ANGSTROM_PER_PS_PER_AU_VELOCITY: float = float(
    unit_to_user("length", "angstrom", 1.0) / unit_to_user("time", "picosecond", 1.0)
)
TRAJECTORY_EXTENSIONS = ("xyz", "pdb", "extxyz")


class AnalysisInputError(Exception):
    """A RUN or an output file cannot be used; the message names it and says what to do."""


class AnalysisWarning(UserWarning):
    """Something was assumed or dropped while reading; the message says what was used."""


def warn(messages: list[str] | None, text: str) -> None:
    """Emit ``text`` as an :class:`AnalysisWarning` and keep it for the report."""
    warnings.warn(text, AnalysisWarning, stacklevel=2)
    if messages is not None:
        messages.append(text)


def property_dimension(name: str) -> str:
    """i-PI dimension ("energy", "time", ...) of a property column such as ``temperature(H)``."""
    base = name.split("(")[0]
    try:
        from ipi.engine.properties import Properties

        return Properties().property_dict[base]["dimension"]
    except Exception:  # unknown or user-defined property
        return "undefined"


@dataclass
class Properties:
    """Columns of an i-PI properties file, converted to analysis units.

    values: column name (as in the header, e.g. ``temperature(H)``) -> array (n_steps,)
    or (n_steps, k) for multi-column properties. units: name -> analysis unit string.
    """

    path: Path
    values: dict[str, np.ndarray]
    units: dict[str, str]
    warnings: list[str] = field(default_factory=list)

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]

    def require(self, name: str, what: str) -> np.ndarray:
        """Column ``name`` or an error saying which property to add to the i-PI input."""
        if name not in self.values:
            raise AnalysisInputError(
                f"{self.path}: no '{name}' column, needed for {what}; add {name} to the "
                f"<properties> of the i-PI input (columns present: {', '.join(self.values)})"
            )
        return self.values[name]


def _clean_table_lines(path: Path, messages: list[str]) -> tuple[list[str], bool]:
    """Header + well-formed data lines; drops a truncated last line (with a warning)."""
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    header = [ln for ln in lines if ln.startswith("#")]
    ncols = 0
    for ln in header:
        m = re.match(r"#\s*(?:column|cols\.)\s+(\d+)(?:-(\d+))?", ln)
        if m:
            ncols = max(ncols, int(m.group(2) or m.group(1)))
    if ncols == 0:
        raise AnalysisInputError(
            f"{path}: no i-PI '# column N --> name{{unit}}' header; is this an i-PI properties file?"
        )
    data_idx = [i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith("#")]
    bad = []
    for i in data_idx:
        fields = lines[i].split()
        ok = len(fields) == ncols
        if ok:
            try:
                [float(x) for x in fields]
            except ValueError:
                ok = False
        if not ok:
            bad.append(i)
    changed = False
    if bad:
        last = data_idx[-1]
        if bad == [last]:  # i-PI was killed (or is still running) while writing it
            warn(messages, f"{path}: last line (line {last + 1}) is truncated; dropped it and used "
                 f"the {len(data_idx) - 1} complete lines")
            lines = lines[:last]
            changed = True
        else:
            raise AnalysisInputError(
                f"{path}: line {bad[0] + 1} does not have {ncols} numeric columns; the file is "
                f"damaged (fix or cut it at that line)"
            )
    if len(data_idx) - (1 if changed else 0) == 0:
        raise AnalysisInputError(f"{path}: no data lines; did the i-PI run write any step?")
    return lines, changed


@contextlib.contextmanager
def _complete_part(path: Path, lines: list[str] | None):
    """Name of ``path``, or (``lines`` given: the complete part of a file whose last line or
    frame was cut) of a temporary copy holding only ``lines``, removed afterwards."""
    if lines is None:
        yield str(path)
        return
    with tempfile.NamedTemporaryFile("w", suffix=path.suffix, delete=False) as tmp:
        tmp.writelines(lines)
    try:
        yield tmp.name
    finally:
        os.unlink(tmp.name)


def read_properties(path: str | os.PathLike) -> Properties:
    """Read an i-PI properties file with i-PI's ``read_output``; convert to analysis units.

    Columns of dimension energy/time/temperature/length/force are converted to
    eV/ps/K/A/(eV/A); a column with no unit in its header is taken as atomic units
    (i-PI's default) and a warning says so.
    """
    path = Path(path)
    if not path.is_file():
        raise AnalysisInputError(f"{path}: properties file not found")
    messages: list[str] = []
    lines, changed = _clean_table_lines(path, messages)
    with _complete_part(path, lines if changed else None) as name:
        raw, info = read_output(name)
    values: dict[str, np.ndarray] = {}
    units: dict[str, str] = {}
    for name, arr in raw.items():
        arr = np.atleast_1d(np.asarray(arr, dtype=float))
        unit = info[name][0]
        dim = property_dimension(name)
        target = ANALYSIS_UNITS.get(dim)
        if target is not None and dim != "velocity":
            if not unit:
                warn(messages, f"{path}: column '{name}' has no unit in its header; "
                     f"assumed i-PI's default atomic units for this {dim}")
                unit = "atomic_unit"
            try:
                arr = unit_to_user(dim, target, unit_to_internal(dim, unit, arr))
            except (TypeError, ValueError, IndexError):
                raise AnalysisInputError(f"{path}: column '{name}' has unit '{unit}', which i-PI does not "
                                         f"know for a {dim}; fix the header") from None
            units[name] = target
        else:
            units[name] = unit or ("" if dim in ("number", "undefined") else "atomic_unit")
        values[name] = arr
    return Properties(path=path, values=values, units=units, warnings=messages)


@dataclass
class Trajectory:
    """One i-PI trajectory file in analysis units.

    kind: what the file holds (``positions``, ``velocities``, ``forces``, ``x_centroid``,
    ...). data: (n_frames, n_atoms, 3) in A, A/ps or eV/A. cells: (n_frames, 3, 3) A,
    rows = lattice vectors. steps: MD step of each frame. bead: bead index or None.
    """

    path: Path
    kind: str
    symbols: list[str]
    masses_amu: np.ndarray
    steps: np.ndarray
    data: np.ndarray
    cells: np.ndarray
    bead: int | None
    warnings: list[str] = field(default_factory=list)

    @property
    def n_atoms(self) -> int:
        return len(self.symbols)


_COMMENT_UNITS = re.compile(r"(\w+)\{([^}]+)\}")
_DIMENSION_OF_KIND = {
    "positions": "length", "x_centroid": "length", "velocities": "velocity",
    "v_centroid": "velocity", "forces": "force", "f_centroid": "force",
    "momenta": "momentum", "p_centroid": "momentum",
}


def _xyz_complete_lines(path: Path, messages: list[str]) -> tuple[list[str], bool, str, list[int]]:
    """Lines of the complete frames of an xyz file, whether a partial frame was cut, the first
    comment, and the step of each frame (from ``Step: N`` in the comments; -1 if absent)."""
    lines = path.read_text().splitlines(keepends=True)
    i, good_end, nframes = 0, 0, 0
    steps: list[int] = []
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        try:
            natoms = int(lines[i].split()[0])
        except (ValueError, IndexError):
            raise AnalysisInputError(
                f"{path}: line {i + 1} should hold the atom count of a frame; the file is damaged "
                f"(fix or cut it at that line)"
            ) from None
        end = i + 2 + natoms
        frame_ok = end <= len(lines) and all(len(ln.split()) >= 4 for ln in lines[i + 2:end])
        if not frame_ok:
            if end >= len(lines):
                warn(messages, f"{path}: last frame (from line {i + 1}) is truncated; dropped it "
                     f"and used the {nframes} complete frames")
                break
            raise AnalysisInputError(f"{path}: frame starting at line {i + 1} is damaged")
        nframes += 1
        step = re.search(r"Step:\s+(\d+)", lines[i + 1])
        steps.append(int(step.group(1)) if step else -1)
        good_end = end
        i = end
    if nframes == 0:
        raise AnalysisInputError(f"{path}: no complete frame; did the i-PI run write any step?")
    comment = lines[1] if len(lines) > 1 else ""
    return lines[:good_end], any(ln.strip() for ln in lines[good_end:]), comment, steps


def trajectory_kind(path: Path) -> str:
    """What an i-PI trajectory file holds, from its first comment line (or its name)."""
    comment = ""
    try:
        with open(path) as fh:
            if path.suffix == ".pdb":
                for ln in fh:
                    if ln.startswith(("TITLE", "REMARK")):
                        comment = ln
                        break
            else:
                fh.readline()
                comment = fh.readline()
    except OSError as exc:
        raise AnalysisInputError(f"{path}: cannot read ({exc})") from None
    m = _COMMENT_UNITS.findall(comment)
    if m:
        return m[0][0]
    name = path.name.split(".")[-2] if path.name.count(".") >= 2 else path.stem
    name = re.sub(r"_\d+$", "", name)
    return {"pos": "positions", "vel": "velocities", "for": "forces", "xc": "x_centroid",
            "vc": "v_centroid"}.get(name, "positions")


def read_traj(path: str | os.PathLike) -> Trajectory:
    """Read an i-PI trajectory (xyz/pdb/extxyz) with i-PI's ``read_trajectory``.

    Units come from the comment line (``positions{angstrom} cell{angstrom}``); a file
    without them is read in i-PI's default atomic units with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise AnalysisInputError(f"{path}: trajectory file not found")
    messages: list[str] = []
    fmt = path.suffix.lstrip(".")
    if fmt not in TRAJECTORY_EXTENSIONS:
        raise AnalysisInputError(f"{path}: unknown trajectory format '.{fmt}' (use xyz, pdb or extxyz)")
    kind = trajectory_kind(path)
    complete_lines = None
    xyz_steps: list[int] = []
    if fmt == "xyz":
        lines, cut, comment, xyz_steps = _xyz_complete_lines(path, messages)
        if not _COMMENT_UNITS.search(comment):
            warn(messages, f"{path}: no units in the comment line; assumed i-PI's default "
                 f"atomic units (Bohr, atomic velocity/force units)")
        complete_lines = lines if cut else None
    try:
        with warnings.catch_warnings(), _complete_part(path, complete_lines) as name:
            warnings.simplefilter("ignore", DeprecationWarning)
            frames = read_trajectory(name, format="ase" if fmt == "extxyz" else fmt)
    except Exception as exc:
        raise AnalysisInputError(f"{path}: i-PI could not read this trajectory ({type(exc).__name__}: {exc})") from None
    if not frames:
        raise AnalysisInputError(f"{path}: no frames")
    first = frames[0]
    if kind in ("positions", "x_centroid") or kind not in _DIMENSION_OF_KIND:
        data = np.array([f.positions for f in frames])
    else:
        key = kind if kind in first.arrays else next(
            (k for k in first.arrays if k not in ("numbers", "positions")), None)
        if key is None:
            raise AnalysisInputError(f"{path}: could not find the '{kind}' values in the frames")
        data = np.array([f.arrays[key] for f in frames])
        if _DIMENSION_OF_KIND[kind] == "velocity":
            # read_trajectory returns ASE velocity units; go back to atomic units, then A/ps
            data = unit_to_internal("velocity", "ase", data) * ANGSTROM_PER_PS_PER_AU_VELOCITY
    # i-PI 3.3.1's read_trajectory keeps only the first digit of "Step: 10": use our own
    if len(xyz_steps) == len(frames) and min(xyz_steps, default=-1) >= 0:
        steps = np.array(xyz_steps, dtype=int)
    else:
        steps = np.array([f.info.get("step", i) for i, f in enumerate(frames)], dtype=int)
    return Trajectory(
        path=path,
        kind=kind,
        symbols=first.get_chemical_symbols(),
        masses_amu=first.get_masses(),
        steps=steps,
        data=data,
        cells=np.array([np.asarray(f.cell) for f in frames]),
        bead=_bead_index(path),
        warnings=messages,
    )


@dataclass
class RunFiles:
    """The i-PI output files of one run. trajectories: kind -> files sorted by bead."""

    name: str
    prefix: Path
    properties: Path | None
    trajectories: dict[str, list[Path]]

    def trajectory_files(self, *kinds: str) -> list[Path]:
        """Files of the first of ``kinds`` that the run has (empty list if none)."""
        for kind in kinds:
            if self.trajectories.get(kind):
                return self.trajectories[kind]
        return []

    def read_beads(self, kinds: tuple[str, ...], missing: str) -> tuple[list["Trajectory"], list[str]]:
        """Every bead file of the first of ``kinds`` the run has, read, plus their warnings.

        Raises AnalysisInputError("<prefix>: <missing>") when the run has none of ``kinds``.
        """
        files = self.trajectory_files(*kinds)
        if not files:
            raise AnalysisInputError(f"{self.prefix}: {missing}")
        beads = [read_traj(p) for p in files]
        return beads, [w for b in beads for w in b.warnings]


def _bead_index(path: Path) -> int | None:
    """Bead of a per-bead trajectory (``<prefix>.pos_03.xyz`` -> 3); None for one without."""
    match = re.search(r"_(\d+)\.\w+$", path.name)
    return int(match.group(1)) if match else None


def _is_properties_file(path: Path) -> bool:
    try:
        with open(path) as fh:
            return re.match(r"#\s*(column|cols\.)\s+\d+", fh.readline()) is not None
    except (OSError, UnicodeDecodeError):
        return False


def find_run(run: str | os.PathLike) -> RunFiles:
    """Locate the properties and trajectory files of RUN (a directory or an output prefix)."""
    run_path = Path(run)
    if run_path.is_dir():
        candidates = sorted(p for p in run_path.iterdir() if p.is_file())
        props = [p for p in candidates if p.suffix == ".out" and _is_properties_file(p)]
        prefixes = sorted({p.name.split(".")[0] for p in props})
        if not prefixes:
            trajs = [p for p in candidates if p.suffix.lstrip(".") in TRAJECTORY_EXTENSIONS
                     and p.name.count(".") >= 2]
            prefixes = sorted({p.name.split(".")[0] for p in trajs})
        if not prefixes:
            raise AnalysisInputError(
                f"{run_path}: no i-PI outputs (<prefix>.out or <prefix>.<traj>.xyz) in this directory")
        if len(prefixes) > 1:
            raise AnalysisInputError(
                f"{run_path}: outputs of several runs ({', '.join(prefixes)}); pass the prefix, "
                f"e.g. {run_path / prefixes[0]}")
        prefix = run_path / prefixes[0]
        name = run_path.resolve().name
    else:
        prefix = run_path
        if not prefix.parent.is_dir():
            raise AnalysisInputError(f"{run}: neither a directory nor an i-PI output prefix")
        name = prefix.name if prefix.name not in ("simulation", "sim") else prefix.resolve().parent.name
    siblings = sorted(prefix.parent.glob(prefix.name + ".*"))
    out_file = prefix.parent / (prefix.name + ".out")
    properties = out_file if out_file.is_file() else next((p for p in siblings if _is_properties_file(p)), None)
    trajectories: dict[str, list[Path]] = {}
    for p in siblings:
        if p.suffix.lstrip(".") in TRAJECTORY_EXTENSIONS and p.name.count(".") >= 2:
            trajectories.setdefault(trajectory_kind(p), []).append(p)
    for files in trajectories.values():
        files.sort(key=lambda p: (_bead_index(p) if _bead_index(p) is not None else -1, p.name))
    if properties is None and not trajectories:
        raise AnalysisInputError(f"{run}: neither a directory of i-PI outputs nor an output prefix "
                                 f"(no files {prefix}.*); pass runs/NAME/ or runs/NAME/simulation")
    return RunFiles(name=name, prefix=prefix, properties=properties, trajectories=trajectories)


def timestep_ps(run: RunFiles, override_fs: float | None = None) -> float:
    """Time per MD step in ps: from --timestep-fs, else from the time/step columns."""
    if override_fs is not None:
        return override_fs * 1e-3
    if run.properties is not None:
        props = read_properties(run.properties)
        if "time" in props and "step" in props and len(props["step"]) > 1:
            steps, times = props["step"], props["time"]
            if steps[-1] != steps[0]:
                return float((times[-1] - times[0]) / (steps[-1] - steps[0]))
    raise AnalysisInputError(
        f"{run.prefix}: cannot tell the time step (no 'step' and 'time{{picosecond}}' columns in "
        f"the properties); pass --timestep-fs")


def species_masks(symbols: list[str]) -> dict[str, np.ndarray]:
    """Boolean mask per chemical symbol, in order of first appearance."""
    sym = np.array(symbols)
    return {s: sym == s for s in dict.fromkeys(symbols)}
