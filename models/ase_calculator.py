"""Any :class:`ipi_ncforces.models.base.PotentialModel` as an ASE calculator (MD, L-BFGS/FIRE, ...).

    from ipi_ncforces.models.ase_calculator import ModelCalculator
    atoms.calc = ModelCalculator(model, forces="direct")     # or "conservative"
    atoms.calc = ModelCalculator.from_file("water-m.pt", forces="conservative")

Units are ASE's: energy eV, forces eV/A, stress eV/A^3 (Voigt order xx, yy, zz, yz, xz, xy).
``forces="conservative"``: F = -dE/dr and stress = -W/V from the virial W = -dE/dstrain
(autograd, ipi_ncforces.models.base.evaluate). ``forces="direct"``: the direct head (no autograd graph);
the energy comes from the energy head if the model has one, stress from the direct virial
if the model predicts one. Direct forces are served with their per-structure mean
subtracted (``remove_net_force=True``, the default, as metatomic-ase's calculator and
i-PI's metatomic PES do); ``remove_net_force=False`` gives the raw head. What a model cannot give is left out of ``implemented_properties``
(ASE's convention), so asking for it raises ``PropertyNotImplementedError``; e.g. a
direct-only model has no energy.
"""

from __future__ import annotations

from pathlib import Path

import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from ipi_ncforces.models.base import ENERGY_HEAD, Batch, PotentialModel, evaluate
from ipi_ncforces.models.modes import CONSERVATIVE, HEADS_FOR_MODE, SINGLE_FORCE_MODES


class ModelCalculator(Calculator):
    """ASE calculator around a PotentialModel.

    model: the potential (already on ``device``/``dtype`` or moved there here).
    forces: "conservative" (F = -dE/dr) or "direct" (the model's direct head).
    device: torch device string; dtype: torch.float64 (default) or torch.float32.
    remove_net_force: direct forces only: subtract their mean (eV/A) so they sum to zero
      (default); False returns the raw direct head, whose net force drifts the centre of mass.
    implemented_properties (per instance): forces always; energy and free_energy when
    conservative or the model has an energy head; stress (periodic cells only) when
    conservative or the model predicts a direct virial.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: PotentialModel, forces: str = CONSERVATIVE, device: str = "cpu",
                 dtype: torch.dtype = torch.float64, remove_net_force: bool = True, **kwargs):
        super().__init__(**kwargs)
        if forces not in SINGLE_FORCE_MODES:
            raise ValueError(f"forces='{forces}' is not one of {', '.join(SINGLE_FORCE_MODES)}")
        for head in HEADS_FOR_MODE[forces]:
            model.require_head(head)
        self.model = model.to(device=device, dtype=dtype).eval()
        self.force_mode = forces
        self.remove_net_force = remove_net_force
        self.device = device
        self.dtype = dtype
        conservative = forces == CONSERVATIVE
        self.energy_available = conservative or ENERGY_HEAD in model.heads
        self.implemented_properties = ["forces"]
        if self.energy_available:
            self.implemented_properties += ["energy", "free_energy"]
        if conservative or model.predicts_direct_virial:
            self.implemented_properties.append("stress")

    @classmethod
    def from_file(cls, path: str | Path, forces: str = CONSERVATIVE, device: str = "cpu", dtype=torch.float64,
                  remove_net_force: bool = True):
        """Load a model file (ipi_ncforces.models.io.save_model) and wrap it; ModelFileError if it lacks the head."""
        from ipi_ncforces.models.io import load_model

        heads = HEADS_FOR_MODE.get(forces, ())
        model = load_model(path, require_heads=heads, device=device, dtype=dtype)
        return cls(model, forces, device, dtype, remove_net_force=remove_net_force)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        batch = Batch.from_ase([atoms], dtype=self.dtype).to(device=self.device)
        periodic = bool(atoms.pbc.all()) and atoms.cell.volume > 0
        want_stress = "stress" in properties
        if want_stress and not periodic:
            raise PropertyNotImplementedError("stress needs a periodic cell (pbc=True in all directions)")

        if self.force_mode == CONSERVATIVE:
            p = evaluate(self.model, batch, conservative=True, virial=periodic)
            energy, forces, virial = p.energy, p.forces, p.virial
        else:
            p = evaluate(self.model, batch, conservative=False, direct=True, energy=self.energy_available)
            energy, forces, virial = p.energy, p.direct_forces, p.direct_virial
            if self.remove_net_force:
                forces = forces - forces.mean(dim=1, keepdim=True)

        self.results = {"forces": forces.detach().to("cpu", torch.float64).numpy()[0]}
        if energy is not None:
            self.results["energy"] = self.results["free_energy"] = float(energy.detach().cpu()[0])
        if periodic and virial is not None:
            # ASE convention: stress = (1/V) dE/dstrain = -W/V
            sigma = -virial.detach().to("cpu", torch.float64).numpy()[0] / atoms.cell.volume
            self.results["stress"] = full_3x3_to_voigt_6_stress(sigma)
