"""`ipi-nc train-pet`: data, split, metatrain PET training, records; the trained files are
served alike by our evaluator and by i-PI's metatomic PES. Tiny PETs on 16 waters (CPU)."""

from __future__ import annotations

import json
import math

import ase.io
import numpy as np
import pytest
import torch
from ipi.utils.units import unit_to_internal, unit_to_user

from ipi_ncforces.inputs import WATER16_XYZ
from ipi_ncforces.ipi_driver.setup import build_evaluator
from ipi_ncforces.ipi_driver.train_pet import main
from ipi_ncforces.models import SHIPPED_MODELS_DIR, pet_training
from ipi_ncforces.models.errors import mean_absolute_errors
from ipi_ncforces.models.io import load_model
from ipi_ncforces.models.loader import load_backend
from ipi_ncforces.models.train import mean_absolute_errors as trainer_maes
from ipi_ncforces.models.train import read_frames

TINY = ["--epochs", "2", "--d-pet", "8", "--batch-size", "2", "--threads", "1",
        "--test-fraction", "0.2", "--validation-fraction", "0.1"]


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_time_budget_warms_up_decays_and_ends_the_epoch_loop(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(pet_training.time, "monotonic", clock)
    budget = pet_training._Budget(100.0, warmup_fraction=0.1)
    budget.t0 = clock.now
    factors = {}
    for t in (0.0, 5.0, 10.0, 55.0, 100.0, 130.0):
        clock.now = 100.0 + t
        factors[t] = budget.lr_factor(0)
    assert factors[0.0] == pytest.approx(1e-3) and factors[5.0] == pytest.approx(0.5)
    assert factors[10.0] == pytest.approx(1.0) and factors[55.0] == pytest.approx(0.5)
    assert factors[100.0] == pytest.approx(0.0, abs=1e-12) and factors[130.0] == pytest.approx(0.0, abs=1e-12)
    # epochs run while the clock is inside the budget, each epoch taking 30 s
    clock.now = 100.0
    epochs = []
    for epoch in budget.epochs(0, 1000):
        epochs.append(epoch)
        clock.now += 30.0
    assert epochs == [0, 1, 2, 3] and budget.epochs_run == 4


def test_errors_match_the_native_trainer(toy_data):
    """models.errors (any backend) gives the MAEs of the native trainer's own routine."""
    path = SHIPPED_MODELS_DIR / "water-m.pt"
    ours = mean_absolute_errors(load_backend(path), ase.io.read(toy_data, ":3"))
    theirs = trainer_maes(load_model(path), read_frames(toy_data), [0, 1, 2], 2, torch.device("cpu"), torch.float64)
    assert set(ours) == set(theirs) == {"energy_mev_per_atom", "forces_conservative_mev_per_ang", "forces_direct_mev_per_ang"}
    for key in ours:
        assert ours[key] == pytest.approx(theirs[key], rel=1e-6), key  # the extxyz round trip rounds
        assert ours[key] > 1.0  # a toy reference: errors are real


@pytest.mark.slow
def test_one_command_trains_pet_m_served_by_our_driver_and_ipi_pes(tmp_path, capsys):
    out = tmp_path / "pets"
    args = ["--out", str(out), "--frames", "12", "--structure", str(WATER16_XYZ), "--kinds", "M", *TINY]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "PET-M epoch 2:" in printed and "ETA" in printed and "val F_direct" in printed
    record = json.loads((out / "water-models.json").read_text())["PET-M"]
    assert set(record["test_mae"]) == {"energy_mev_per_atom", "forces_conservative_mev_per_ang", "forces_direct_mev_per_ang"}
    assert all(math.isfinite(v) and v > 0 for v in record["test_mae"].values())
    assert record["n_frames"] == {"train": 9, "validation": 1, "test": 2} and record["n_parameters"] > 1000
    assert record["training_data_sha256"] and record["file_size_mb"] > 0

    # the file serves both heads; i-PI's metatomic PES gives the forces our evaluator gives
    from ipi.pes.metatomic import MetatomicDriver

    model = out / "pet-m.pt"
    assert load_backend(model).heads == ("energy", "direct")
    atoms = ase.io.read(out / "split" / "test.extxyz", 0)
    structure = tmp_path / "frame.xyz"
    ase.io.write(structure, atoms, format="extxyz")
    cell = unit_to_internal("length", "angstrom", atoms.cell.array.T.copy())
    positions = unit_to_internal("length", "angstrom", atoms.positions.copy())
    for mode in ("conservative", "direct"):
        theirs = MetatomicDriver(str(structure), str(model), non_conservative=(mode == "direct")).compute([cell], [positions])
        ours = build_evaluator(model_path=model, structure_path=structure, mode=mode, remove_net_force=(mode == "direct"))(
            [cell], [positions.reshape(-1)]
        )
        f_theirs = unit_to_user("force", "ev/ang", np.asarray(theirs[0][1])).reshape(-1, 3)
        f_ours = unit_to_user("force", "ev/ang", np.asarray(ours[0][1])).reshape(-1, 3)
        assert np.abs(f_theirs).max() > 1e-3, mode
        np.testing.assert_allclose(f_ours, f_theirs, atol=1e-4 * np.abs(f_theirs).max(), err_msg=mode)

    # the same command again keeps what is finished
    assert main(args) == 0
    assert "PET-M already trained" in capsys.readouterr().out


def test_bad_input_is_one_line_with_exit_2(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "o"), "--data", str(tmp_path / "missing.extxyz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.extxyz" in err[0] and "--data" in err[0]
    assert main(["--out", str(tmp_path / "o"), "--epochs", "0"]) == 2
