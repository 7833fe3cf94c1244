"""What ``make bench`` runs: ``python benchmarks/run_all.py --out bench-out`` (= ``ipi-nc bench``)."""

from __future__ import annotations

import sys
from pathlib import Path

# run as a script from the repository root: make the packages importable without install
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ipi_ncforces.benchmarks.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
