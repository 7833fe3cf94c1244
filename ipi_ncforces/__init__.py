"""ipi-ncforces: i-PI molecular dynamics with direct (non-conservative) and conservative
machine-learning forces, and the tools to measure the difference.

One installed namespace; its subpackages live in the repository's top-level folders
(setup.cfg ``package_dir``):

- :mod:`ipi_ncforces.models`: torch potentials (eV, Angstrom), training, Jacobian tools;
- :mod:`ipi_ncforces.ipi_driver`: force evaluator, socket driver, i-PI PES, runner;
- :mod:`ipi_ncforces.inputs`: i-PI XML writer and the shipped inputs;
- :mod:`ipi_ncforces.analysis`: post-processing of i-PI outputs;
- :mod:`ipi_ncforces.benchmarks`: cost and throughput measurements (``ipi-nc bench``).

Imports flow one way: models -> ipi_driver -> (i-PI) -> analysis, with inputs feeding
the runner (checked by tests/test_architecture.py).
"""

__version__ = "0.2.0"
