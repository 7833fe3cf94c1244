"""Check an i-PI input with i-PI's own parser and input classes, without running it.

``xml_parse_string`` + ``InputSimulation.parse`` reject unknown tags, bad option values
and malformed arrays exactly as ``i-pi input.xml`` would; on top of that we check what
i-PI only notices mid-run: MTS weights that do not match ``nmts``, forcefields that no
force component uses (or a component naming a missing one), a missing structure file.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from lxml import etree


FIX_HINT = "; fix that element (i-PI's input reference lists the valid tags and attributes)"


class InputValidationError(ValueError):
    """Invalid input; the message is one line naming the file and the problem."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def validate_string(text: str, source: str = "<input>", base_dir: str | Path | None = None) -> None:
    """Raise InputValidationError if ``text`` is not a valid i-PI input.

    base_dir: folder the structure file is relative to (checked only if given).
    """
    from ipi.inputs.simulation import InputSimulation
    from ipi.utils.io.inputs.io_xml import xml_parse_string

    try:
        # i-PI prints half-lines ("Error parsing system from <...>") before raising
        with contextlib.redirect_stdout(io.StringIO()):
            parsed = xml_parse_string(text)
            if not parsed.fields or parsed.fields[0][0] != "simulation":
                raise ValueError("the root element must be <simulation>")
            simulation = InputSimulation()
            simulation.parse(parsed.fields[0][1])
        _check_options(simulation, "simulation")
    except InputValidationError as exc:
        raise InputValidationError(f"{source}: i-PI rejects the input: {exc}{FIX_HINT}") from None
    except BaseException as exc:  # i-PI raises ValueError, NameError, TypeError, SystemExit...
        raise InputValidationError(f"{source}: i-PI rejects the input: {_one_line(exc)}{FIX_HINT}") from None
    _check_semantics(text, source, base_dir)


def _check_options(node, path: str) -> None:
    """Run i-PI's own ``check()`` (allowed option values, required fields) on every
    element the input sets explicitly; ``parse`` alone only checks names and types,
    ``fetch`` would check the rest but also build the simulation."""
    from ipi.utils.inputvalue import Input

    for name in list(getattr(node, "attribs", {})) + list(getattr(node, "fields", {})):
        child = getattr(node, name, None)
        if isinstance(child, Input) and child._explicit:
            _check_options(child, f"{path}/{name}")
    for name, child in getattr(node, "extra", []):
        _check_options(child, f"{path}/{name}")
    try:
        node.check()
    except Exception as exc:
        raise InputValidationError(f"<{path}>: {_one_line(exc)}") from None


def _check_semantics(text: str, source: str, base_dir: str | Path | None) -> None:
    root = etree.fromstring(text.encode())
    ff_names = [el.get("name") for el in root if isinstance(el.tag, str) and el.tag.startswith("ff")]  # skip comments
    used = set()
    for system in root.iter("system"):
        nmts = system.find(".//dynamics/nmts")
        levels = len(nmts.text.strip().strip("[]").split(",")) if nmts is not None else 1
        for force in system.iterfind("forces/force"):
            name = force.get("forcefield")
            used.add(name)
            if name not in ff_names:
                raise InputValidationError(f"{source}: force component uses forcefield '{name}' but only "
                                           f"{ff_names} are defined")
            weights = force.find("mts_weights")
            n = len(weights.text.strip().strip("[]").split(",")) if weights is not None else 1
            if weights is not None and n != levels:
                raise InputValidationError(f"{source}: forcefield '{name}' has {n} mts_weights but <nmts> has "
                                           f"{levels} levels")
        init_file = system.find("initialize/file")
        if base_dir is not None and init_file is not None:
            path = Path(base_dir) / init_file.text.strip()
            if not path.is_file():
                raise InputValidationError(f"{source}: structure file '{path}' (<initialize><file>) does not exist")
    unused = [n for n in ff_names if n not in used]
    if unused:
        raise InputValidationError(f"{source}: forcefield(s) {unused} defined but not used by any <force>")


def validate_file(path: str | Path, check_structure: bool = True) -> None:
    """Validate an input file; the structure path is resolved next to the file."""
    path = Path(path)
    if not path.is_file():
        raise InputValidationError(f"{path}: no such input file")
    validate_string(path.read_text(), source=str(path), base_dir=path.parent if check_structure else None)
