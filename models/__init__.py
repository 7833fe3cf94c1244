"""Torch potentials for ipi-ncforces (eV, Angstrom, float32 or float64).

Every potential implements :class:`models.base.PotentialModel`; drivers, Jacobian
tools and benchmarks only call :func:`models.base.evaluate` on a
:class:`models.base.Batch`.
"""

from models.base import Batch, Prediction, PotentialModel, evaluate

__all__ = ["Batch", "Prediction", "PotentialModel", "evaluate"]
