"""Any :class:`ipi_ncforces.models.base.PotentialModel` as an ASE calculator (MD, L-BFGS/FIRE, ...).

    from ipi_ncforces.models.ase_calculator import ModelCalculator
    atoms.calc = ModelCalculator(model, forces="direct")     # or "conservative"
    atoms.calc = ModelCalculator.from_file("water-m.pt", forces="conservative")

Units are ASE's: energy eV, forces eV/A, stress eV/A^3 (Voigt order xx, yy, zz, yz, xz, xy).
``forces="conservative"``: F = -dE/dr and stress = -W/V from the virial W = -dE/dstrain
(autograd, ipi_ncforces.models.base.evaluate). ``forces="direct"``: the direct head (no autograd graph);
the energy comes from the energy head if the model has one (else it is reported as 0 eV,
and ``calc.results`` carries ``energy_available=False``); stress only if the model
predicts a direct virial.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from ipi_ncforces.models.base import DIRECT_HEAD, ENERGY_HEAD, Batch, PotentialModel, evaluate

FORCE_MODES = ("conservative", "direct")


class ModelCalculator(Calculator):
    """ASE calculator around a PotentialModel.

    model: the potential (already on ``device``/``dtype`` or moved there here).
    forces: "conservative" (F = -dE/dr) or "direct" (the model's direct head).
    device: torch device string; dtype: torch.float64 (default) or torch.float32.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        model: PotentialModel,
        forces: str = "conservative",
        device: str = "cpu",
        dtype: torch.dtype = torch.float64,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if forces not in FORCE_MODES:
            raise ValueError(f"forces='{forces}' is not one of {', '.join(FORCE_MODES)}")
        model.require_head(ENERGY_HEAD if forces == "conservative" else DIRECT_HEAD)
        self.model = model.to(device=device, dtype=dtype).eval()
        self.force_mode = forces
        self.device = device
        self.dtype = dtype

    @classmethod
    def from_file(cls, path: str | Path, forces: str = "conservative", device: str = "cpu", dtype=torch.float64):
        """Load a model file (ipi_ncforces.models.io.save_model) and wrap it; ModelFileError if it lacks the head."""
        from ipi_ncforces.models.io import load_model

        head = ENERGY_HEAD if forces == "conservative" else DIRECT_HEAD
        return cls(load_model(path, require_heads=(head,), device=device, dtype=dtype), forces, device, dtype)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        batch = Batch.from_ase([atoms], dtype=self.dtype).to(device=self.device)
        periodic = bool(atoms.pbc.all()) and atoms.cell.volume > 0
        want_stress = "stress" in properties
        if want_stress and not periodic:
            raise PropertyNotImplementedError("stress needs a periodic cell (pbc=True in all directions)")

        if self.force_mode == "conservative":
            p = evaluate(self.model, batch, conservative=True, virial=periodic)
            energy, forces, virial = p.energy, p.forces, p.virial
            energy_available = True
        else:
            energy_available = ENERGY_HEAD in self.model.heads
            p = evaluate(self.model, batch, conservative=False, direct=True, energy=energy_available)
            energy = p.energy if energy_available else torch.zeros(1)
            forces, virial = p.direct_forces, p.direct_virial
            if want_stress and virial is None:
                raise PropertyNotImplementedError("this model predicts no direct stress; use forces='conservative'")

        energy_ev = float(energy.detach().cpu()[0])
        self.results = {
            "energy": energy_ev,
            "free_energy": energy_ev,
            "forces": forces.detach().to("cpu", torch.float64).numpy()[0],
            "energy_available": energy_available,
        }
        if periodic and virial is not None:
            # ASE convention: stress = (1/V) dE/dstrain = -W/V
            sigma = -virial.detach().to("cpu", torch.float64).numpy()[0] / atoms.cell.volume
            self.results["stress"] = np.array(
                [sigma[0, 0], sigma[1, 1], sigma[2, 2], sigma[1, 2], sigma[0, 2], sigma[0, 1]]
            )
