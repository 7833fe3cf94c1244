"""The one place where atomic units (i-PI's wire) meet eV / Angstrom (the models).

Every factor is taken from i-PI's own ``ipi.utils.units`` so that the driver and
i-PI can never disagree on a conversion.
"""

from __future__ import annotations

from ipi.utils.units import unit_to_internal, unit_to_user

BOHR_PER_ANGSTROM: float = float(unit_to_internal("length", "angstrom", 1.0))
ANGSTROM_PER_BOHR: float = float(unit_to_user("length", "angstrom", 1.0))
HARTREE_PER_EV: float = float(unit_to_internal("energy", "electronvolt", 1.0))
EV_PER_HARTREE: float = float(unit_to_user("energy", "electronvolt", 1.0))
# force: Hartree/Bohr per eV/Angstrom
HARTREE_BOHR_PER_EV_ANGSTROM: float = float(unit_to_internal("force", "ev/ang", 1.0))
EV_ANGSTROM_PER_HARTREE_BOHR: float = 1.0 / HARTREE_BOHR_PER_EV_ANGSTROM
