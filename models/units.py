"""The one source of unit factors: i-PI's ``ipi.utils.units``.

i-PI speaks atomic units (Hartree, Bohr) on the wire; the models speak eV and Angstrom;
ASE's dynamics count time in its own unit (A sqrt(amu/eV)). Every factor here is taken
from i-PI's unit tables (which also define ASE's units) so that the driver, the models
and i-PI can never disagree on a conversion.
"""

from __future__ import annotations

from ipi.utils.units import Elements, unit_to_internal, unit_to_user

BOHR_PER_ANGSTROM: float = float(unit_to_internal("length", "angstrom", 1.0))
ANGSTROM_PER_BOHR: float = float(unit_to_user("length", "angstrom", 1.0))
HARTREE_PER_EV: float = float(unit_to_internal("energy", "electronvolt", 1.0))
EV_PER_HARTREE: float = float(unit_to_user("energy", "electronvolt", 1.0))
# force: Hartree/Bohr per eV/Angstrom
HARTREE_BOHR_PER_EV_ANGSTROM: float = float(unit_to_internal("force", "ev/ang", 1.0))
EV_ANGSTROM_PER_HARTREE_BOHR: float = 1.0 / HARTREE_BOHR_PER_EV_ANGSTROM

# SI defining constants (exact since 2019); i-PI's tables have neither
AVOGADRO_PER_MOL: float = 6.02214076e23
BOLTZMANN_J_PER_K: float = 1.380649e-23
# thermochemical kilocalorie (4184 J, the one force fields are published in; i-PI's
# "cal/mol" is the International Table calorie, 4.1868 J)
EV_PER_KCAL_PER_MOL: float = float(unit_to_user("energy", "electronvolt", unit_to_internal("energy", "j/mol", 4184.0)))
# e^2 / (4 pi eps0) = 1 Hartree * Bohr, in eV * A (14.3996)
COULOMB_EV_ANG: float = EV_PER_HARTREE * ANGSTROM_PER_BOHR
# one femtosecond in ASE's time unit (what ase.md integrators take as timestep)
ASE_TIME_PER_FS: float = float(unit_to_user("time", "ase", unit_to_internal("time", "femtosecond", 1.0)))

# i-PI's standard atomic masses (g/mol), H2O = 18.01528
WATER_MOLAR_MASS_G_PER_MOL: float = float(
    unit_to_user("mass", "dalton", 2.0 * Elements.mass("H") + Elements.mass("O"))
)
