"""i-PI inputs: the one XML writer (:mod:`ipi_ncforces.inputs.make`, lxml, validated by
i-PI's own parser), the shipped inputs and start structures, and ``ipi-nc inputs``."""

from pathlib import Path

SHIPPED_INPUTS_DIR = Path(__file__).resolve().parent
"""The shipped i-PI inputs (nve/, nvt/, pimd/, geop/, templates/, slurm/) and start structures."""
WATER64_XYZ = SHIPPED_INPUTS_DIR / "water64.xyz"
"""64 H2O (192 atoms) in a 12.4296 A cubic box, i-PI xyz, equilibrated at 300 K."""
WATER64_STARTS_XYZ = SHIPPED_INPUTS_DIR / "water64-starts.xyz"
"""16 frames of the 64-water box from two q-TIP4P/F Langevin runs at 300 K (6 ps discarded,
then a frame every 1 ps): one independent start per replica (``replica_starts``)."""
WATER16_XYZ = SHIPPED_INPUTS_DIR / "water16.xyz"
"""16 H2O (48 atoms) in a 7.8302 A cubic box, i-PI xyz, for tests."""
