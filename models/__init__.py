"""Torch potentials for ipi-ncforces (eV, Angstrom, float32 or float64).

Every potential implements :class:`ipi_ncforces.models.base.PotentialModel`; drivers, Jacobian
tools and benchmarks only call :func:`ipi_ncforces.models.base.evaluate` on a
:class:`ipi_ncforces.models.base.Batch`.
"""

from pathlib import Path

SHIPPED_MODELS_DIR = Path(__file__).resolve().parent / "data"
"""The shipped models (``water-{c,nc,m}.pt``) and their summary ``water-models.json``."""


def __getattr__(name: str):
    # lazy, so that the torch-free modules (modes, units, structure_io) import without torch
    if name in ("Batch", "Prediction", "PotentialModel", "evaluate"):
        from ipi_ncforces.models import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["Batch", "Prediction", "PotentialModel", "evaluate", "SHIPPED_MODELS_DIR"]
