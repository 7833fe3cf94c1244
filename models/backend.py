"""The seam between the force evaluator and a model: what any model file must answer.

A backend evaluates one loaded model on a :class:`ipi_ncforces.models.base.Batch` and
returns a :class:`ipi_ncforces.models.base.Prediction` (eV, eV/A, eV):

* conservative: energy, forces ``-dE/dr`` and virial ``-dE/dstrain`` (autograd);
* direct: per-atom direct forces and, where the model has them, a direct virial;
* both from ONE backbone pass when both are asked for.

Two implementations: :class:`NativeBackend` (our :class:`PotentialModel` files, via
:func:`ipi_ncforces.models.base.evaluate`) and
:class:`ipi_ncforces.models.metatomic.MetatomicBackend` (metatomic ``AtomisticModel``
TorchScript files). Which one a file needs is decided by
:func:`ipi_ncforces.models.loader.load_backend`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ipi_ncforces.models.base import Batch, PotentialModel, Prediction, evaluate


class ModelBackend(ABC):
    """One loaded model, ready to evaluate.

    heads: the subset of ("energy", "direct") the model can serve.
    species: atomic numbers the model knows.
    device, dtype: where and in which precision it runs (inputs are moved there).
    predicts_direct_virial: whether the direct side also gives a virial.
    source: the file the model came from (for messages), or a short description.
    """

    heads: tuple[str, ...]
    species: tuple[int, ...]
    device: torch.device
    dtype: torch.dtype
    predicts_direct_virial: bool
    source: str

    @abstractmethod
    def evaluate(
        self, batch: Batch, *, conservative: bool = True, direct: bool = False, virial: bool = True, energy: bool = True
    ) -> Prediction:
        """Same contract as :func:`ipi_ncforces.models.base.evaluate`."""

    def check_species(self, species: torch.Tensor) -> None:
        """ValueError naming the atomic numbers the model does not know."""
        unknown = sorted(set(int(z) for z in species.tolist()) - set(self.species))
        if unknown:
            raise ValueError(
                f"structure contains atomic numbers {unknown} unknown to model '{self.source}' "
                f"(it knows {list(self.species)}): use a model trained for these elements"
            )

    def require_head(self, head: str) -> None:
        if head not in self.heads:
            raise ValueError(
                f"model '{self.source}' has no '{head}' output (it has: {', '.join(self.heads) or 'none'}); "
                "pick a mode this model supports"
            )


class NativeBackend(ModelBackend):
    """An ipi-ncforces :class:`PotentialModel` (already on its device, in its dtype)."""

    def __init__(self, model: PotentialModel, source: str | None = None):
        self.model = model
        self.heads = tuple(model.heads)
        self.species = tuple(model.species)
        self.predicts_direct_virial = bool(model.predicts_direct_virial)
        self.source = source or type(model).__name__
        self.device = model.device
        self.dtype = model.dtype

    @property
    def cutoff(self) -> float:
        """The model's neighbour cutoff (A)."""
        return float(self.model.cutoff)

    def evaluate(
        self, batch: Batch, *, conservative: bool = True, direct: bool = False, virial: bool = True, energy: bool = True
    ) -> Prediction:
        return evaluate(self.model, batch, conservative=conservative, direct=direct, virial=virial, energy=energy)


def as_backend(model: PotentialModel | ModelBackend) -> ModelBackend:
    """A backend for ``model`` (our own models are wrapped; backends pass through)."""
    if isinstance(model, ModelBackend):
        return model
    if isinstance(model, PotentialModel):
        return NativeBackend(model)
    raise TypeError(f"expected a PotentialModel or a ModelBackend, got {type(model).__name__}")
