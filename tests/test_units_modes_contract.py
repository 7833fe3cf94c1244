"""One source of units (i-PI's tables), one spelling of the force modes, and the model
contract stated by the base class."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from ase import units as ase_units
from ase.data import atomic_masses, atomic_numbers

from ipi_ncforces.models import modes, units
from ipi_ncforces.models.backend import NativeBackend
from ipi_ncforces.models.base import PotentialModel
from ipi_ncforces.models.dualhead import DualHeadPotential
from ipi_ncforces.models.pair_toy import PairToyModel
from ipi_ncforces.models.qtip4pf import QTIP4PF


@pytest.mark.parametrize(
    "ours, ase_value, rel",
    [
        (units.EV_PER_HARTREE, ase_units.Hartree, 1e-7),
        (units.ANGSTROM_PER_BOHR, ase_units.Bohr, 1e-7),
        (units.EV_PER_KCAL_PER_MOL, ase_units.kcal / ase_units.mol, 1e-6),  # thermochemical calorie
        (units.COULOMB_EV_ANG, ase_units.Hartree * ase_units.Bohr, 1e-6),
        (units.BOLTZMANN_J_PER_K, ase_units._k, 1e-6),
        (units.ASE_TIME_PER_FS, ase_units.fs, 1e-7),
        (units.AVOGADRO_PER_MOL, ase_units._Nav, 1e-6),  # ASE: CODATA 2014
    ],
)
def test_unit_factors_from_ipi_agree_with_ase(ours, ase_value, rel):
    """i-PI's tables are the source; ASE's CODATA values are the independent check."""
    assert ours == pytest.approx(ase_value, rel=rel)


def test_water_molar_mass_is_one_constant_from_standard_masses():
    expected = 2 * atomic_masses[atomic_numbers["H"]] + atomic_masses[atomic_numbers["O"]]
    assert units.WATER_MOLAR_MASS_G_PER_MOL == pytest.approx(expected, rel=1e-4)
    assert units.WATER_MOLAR_MASS_G_PER_MOL == pytest.approx(18.01528, abs=1e-9)


def test_modes_and_units_import_without_torch():
    """The CLIs read the mode names at parser build time: that must not pull in torch."""
    code = (
        "import sys; import ipi_ncforces.models.modes, ipi_ncforces.models.units, "
        "ipi_ncforces.models.structure_io, ipi_ncforces.ipi_driver.cli; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_driver_cli_offers_exactly_the_force_modes():
    from ipi_ncforces.ipi_driver.cli import build_parser

    action = next(a for a in build_parser()._actions if a.dest == "mode")
    assert tuple(action.choices) == modes.FORCE_MODES == ("conservative", "direct", "correction")


def test_model_contract_device_dtype_and_direct_virial():
    toy = PairToyModel()
    assert toy.predicts_direct_virial is False and QTIP4PF().predicts_direct_virial is False
    assert DualHeadPotential(variant="M").predicts_direct_virial is True
    assert DualHeadPotential(variant="C").predicts_direct_virial is False
    assert QTIP4PF().dtype == torch.float64 and QTIP4PF().device == torch.device("cpu")  # no tensors: analytic
    model = DualHeadPotential(variant="M").to(torch.float32)
    backend = NativeBackend(model)
    assert (backend.dtype, backend.device, backend.predicts_direct_virial) == (torch.float32, torch.device("cpu"), True)
    assert NativeBackend(model.double()).dtype == torch.float64


def test_a_model_with_parameters_of_two_dtypes_is_refused():
    class Mixed(PotentialModel):
        def __init__(self):
            super().__init__(species=(1,), cutoff=1.0)
            self.a = torch.nn.Parameter(torch.zeros(1, dtype=torch.float32))
            self.b = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

    with pytest.raises(ValueError, match="several dtypes"):
        NativeBackend(Mixed())
