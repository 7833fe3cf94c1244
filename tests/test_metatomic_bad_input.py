"""Bad metatomic input to ``ipi-nc run`` / ``ipi-nc export``: one line naming the file and
the fix, exit code 2 (bad input), and the outputs of an earlier run left as they were (the model
is checked before i-PI starts or anything is written)."""



import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
import metatomic.torch as mta
import torch
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import ModelOutput, System

from ipi_ncforces.models import SHIPPED_MODELS_DIR
from ipi_ncforces.inputs import make
from ipi_ncforces.ipi_driver.evaluator import ForceEvaluator
from ipi_ncforces.models.loader import load_backend
from ipi_ncforces.models.metatomic_export import export_model
from ipi_ncforces.models.structure_io import write_ipi_xyz
from ipi_ncforces.models.water_box import lattice_water_box

SHIPPED = SHIPPED_MODELS_DIR
EARLIER_OUTPUT = "step potential\n0 -1.0\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    water = lattice_water_box(8, seed=4)
    carbon = water.copy()
    carbon.numbers[0] = 6
    return {
        "m": export_model(SHIPPED / "water-m.pt", folder / "m.pt"),
        "c": export_model(SHIPPED / "water-c.pt", folder / "c.pt"),
        "nc_no_stress": export_model(SHIPPED / "water-nc.pt", folder / "nc-no-stress.pt", direct_stress=False),
        "water": write_ipi_xyz(water, folder / "water.xyz"),
        "carbon": write_ipi_xyz(carbon, folder / "with-carbon.xyz"),
    }


def _run(tmp_path: Path, model: Path, structure: Path, forces: str, patch=None) -> tuple[int, list[str], Path]:
    """``ipi-nc run`` in a workdir holding an earlier run's output; returns (exit code,
    stderr lines, workdir)."""
    workdir = tmp_path / "run"
    workdir.mkdir(parents=True)
    (workdir / "sim.out").write_text(EARLIER_OUTPUT)
    xml = make.write(make.Variant(name="sim", forces=forces, structure=str(structure), steps=2), workdir.parent / "in.xml")
    if patch is not None:
        xml.write_text(patch(xml.read_text()))
    proc = subprocess.run(
        [sys.executable, "-m", "ipi_ncforces.cli", "run", str(xml), "--model", str(model), "--workdir", str(workdir), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ipi-nc run")]
    return proc.returncode, lines, workdir


def _assert_refused(code: int, lines: list[str], workdir: Path, *needles: str) -> None:
    assert code == 2 and len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert (workdir / "sim.out").read_text() == EARLIER_OUTPUT  # untouched
    assert not (workdir / "ipi.log").exists()  # i-PI never started


def test_atomic_types_not_covering_the_structure(tmp_path, files):
    code, lines, workdir = _run(tmp_path, files["m"], files["carbon"], "conservative")
    _assert_refused(code, lines, workdir, str(files["m"]), "[6]", "use a model trained for these elements")


def test_direct_mode_on_a_model_without_direct_forces(tmp_path, files):
    code, lines, workdir = _run(tmp_path, files["c"], files["water"], "direct")
    _assert_refused(code, lines, workdir, str(files["c"]), "non_conservative_force", "pick a mode this model supports")


def test_pickled_file_that_is_not_a_model(tmp_path, files):
    for name, write in {
        "module.pt": lambda p: torch.save(torch.nn.Linear(2, 2), p),  # a full pickle: refused by weights_only
        "dict.pkl": lambda p: p.write_bytes(pickle.dumps({"weights": [1.0, 2.0]})),
    }.items():
        path = tmp_path / name
        write(path)
        code, lines, workdir = _run(tmp_path / name.replace(".", "-"), path, files["water"], "conservative")
        _assert_refused(code, lines, workdir, str(path), "not an ipi-ncforces model file", "'ipi-nc export'")


def test_barostat_refused_without_direct_stress(tmp_path, files):
    def npt(text: str) -> str:
        return text.replace("<dynamics mode=\"nve\">", "<dynamics mode=\"npt\">").replace(
            "</dynamics>", "<barostat mode=\"isotropic\"><tau units=\"femtosecond\"> 100 </tau></barostat></dynamics>"
        )

    code, lines, workdir = _run(tmp_path, files["nc_no_stress"], files["water"], "direct", patch=npt)
    _assert_refused(code, lines, workdir, str(files["nc_no_stress"]), "barostat", "non_conservative_stress")


def test_direct_mode_without_stress_warns_once_and_sends_zero_virial(files, capsys):
    backend = load_backend(files["nc_no_stress"])
    assert backend.heads == ("direct",) and not backend.predicts_direct_virial
    evaluator = ForceEvaluator(backend, lattice_water_box(8, seed=4).numbers, "direct")
    atoms = lattice_water_box(8, seed=4)
    cell = atoms.cell.array.T / 0.529177210903
    positions = atoms.positions.reshape(-1) / 0.529177210903
    for _ in range(2):
        (energy, forces, virial, extras), = evaluator([cell], [positions])
        assert np.all(virial == 0) and np.isfinite(forces).all() and '"virial_available": false' in extras
    assert capsys.readouterr().err.count("no direct stress") == 1


_LIBRARY = torch.library.Library("ipinc_test_ext", "DEF")  # an op only this test process has
_LIBRARY.define("twice(Tensor x) -> Tensor")
_LIBRARY.impl("twice", lambda x: 2 * x, "CompositeExplicitAutograd")


class NeedsExtension(torch.nn.Module):
    """A metatomic model calling an op that only an extension provides (here registered
    from Python in this process): a fresh process without it cannot load the model."""

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Labels] = None
    ) -> Dict[str, TensorMap]:
        energies: List[torch.Tensor] = []
        for system in systems:
            energies.append(torch.ops.ipinc_test_ext.twice(system.positions.sum()).reshape(1))
        values = torch.stack(energies)
        samples = Labels("system", torch.arange(len(systems), dtype=torch.int32).reshape(-1, 1))
        block = TensorBlock(values, samples, [], Labels("energy", torch.zeros((1, 1), dtype=torch.int32)))
        return {"energy": TensorMap(Labels("_", torch.zeros((1, 1), dtype=torch.int32)), [block])}


def _model_needing_an_extension(path: Path) -> Path:
    capabilities = mta.ModelCapabilities(
        outputs={"energy": mta.ModelOutput(unit="eV", sample_kind="system")},
        atomic_types=[1, 8],
        interaction_range=0.0,
        length_unit="angstrom",
        supported_devices=["cpu"],
        dtype="float64",
    )
    model = mta.AtomisticModel(NeedsExtension().eval(), mta.ModelMetadata(name="needs an extension"), capabilities)
    model.save(str(path))
    return path


def test_model_needing_extensions_that_were_not_given(tmp_path, files):
    model = _model_needing_an_extension(tmp_path / "needs-ext.pt")
    code, lines, workdir = _run(tmp_path, model, files["water"], "conservative")
    _assert_refused(code, lines, workdir, str(model), "extensions", "--extensions DIR")


def test_export_cli_writes_loadable_files_and_refuses_the_toy_model(tmp_path, capsys):
    from ipi_ncforces.models.io import save_model
    from ipi_ncforces.models.metatomic_export import main as export_main
    from ipi_ncforces.models.pair_toy import PairToyModel
    from ipi_ncforces.models.qtip4pf import QTIP4PF

    out = tmp_path / "nc.pt"
    assert export_main([str(SHIPPED / "water-nc.pt"), str(out), "--dtype", "float32"]) == 0
    backend = load_backend(out)
    assert backend.heads == ("direct",) and backend.dtype == torch.float32 and backend.predicts_direct_virial
    # q-TIP4P/F exports as an energy-only model (numbers checked in tests/test_qtip4pf_export.py)
    qtip = save_model(QTIP4PF(), tmp_path / "qtip4pf.pt")
    assert export_main([str(qtip), str(tmp_path / "q-mta.pt")]) == 0
    assert load_backend(tmp_path / "q-mta.pt").heads == ("energy",)
    capsys.readouterr()
    toy = save_model(PairToyModel(), tmp_path / "toy.pt")
    assert export_main([str(toy), str(tmp_path / "toy-mta.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(toy) in err and "PairToyModel" in err
    assert not (tmp_path / "toy-mta.pt").exists()
