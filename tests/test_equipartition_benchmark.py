"""The equipartition study (benchmarks/equipartition.py) end to end on the 48-atom box:
replicas are real i-PI runs with different seeds, a second call resumes (runs nothing),
and the replica report is written. No physics assertion: 30 fs runs only check the plumbing."""

from __future__ import annotations

import json

from ipi_ncforces.benchmarks import equipartition
from ipi_ncforces.inputs import WATER16_XYZ


def test_replicas_differ_by_seed_only_and_study_resumes(tmp_path):
    setup = equipartition.SetUp(total_ps=0.03, structure=WATER16_XYZ)
    model = tmp_path / "model.pt"
    a, b = (equipartition.replica_variant(setup, k, model) for k in (0, 1))
    assert a.seed != b.seed and a.steps == b.steps == 60
    assert equipartition.replica_variant(setup, 0, model) == a  # reproducible seeds
    args = ["--structure", "water16", "--replicas", "2", "--ps", "0.03", "--skip-ps", "0.005",
            "--out", str(tmp_path)]
    assert equipartition.main(args) == 0
    group = tmp_path / setup.label
    logs = sorted(group.glob("rep*/ipi.log"))
    assert len(logs) == 2
    data = json.loads((group / "analysis" / "temperatures.json").read_text())
    assert data["replicas"]["n_replicas"] == 2
    assert set(data["replicas"]["estimates"]) == {"T", "T_H", "T_O"}
    mtimes = [p.stat().st_mtime for p in logs]
    assert equipartition.main(args) == 0  # finished replicas are not run again
    assert [p.stat().st_mtime for p in logs] == mtimes
    assert equipartition.main(args[:-2] + ["--out", str(tmp_path), "--replicas", "1"]) == 2
