"""Serve a metatomic ``AtomisticModel`` file (TorchScript) through the backend seam.

Follows i-PI 3.3.1's ``ipi/pes/metatomic.py`` so that both give the same numbers:

* conservative: positions and a 3x3 strain (identity, requires_grad) per structure,
  ``positions @ strain``, ``cell @ strain``; one ``autograd.grad`` of the summed energy
  gives forces ``-dE/dr`` (eV/A) and the virial ``-dE/dstrain`` (eV), symmetrised;
* direct: ``non_conservative_force`` (eV/A; the deprecated ``non_conservative_forces``
  name is mapped by ``AtomisticModel``), and the virial ``-stress * |det(cell)|`` (eV)
  from ``non_conservative_stress`` when the model has it;
* neighbour lists from the model's own requests (``vesin.metatomic``), with a Verlet skin;
* the model's dtype; a device from its ``supported_devices``; ``--variant`` picks
  ``energy/V``, ``non_conservative_force/V``, ``non_conservative_stress/V``.

A whole batch (i-PI beads, replicas) is ONE model call. Net-force removal is left to the
caller (:class:`ipi_ncforces.ipi_driver.evaluator.ForceEvaluator`), as for our models.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from ipi_ncforces.models.backend import ModelBackend
from ipi_ncforces.models.base import DIRECT_HEAD, DTYPES, ENERGY_HEAD, Batch, Prediction

ENERGY_OUTPUT = "energy"
FORCE_OUTPUT = "non_conservative_force"
FORCE_OUTPUT_DEPRECATED = "non_conservative_forces"
STRESS_OUTPUT = "non_conservative_stress"


class MetatomicLoadError(ValueError):
    """A metatomic file that cannot be served; one line naming the file and the fix."""


@contextmanager
def _quiet() -> Iterator[None]:
    """metatomic warns about deprecated names and torch.jit; keep the driver's stderr readable."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        yield


def load_atomistic(path: str | Path, extensions_directory: str | Path | None = None):
    """``metatomic.torch.load_atomistic_model`` (TorchScript: no pickle), with one-line errors."""
    import metatomic.torch as mta

    path = Path(path)
    try:
        with _quiet():
            return mta.load_atomistic_model(
            str(path), extensions_directory=None if extensions_directory is None else str(extensions_directory)
        )
    except Exception as exc:
        text = str(exc)
        if "extension" in text.lower() or "Unknown builtin op" in text or "Unknown type name" in text:
            where = (
                "pass --extensions DIR with the directory the model was exported with"
                if extensions_directory is None
                else f"the extensions directory '{extensions_directory}' does not hold them"
            )
            raise MetatomicLoadError(
                f"metatomic model '{path}' needs TorchScript extensions that could not be loaded: {where}"
            ) from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise MetatomicLoadError(f"cannot load metatomic model '{path}': {first}") from None


class MetatomicBackend(ModelBackend):
    """A metatomic model file as a :class:`ModelBackend`.

    path: the ``.pt`` TorchScript file. device: "cpu", "cuda", "cuda:K" (checked against
    the model's supported devices). dtype: None = the model's; another dtype is an error.
    variant: output variant (``energy/VARIANT`` ...), None = the default outputs.
    extensions_directory: where the model's TorchScript extensions live.
    check_consistency: let metatomic check inputs and outputs on every call (slow).
    neighbor_skin_ang: Verlet skin (A) of vesin's neighbour lists (0 = rebuild each call).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        variant: str | None = None,
        extensions_directory: str | Path | None = None,
        check_consistency: bool = False,
        neighbor_skin_ang: float = 0.5,
    ):
        import metatomic.torch as mta

        self.source = str(path)
        self.atomistic = load_atomistic(path, extensions_directory)
        capabilities = self.atomistic.capabilities()
        self.capabilities = capabilities
        self.check_consistency = bool(check_consistency)
        self.neighbor_skin_ang = float(neighbor_skin_ang)

        model_dtype = DTYPES[capabilities.dtype]
        if isinstance(dtype, str):
            dtype = DTYPES.get(dtype)
        if dtype is not None and dtype != model_dtype:
            raise MetatomicLoadError(
                f"metatomic model '{path}' runs in {capabilities.dtype}; drop --dtype or ask for {capabilities.dtype}"
            )
        self.dtype = model_dtype
        try:
            picked = mta.pick_device(list(capabilities.supported_devices), device)
        except Exception as exc:
            raise MetatomicLoadError(
                f"metatomic model '{path}' cannot run on '{device}' (supports "
                f"{', '.join(capabilities.supported_devices)}): {str(exc).splitlines()[0]}"
            ) from None
        self.device = torch.device(picked)
        self.atomistic = self.atomistic.to(self.device)

        outputs = dict(capabilities.outputs)
        self.variant = variant
        self.energy_key = self._pick(mta, ENERGY_OUTPUT, outputs, variant)
        self.force_key = self._pick(mta, FORCE_OUTPUT, outputs, variant)
        if self.force_key is None:
            self.force_key = self._pick(mta, FORCE_OUTPUT_DEPRECATED, outputs, variant)
        self.stress_key = self._pick(mta, STRESS_OUTPUT, outputs, variant) if self.force_key else None
        if variant is not None and self.energy_key is None and self.force_key is None:
            raise MetatomicLoadError(
                f"metatomic model '{path}' has no output with variant '{variant}' (outputs: "
                f"{', '.join(sorted(outputs))}); pick a --variant listed there"
            )
        heads = []
        if self.energy_key is not None:
            heads.append(ENERGY_HEAD)
        if self.force_key is not None:
            heads.append(DIRECT_HEAD)
        self.heads = tuple(heads)
        self.species = tuple(int(z) for z in capabilities.atomic_types)
        self.predicts_direct_virial = self.stress_key is not None
        self._mta = mta
        self._calculators: list[list] = []  # one set of vesin calculators per batch slot
        self._energy_output = mta.ModelOutput(unit="eV", sample_kind="system")
        self._force_output = mta.ModelOutput(unit="eV/Angstrom", sample_kind="atom")
        self._stress_output = mta.ModelOutput(unit="eV/Angstrom^3", sample_kind="system")

    @staticmethod
    def _pick(mta, name: str, outputs: dict, variant: str | None) -> str | None:
        """The output key serving ``name`` (with ``variant``), None if the model has none."""
        if not any(key == name or key.startswith(name + "/") for key in outputs):
            return None
        try:
            return mta.pick_output(name, outputs, variant)
        except Exception:
            return None

    def metadata(self):
        return self.atomistic.metadata()

    def _neighbor_calculators(self, slot: int) -> list:
        from vesin.metatomic import neighbor_lists_for_model

        while len(self._calculators) <= slot:
            self._calculators.append(
                neighbor_lists_for_model(
                    "angstrom", self.atomistic, check_consistency=self.check_consistency, skin=self.neighbor_skin_ang
                )
            )
        return self._calculators[slot]

    def _systems(self, batch: Batch, strained: bool) -> tuple[list, list, list]:
        """metatomic Systems (Angstrom), and the leaf positions / strains autograd starts from."""
        types = batch.species.to(device=self.device, dtype=torch.int32)
        systems, leaves, strains = [], [], []
        for b in range(batch.n_structures):
            positions = batch.positions[b].detach().to(device=self.device, dtype=self.dtype)
            cell = batch.cells[b].detach().to(device=self.device, dtype=self.dtype)
            pbc = torch.linalg.norm(cell, dim=1) != 0.0
            if strained:
                positions = positions.clone().requires_grad_(True)
                strain = torch.eye(3, dtype=self.dtype, device=self.device, requires_grad=True)
                leaves.append(positions)
                strains.append(strain)
                system = self._mta.System(types, positions @ strain, cell @ strain, pbc)
            else:
                system = self._mta.System(types, positions, cell, pbc)
            for calculator in self._neighbor_calculators(b):
                calculator.add_neighbor_list(system)
            systems.append(system)
        return systems, leaves, strains

    @property
    def cutoff(self) -> float:
        """Largest neighbour-list cutoff the model requests (A); its interaction range if none."""
        cutoffs = [options.cutoff for options in self.atomistic.requested_neighbor_lists()]
        return float(max(cutoffs)) if cutoffs else float(self.capabilities.interaction_range)

    def __call__(self, batch: Batch, heads: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Like :meth:`PotentialModel.forward`: the requested heads as functions of
        ``batch.positions`` and ``batch.cells`` WITH their autograd graph (for Jacobians):
        "energy" (B,) eV, "direct_forces" (B, N, 3) eV/A (no mean-force removal)."""
        for head in heads:
            self.require_head(head)
        outputs = {}
        if ENERGY_HEAD in heads:
            outputs[self.energy_key] = self._energy_output
        if DIRECT_HEAD in heads:
            outputs[self.force_key] = self._force_output
        options = self._mta.ModelEvaluationOptions(length_unit="angstrom", outputs=outputs)
        types = batch.species.to(device=self.device, dtype=torch.int32)
        systems = []
        for b in range(batch.n_structures):
            cell = batch.cells[b].to(device=self.device, dtype=self.dtype)
            pbc = torch.linalg.norm(cell.detach(), dim=1) != 0.0
            system = self._mta.System(types, batch.positions[b].to(device=self.device, dtype=self.dtype), cell, pbc)
            for calculator in self._neighbor_calculators(b):
                calculator.add_neighbor_list(system)
            systems.append(system)
        with _quiet():
            result = self.atomistic(systems, options, check_consistency=self.check_consistency)
        out = {}
        if ENERGY_HEAD in heads:
            out["energy"] = result[self.energy_key].block().values.reshape(batch.n_structures)
        if DIRECT_HEAD in heads:
            out["direct_forces"] = result[self.force_key].block().values.reshape(batch.n_structures, batch.n_atoms, 3)
        return out

    def evaluate(
        self, batch: Batch, *, conservative: bool = True, direct: bool = False, virial: bool = True, energy: bool = True
    ) -> Prediction:
        if conservative:
            self.require_head(ENERGY_HEAD)
        if direct:
            self.require_head(DIRECT_HEAD)
        outputs = {}
        if conservative or (energy and self.energy_key is not None):
            outputs[self.energy_key] = self._energy_output
        if direct:
            outputs[self.force_key] = self._force_output
            if self.stress_key is not None:
                outputs[self.stress_key] = self._stress_output
        options = self._mta.ModelEvaluationOptions(length_unit="angstrom", outputs=outputs)
        n = batch.n_structures
        prediction = Prediction()
        grad_context = torch.enable_grad() if conservative else torch.no_grad()
        with grad_context:
            systems, leaves, strains = self._systems(batch, strained=conservative)
            with _quiet():
                result = self.atomistic(systems, options, check_consistency=self.check_consistency)
            if self.energy_key in result:
                energy_values = result[self.energy_key].block().values.reshape(n)
                prediction.energy = energy_values.detach()
            if conservative:
                grads = torch.autograd.grad(energy_values.sum(), leaves + strains)
                prediction.forces = -torch.stack(grads[:n])
                w = -torch.stack(grads[n:])
                prediction.virial = 0.5 * (w + w.transpose(1, 2)) if virial else None
        if direct:
            prediction.direct_forces = result[self.force_key].block().values.detach().reshape(n, batch.n_atoms, 3)
            if self.stress_key is not None:
                stress = result[self.stress_key].block().values.detach().reshape(n, 3, 3)
                volume = torch.stack([torch.abs(torch.linalg.det(s.cell.detach())) for s in systems])
                w = -stress * volume.reshape(n, 1, 1)
                prediction.direct_virial = 0.5 * (w + w.transpose(1, 2))
        return prediction
