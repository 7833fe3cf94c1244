"""Benchmarks: cost of conservation, i-PI MD throughput with MTS, serving overhead,
PIMD batching and scaling with atom count. ``ipi-nc bench`` / ``make bench`` run them;
every ratio is measured side by side in one run (see :mod:`ipi_ncforces.benchmarks.common`)."""
