"""The soak benchmark's machinery on a short run: it finds i-PI and the driver under
``ipi-nc run``, reads their memory from /proc, follows the steps, writes CSV and plot."""

from __future__ import annotations

import csv
import sys

import pytest

from ipi_ncforces.benchmarks import soak

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_short_soak_samples_both_processes_and_writes_csv_and_plot(tmp_path, box_file, toy_model_file):
    steps = 300
    section = soak.soak_all(
        [str(toy_model_file)], out=tmp_path, structure=box_file, steps=steps, transport="socket",
        device="cpu", sample_every_s=0.3, threads=1, log=lambda *_: None,
    )
    (label, summary), = section["runs"].items()
    rows = list(csv.DictReader(open(tmp_path / f"soak-{label}.csv")))
    assert len(rows) >= 3, rows
    steps_seen = [int(r["step"]) for r in rows]
    assert steps_seen == sorted(steps_seen) and steps_seen[-1] <= steps
    # a Python process with torch and a model is far above 50 MB; i-PI (numpy) above 20 MB
    assert all(float(r["rss_driver_mb"]) > 50 for r in rows)
    assert all(float(r["rss_ipi_mb"]) > 20 for r in rows)
    assert (tmp_path / "soak.png").stat().st_size > 1000
    assert summary["samples"] == len(rows)


def test_soak_cli_rejects_a_missing_model(tmp_path, capsys):
    assert soak.main(["--model", str(tmp_path / "nope.pt"), "--steps", "10", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.pt" in err and "--model" in err
