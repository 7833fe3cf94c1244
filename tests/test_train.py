"""`ipi-nc train`: reads extxyz, learns, reports MAEs, writes a loadable model; clear errors."""

from __future__ import annotations

import ase.io
import pytest
import torch

from ipi_ncforces.models.base import Batch, evaluate
from ipi_ncforces.models.io import load_model
from ipi_ncforces.models.train import main, read_frames

TINY = ["--width", "8", "--n-rbf", "6", "--cutoff", "3.5", "--batch-size", "2", "--threads", "1"]


@pytest.mark.parametrize("variant", ["M", "NC"])
def test_training_lowers_the_loss_and_writes_a_model_with_maes(toy_data, tmp_path, variant, capsys):
    out = tmp_path / f"{variant}.pt"
    code = main(["--data", str(toy_data), "--variant", variant, "--out", str(out), "--epochs", "4", "--lr", "1e-2", *TINY])
    assert code == 0
    printed = capsys.readouterr().out
    assert "epoch   4/4" in printed and "ETA" in printed and "test MAE" in printed
    model = load_model(out, require_heads=("direct",))
    meta = model.metadata
    history = [h["train_loss"] for h in meta["history"]]
    assert history[-1] < history[0]
    assert meta["training_data_sha256"] and meta["n_frames"]["train"] == 8
    assert meta["test_mae"]["forces_direct_mev_per_ang"] > 0
    if variant == "M":
        assert {"energy_mev_per_atom", "forces_conservative_mev_per_ang"} <= set(meta["test_mae"])
    assert (tmp_path / f"{variant}.pt.ckpt").is_file()
    prediction = evaluate(model, Batch.from_ase(ase.io.read(toy_data, index=":2")), conservative=False, direct=True)
    assert torch.isfinite(prediction.direct_forces).all()


def test_resume_continues_from_checkpoint(toy_data, tmp_path, capsys):
    out = tmp_path / "c.pt"
    assert main(["--data", str(toy_data), "--variant", "C", "--out", str(out), "--epochs", "1", *TINY]) == 0
    assert main(["--data", str(toy_data), "--variant", "C", "--out", str(out), "--epochs", "2", "--resume", *TINY]) == 0
    assert "resumed" in capsys.readouterr().out
    assert load_model(out).metadata["epochs"] == 2


def test_read_frames_gives_energies_and_forces(toy_data):
    frames = read_frames(toy_data)
    assert len(frames) == 10 and frames[0].forces.shape == (24, 3)


def test_missing_file_is_a_one_line_error(tmp_path, capsys):
    code = main(["--data", str(tmp_path / "nothing.extxyz"), "--variant", "C", "--out", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "nothing.extxyz" in err


def test_frames_without_forces_are_refused(tmp_path, capsys, jittered_water_box):
    path = tmp_path / "noforces.extxyz"
    atoms = jittered_water_box()
    atoms.info["energy"] = -1.0
    ase.io.write(path, [atoms, atoms, atoms], format="extxyz")
    code = main(["--data", str(path), "--variant", "NC", "--out", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "noforces.extxyz" in err and "forces" in err and "frame 0" in err
