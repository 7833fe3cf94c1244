"""The i-PI side of ipi-ncforces: unit conversion at the boundary, the force evaluator,
the PES class for ``i-pi-py_driver -m custom`` / ``<ffdirect>``, the socket driver and
the runner that starts i-PI with its drivers."""
