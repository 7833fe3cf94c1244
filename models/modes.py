"""Model heads and force modes, spelled once (no torch here: CLIs import it cheaply).

Heads (what a model predicts, :class:`ipi_ncforces.models.base.PotentialModel`):
``energy`` (eV) and ``direct`` (forces eV/A, optionally a virial eV).

Force modes (which forces a driver or calculator serves):

* ``conservative``: F = -dE/dr from the energy head (autograd), and the virial;
* ``direct``: the direct head's forces (no autograd graph);
* ``correction``: conservative minus direct forces and virials, energy 0 (the slow,
  outer level of a multiple-time-step split over the direct forces).
"""

from __future__ import annotations

ENERGY_HEAD = "energy"
DIRECT_HEAD = "direct"

CONSERVATIVE = "conservative"
DIRECT = "direct"
CORRECTION = "correction"
FORCE_MODES: tuple[str, ...] = (CONSERVATIVE, DIRECT, CORRECTION)
# the modes that give one force field (ASE calculator, Jacobian analysis)
SINGLE_FORCE_MODES: tuple[str, ...] = (CONSERVATIVE, DIRECT)
# model heads each mode needs
HEADS_FOR_MODE: dict[str, tuple[str, ...]] = {
    CONSERVATIVE: (ENERGY_HEAD,),
    DIRECT: (DIRECT_HEAD,),
    CORRECTION: (ENERGY_HEAD, DIRECT_HEAD),
}
