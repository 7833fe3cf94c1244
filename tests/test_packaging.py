"""Packaging: one installed namespace (``ipi_ncforces``) plus the ``ipi-nc`` console script.

Builds the wheel that ``pip install .`` would install (from a copy of the checkout, so the
tree is not touched) and checks what would land in site-packages.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist",
                                    "runs", "demo-out", "bench-out", "data", ".notes", ".pytest_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("src") / "ipi-ncforces"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE)
    shutil.copytree(ROOT / "models" / "data", src / "models" / "data")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(src)], check=True, capture_output=True)
    (path,) = out.glob("ipi_ncforces-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_installs_only_the_ipi_ncforces_namespace(wheel):
    top_level = {name.split("/")[0] for name in wheel.namelist()}
    dist_info = {name for name in top_level if name.endswith(".dist-info")}
    assert len(dist_info) == 1 and next(iter(dist_info)).startswith("ipi_ncforces-")
    assert top_level - dist_info == {"ipi_ncforces"}


def test_wheel_carries_every_subpackage_and_the_shipped_data(wheel):
    names = set(wheel.namelist())
    for sub in ("models", "ipi_driver", "inputs", "analysis", "benchmarks"):
        assert f"ipi_ncforces/{sub}/__init__.py" in names
    assert "ipi_ncforces/models/data/water-m.pt" in names
    assert "ipi_ncforces/inputs/water64.xyz" in names
    assert "ipi_ncforces/ipi_driver/pes.py" in names
    assert not any(name.startswith("ipi_ncforces/tests") for name in names)


def test_console_script_is_ipi_nc(wheel):
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == {"ipi-nc": "ipi_ncforces.cli:main"}
