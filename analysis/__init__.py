"""Post-processing of i-PI outputs: drift, temperatures, spectra, diffusion, g(r),
geometry optimisation, Jacobian asymmetry, and side-by-side comparisons.

Entry point: ``ipi-nc analyze <what> RUN... [--out DIR]`` (:mod:`ipi_ncforces.analysis.cli`).
Data flows one way (models -> driver -> i-PI -> outputs -> analysis): this package
reads i-PI output files with i-PI's own parsers and never imports ``ipi_driver``.

Units used throughout (converted from each file's header with ``ipi.utils.units``):
time ps, energy eV, temperature K, length Angstrom, velocity Angstrom/ps,
force eV/Angstrom, mass amu.
"""
