"""Check a model against an i-PI input BEFORE anything is started or written.

``ipi-nc run`` calls :func:`check_model_for_input` first, so that a model that cannot
serve the input (unknown species, a mode it has no output for, a barostat without a
direct virial, a file that is no model) stops the run with one line while i-PI's
outputs of an earlier run stay untouched.
"""

from __future__ import annotations

from pathlib import Path

from lxml import etree

from ipi_ncforces.ipi_driver.evaluator import ForceEvaluator
from ipi_ncforces.ipi_driver.setup import SetupError, read_species
from ipi_ncforces.models.io import ModelFileError
from ipi_ncforces.models.loader import load_backend
from ipi_ncforces.models.modes import CORRECTION, DIRECT, HEADS_FOR_MODE

BAROSTAT_MODES = ("npt", "nst")


def barostat_in(tree: etree._ElementTree) -> str | None:
    """A short description of the barostat an i-PI input uses, or None (NVE/NVT/geop)."""
    root = tree.getroot()
    for dynamics in root.iter("dynamics"):
        mode = (dynamics.get("mode") or "").strip().lower()
        if mode in BAROSTAT_MODES:
            return f"<dynamics mode='{mode}'>"
    if next(root.iter("barostat"), None) is not None:
        return "a <barostat>"
    return None


def check_model_for_input(
    *,
    model_path: str | Path,
    structure_path: str | Path,
    modes: list[str],
    input_path: str | Path,
    tree: etree._ElementTree | None = None,
    device: str = "cpu",
    variant: str | None = None,
    extensions_directory: str | Path | None = None,
) -> None:
    """SetupError (one line naming the file and the fix) when the model cannot serve
    every mode in ``modes`` for the structure, or the input has a barostat and a direct
    or correction level whose model predicts no direct stress."""
    modes = sorted(set(modes))
    heads = tuple(sorted({h for mode in modes for h in HEADS_FOR_MODE[mode]}))
    species = read_species(structure_path)
    try:
        backend = load_backend(
            model_path,
            require_heads=heads,
            device=device,
            variant=variant,
            extensions_directory=extensions_directory,
            neighbor_skin_ang=0.0,
        )
        for mode in modes:
            ForceEvaluator(backend, species, mode)
    except (ModelFileError, ValueError) as exc:
        raise SetupError(f"{exc} [--model, input '{input_path}']".splitlines()[0]) from None
    tree = tree if tree is not None else etree.parse(str(input_path))
    barostat = barostat_in(tree)
    direct_levels = [m for m in modes if m in (DIRECT, CORRECTION)]
    if barostat and direct_levels and not backend.predicts_direct_virial:
        raise SetupError(
            f"input '{input_path}' has {barostat} but model '{model_path}' predicts no direct stress, so the "
            f"{direct_levels[0]} level has no virial: use conservative forces or a model with non_conservative_stress"
        )
