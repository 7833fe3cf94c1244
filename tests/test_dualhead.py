"""The dual-head potential: heads per variant, units-free invariances, autograd
consistency, no graph for direct-only evaluation, save/load."""

from __future__ import annotations

import pytest
import torch

from ipi_ncforces.models.base import Batch, evaluate
from ipi_ncforces.models.dualhead import DualHeadPotential
from ipi_ncforces.models.io import ModelFileError, load_model, save_model


def random_rotation(seed: int = 1) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.linalg.det(q))


@pytest.mark.parametrize("variant,heads", [("C", ("energy",)), ("NC", ("direct",)), ("M", ("energy", "direct"))])
def test_variants_have_their_heads(variant, heads, tiny_model):
    model = tiny_model(variant)
    assert model.heads == heads
    assert model.predicts_direct_virial == ("direct" in heads)


def test_config_rebuilds_the_same_model(jittered_water_box, tiny_model):
    model = tiny_model("M", energy_offsets_ev=[-1.0, -2.0], scale_ev=0.7)
    clone = DualHeadPotential(**model.config()).double()
    clone.load_state_dict(model.state_dict())
    batch = Batch.from_ase([jittered_water_box()])
    a = evaluate(model, batch, direct=True)
    b = evaluate(clone, batch, direct=True)
    torch.testing.assert_close(a.energy, b.energy, rtol=0, atol=0)
    torch.testing.assert_close(a.direct_forces, b.direct_forces, rtol=0, atol=0)


def test_runs_in_float32_and_float64(jittered_water_box, tiny_model):
    atoms = jittered_water_box()
    for dtype in (torch.float32, torch.float64):
        model = tiny_model("M").to(dtype)
        prediction = evaluate(model, Batch.from_ase([atoms, atoms], dtype=dtype), direct=True)
        assert prediction.forces.dtype == dtype and prediction.direct_forces.dtype == dtype
        assert prediction.forces.shape == (2, len(atoms), 3)
        assert prediction.direct_virial.shape == (2, 3, 3)
        assert torch.isfinite(prediction.forces).all() and torch.isfinite(prediction.direct_forces).all()


def test_direct_only_evaluation_builds_no_graph(jittered_water_box, tiny_model):
    model = tiny_model("M")
    prediction = evaluate(model, Batch.from_ase([jittered_water_box()]), conservative=False, direct=True)
    for tensor in (prediction.energy, prediction.direct_forces, prediction.direct_virial):
        assert not tensor.requires_grad and tensor.grad_fn is None
    assert all(p.grad is None for p in model.parameters())


def test_combined_pass_records_no_graph_for_the_direct_head_outside_training(jittered_water_box, tiny_model):
    """The MTS pass (energy + direct heads, eval mode) gives the direct-only pass's forces
    without an autograd graph for them; in training mode the graph is kept (for the loss)."""
    model = tiny_model("M").double()
    batch = Batch.from_ase([jittered_water_box(seed=3)])
    both = evaluate(model, batch, conservative=True, direct=True)
    alone = evaluate(model, batch, conservative=False, direct=True)
    torch.testing.assert_close(both.direct_forces, alone.direct_forces, rtol=0, atol=1e-12)
    torch.testing.assert_close(both.direct_virial, alone.direct_virial, rtol=0, atol=1e-12)
    positions = batch.positions.clone().requires_grad_(True)
    moved = Batch(batch.species, positions, batch.cells)
    model.eval()
    assert not model(moved, ("energy", "direct"))["direct_forces"].requires_grad
    assert model(moved, ("direct",))["direct_forces"].requires_grad  # the Jacobian tools differentiate it
    model.train()
    assert model(moved, ("energy", "direct"))["direct_forces"].requires_grad
    model.eval()


def test_conservative_forces_match_finite_differences(jittered_water_box, tiny_model):
    # central differences with h = 1e-5 A in float64: truncation ~h^2 * E''' and
    # round-off ~1e-16 * E / h are both far below the 1e-6 eV/A tolerance
    model = tiny_model("C", seed=3)
    atoms = jittered_water_box(seed=2)
    batch = Batch.from_ase([atoms])
    forces = evaluate(model, batch, virial=False).forces[0]
    h = 1e-5
    for atom, axis in [(0, 0), (1, 2), (5, 1), (23, 0)]:
        plus, minus = batch.positions.clone(), batch.positions.clone()
        plus[0, atom, axis] += h
        minus[0, atom, axis] -= h
        e_plus = evaluate(model, Batch(batch.species, plus, batch.cells), conservative=False, direct=False).energy
        e_minus = evaluate(model, Batch(batch.species, minus, batch.cells), conservative=False, direct=False).energy
        numeric = -(e_plus - e_minus).item() / (2 * h)
        assert abs(numeric - forces[atom, axis].item()) < 1e-6


def test_virial_matches_strain_finite_difference(jittered_water_box, tiny_model):
    # W = -dE/d(strain) for a homogeneous deformation of positions and cell (eV)
    model = tiny_model("C", seed=4)
    batch = Batch.from_ase([jittered_water_box(seed=5)])
    virial = evaluate(model, batch).virial[0]
    h = 1e-6
    eps = torch.zeros(3, 3, dtype=torch.float64)
    eps[0, 1] = eps[1, 0] = 0.5 * h

    def energy(sign):
        f = torch.eye(3, dtype=torch.float64) + sign * eps
        b = Batch(batch.species, batch.positions @ f, batch.cells @ f)
        return evaluate(model, b, conservative=False).energy.item()

    numeric = -(energy(1) - energy(-1)) / (2 * h)
    # dE = (h/2)(G_01 + G_10) and W is the symmetrized -G, so -dE/dh = W_01; central
    # differences with h = 1e-6 are accurate to ~1e-9 eV here
    assert abs(numeric - virial[0, 1].item()) < 1e-7


def test_energy_invariant_and_forces_equivariant_under_rotation(jittered_water_box, tiny_model):
    # float64: a rotated copy differs only by round-off (~1e-15 relative), so 1e-5 is loose
    model = tiny_model("M", seed=6)
    atoms = jittered_water_box(seed=7, periodic=False)
    rotation = random_rotation()
    batch = Batch.from_ase([atoms])
    rotated = Batch(batch.species, batch.positions @ rotation.T, batch.cells)
    a = evaluate(model, batch, direct=True, virial=False)
    b = evaluate(model, rotated, direct=True, virial=False)
    assert abs((a.energy - b.energy).item()) < 1e-10 * max(1.0, abs(a.energy.item()))
    for f, g in ((a.forces, b.forces), (a.direct_forces, b.direct_forces)):
        error = (f @ rotation.T - g).norm() / f.norm()
        assert error < 1e-5


def test_periodic_direct_forces_rotate_with_cell_and_are_translation_invariant(jittered_water_box, tiny_model):
    model = tiny_model("NC", seed=8)
    batch = Batch.from_ase([jittered_water_box(seed=9)])
    rotation = random_rotation(2)
    rotated = Batch(batch.species, batch.positions @ rotation.T, batch.cells @ rotation.T)
    shifted = Batch(batch.species, batch.positions + torch.tensor([0.3, -1.2, 2.5], dtype=torch.float64), batch.cells)
    f = evaluate(model, batch, conservative=False, direct=True).direct_forces
    g = evaluate(model, rotated, conservative=False, direct=True).direct_forces
    s = evaluate(model, shifted, conservative=False, direct=True).direct_forces
    assert (f @ rotation.T - g).norm() / f.norm() < 1e-5
    assert (f - s).norm() / f.norm() < 1e-10


def test_direct_head_is_not_conservative_but_direct_virial_is_symmetric(jittered_water_box, tiny_model):
    model = tiny_model("NC", seed=10)
    prediction = evaluate(model, Batch.from_ase([jittered_water_box()]), conservative=False, direct=True)
    # a random direct head has a net force: no Newton's third law by construction
    assert prediction.direct_forces[0].sum(dim=0).norm() > 1e-6
    torch.testing.assert_close(prediction.direct_virial, prediction.direct_virial.transpose(1, 2))


def test_unknown_species_is_refused(jittered_water_box, tiny_model):
    model = tiny_model("C")
    atoms = jittered_water_box()
    atoms.numbers[0] = 6
    with pytest.raises(ValueError, match=r"\[6\]"):
        evaluate(model, Batch.from_ase([atoms]))


def test_save_load_round_trip(tmp_path, jittered_water_box, tiny_model):
    model = tiny_model("M", energy_offsets_ev=[-13.6, -432.0])
    path = save_model(model, tmp_path / "m.pt", {"note": "test"})
    loaded = load_model(path, require_heads=("energy", "direct"), dtype=torch.float64)
    assert loaded.metadata["note"] == "test" and loaded.metadata["heads"] == ["energy", "direct"]
    batch = Batch.from_ase([jittered_water_box()])
    a, b = evaluate(model, batch, direct=True), evaluate(loaded, batch, direct=True)
    torch.testing.assert_close(a.energy, b.energy, rtol=0, atol=0)
    torch.testing.assert_close(a.direct_forces, b.direct_forces, rtol=0, atol=0)
    assert load_model(path, dtype=torch.float32).embedding.weight.dtype == torch.float32


def test_loading_a_model_without_the_head_names_file_and_head(tmp_path, tiny_model):
    path = save_model(tiny_model("C"), tmp_path / "c.pt")
    with pytest.raises(ModelFileError) as info:
        load_model(path, require_heads=("direct",))
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "'direct'" in message


def test_loading_a_non_model_file_fails_with_one_line(tmp_path):
    bogus = tmp_path / "notes.pt"
    bogus.write_text("not a model\n")
    with pytest.raises(ModelFileError) as info:
        load_model(bogus)
    assert "\n" not in str(info.value) and str(bogus) in str(info.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ModelFileError, match="not an ipi-ncforces model"):
        load_model(foreign)


SHIPPED = {"c": ("energy",), "nc": ("direct",), "m": ("energy", "direct")}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_water_models(name):
    """The shipped models load, carry their test MAEs, and their direct forces rotate
    with the structure (float64: round-off ~1e-14 relative, far below 1e-5)."""
    from pathlib import Path

    import ase.io

    path = Path(__file__).resolve().parent.parent / "models" / "data" / f"water-{name}.pt"
    if not path.is_file():
        pytest.skip(f"{path} not built yet (python -m ipi_ncforces.models.make_shipped)")
    model = load_model(path, require_heads=SHIPPED[name], dtype=torch.float64)
    assert model.metadata["status"] == "trained" and model.metadata["test_mae"]
    atoms = ase.io.read(Path(__file__).resolve().parent.parent / "inputs" / "water16.xyz")
    atoms.pbc = True
    batch = Batch.from_ase([atoms])
    rotation = random_rotation(3)
    rotated = Batch(batch.species, batch.positions @ rotation.T, batch.cells @ rotation.T)
    direct = "direct" in model.heads
    a = evaluate(model, batch, conservative="energy" in model.heads, direct=direct, virial=False)
    b = evaluate(model, rotated, conservative="energy" in model.heads, direct=direct, virial=False)
    for f, g in ((a.forces, b.forces), (a.direct_forces, b.direct_forces)):
        if f is not None:
            assert (f @ rotation.T - g).norm() / f.norm() < 1e-5
