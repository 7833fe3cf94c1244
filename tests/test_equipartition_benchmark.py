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


def test_make_starts_writes_equilibrated_frames_and_each_replica_starts_from_its_own(tmp_path):
    """--make-starts runs Langevin chains with i-PI and keeps frames after the discard; a
    replica set on that file starts replica k from frame k (i-PI's first step is the frame)."""
    from ipi_ncforces.analysis.readers import read_properties
    from ipi_ncforces.models.ase_calculator import ModelCalculator
    from ipi_ncforces.models.qtip4pf import QTIP4PF
    from ipi_ncforces.models.structure_io import read_structure

    starts = tmp_path / "starts.xyz"
    args = ["--structure", "water16", "--make-starts", str(starts), "--thermostat", "langevin", "--tau-fs", "100",
            "--replicas", "4", "--jobs", "2", "--discard-ps", "0.01", "--spacing-ps", "0.005", "--out", str(tmp_path)]
    assert equipartition.main(args) == 0
    frames = read_structure(starts, ":")
    assert len(frames) == 4  # 2 chains x 2 frames after the discard
    start = read_structure(WATER16_XYZ)
    for atoms in frames:
        assert len(atoms) == len(start) and atoms.get_chemical_symbols() == start.get_chemical_symbols()
        assert abs(atoms.cell.volume - start.cell.volume) < 1e-6
        assert abs(atoms.positions - start.positions).max() > 1e-3  # moved: not the start structure
    # chains interleaved: frame 1 is chain 1's first frame after the discard (step 30 of 40)
    chain1 = read_structure(next(tmp_path.glob("starts-*/chain01/sim.pos_0.xyz")), ":")
    assert [a.info["step"] for a in chain1] == [0, 10, 20, 30, 40]
    assert abs(frames[1].positions - chain1[3].positions).max() < 1e-4
    assert abs(frames[0].positions - frames[1].positions).max() > 1e-3  # the chains differ (seeds)

    setup = equipartition.SetUp(total_ps=0.005, structure=starts)
    dirs = equipartition.run_replicas(setup, 3, tmp_path / "reps", jobs=2)
    for k, d in enumerate(dirs):
        first = read_properties(d / "sim.out")["potential"][0]  # eV, step 0
        atoms = frames[k % 4].copy()
        atoms.calc = ModelCalculator(QTIP4PF())
        assert abs(first - atoms.get_potential_energy()) < 1e-4


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    from pathlib import Path

    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_sigterm_stops_the_pool_and_its_ipi_runs(tmp_path):
    """A study killed with SIGTERM (kill, a batch system) stops its i-PI children: no orphans."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "ipi_ncforces.benchmarks.equipartition", "--structure", "water16",
           "--replicas", "2", "--ps", "20", "--skip-ps", "0.1", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("*/rep*/sim.out"))) < 2 or len(_children(proc.pid)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        ipis = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) != 0
        for pid in ipis:
            assert not os.path.exists(f"/proc/{pid}"), f"i-PI {pid} outlived the study"
    finally:
        proc.kill()
