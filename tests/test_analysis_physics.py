"""Each analysis recovers a known answer from synthetic i-PI-format outputs: a set drift,
Maxwell-Boltzmann temperatures per species, a harmonic frequency, a random-walk D, and
g(r) = 1 for an ideal gas."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ipi_ncforces.analysis import diffusion, drift, rdf, spectrum, temperatures
from ipi_ncforces.analysis.cli import main as analyze_main
from ipi_ncforces.analysis.readers import find_run
from ipi_ncforces.analysis.stats import block_average, linear_fit
from ipi.utils.units import unit_to_internal

MASS = {"O": 15.999, "H": 1.008}  # ASE masses (amu), what the readers use
# amu (A/ps)^2 per kelvin: k_B in these units (R = 8.314462618 J/mol/K = 0.8314462618 amu A^2 ps^-2 K^-1)
KB_AMU_A2_PS2 = 0.8314462618
AU_VELOCITY_PER_A_PS = float(unit_to_internal("length", "angstrom", 1.0) / unit_to_internal("time", "picosecond", 1.0))


def water_symbols(n_mol: int) -> list[str]:
    return ["O", "H", "H"] * n_mol


def ar1(rng, n: int, rho: float, sigma: float) -> np.ndarray:
    """Correlated noise: AR(1) with lag-1 correlation rho and stationary std sigma."""
    x = np.empty(n)
    x[0] = rng.normal(0, sigma)
    innov = rng.normal(0, sigma * np.sqrt(1 - rho ** 2), n)
    for i in range(1, n):
        x[i] = rho * x[i - 1] + innov[i]
    return x


def test_block_average_matches_ar1_theory():
    """For AR(1) noise the standard error of the mean is sigma/sqrt(n) * sqrt((1+rho)/(1-rho))."""
    rng = np.random.default_rng(1)
    n, rho, sigma = 2 ** 15, 0.9, 1.0
    ba = block_average(ar1(rng, n, rho, sigma))
    exact = sigma / np.sqrt(n) * np.sqrt((1 + rho) / (1 - rho))
    # the blocking estimate from 2^15 samples has ~10-15% scatter at the chosen level
    assert ba.stderr == pytest.approx(exact, rel=0.3)


def test_drift_of_linear_plus_correlated_noise(tmp_path, write_properties):
    """A drift of 0.5 meV/atom/ps and heating of 7 K/ps are measured within 3 standard errors,
    and the error accounts for correlation (larger than the naive OLS error)."""
    rng = np.random.default_rng(2)
    natoms, n, dt_ps = 24, 4000, 0.0025
    t = np.arange(n) * dt_ps
    slope_mev, heating = 0.5, 7.0
    e_ev = -100.0 + natoms * (slope_mev * t + ar1(rng, n, 0.95, 0.3)) / 1000.0
    temp = 300.0 + heating * t + ar1(rng, n, 0.9, 5.0)
    write_properties(tmp_path / "simulation.out", {"step": np.arange(n), "time{picosecond}": t,
                                                   "conserved{electronvolt}": e_ev, "temperature{kelvin}": temp})
    res = drift.drift_of(find_run(tmp_path), natoms=natoms)
    assert abs(res["drift_mev_atom_ps"] - slope_mev) < 3 * res["drift_err_mev_atom_ps"]
    assert res["drift_err_mev_atom_ps"] > 2 * res["drift_err_naive_mev_atom_ps"]  # rho=0.95: g ~ 39
    assert res["drift_significant"]
    assert abs(res["heating_k_ps"] - heating) < 3 * res["heating_err_k_ps"]
    # the window slopes all have the sign of the drift; in a flat run they do not
    assert np.all(res["window_drift_mev_atom_ps"] > 0)
    out = tmp_path / "report"
    assert analyze_main(["drift", str(tmp_path), "--natoms", str(natoms), "--out", str(out)]) == 0
    data = json.loads((out / "drift.json").read_text())
    assert data["runs"][0]["drift_mev_atom_ps"] == pytest.approx(res["drift_mev_atom_ps"])
    assert (out / "drift.png").stat().st_size > 0 and "meV/atom/ps" in (out / "drift.md").read_text()


def maxwell_velocities(rng, symbols, temps_k: dict[str, float], n_frames: int, scale: float = 1.0) -> np.ndarray:
    """(n_frames, N, 3) velocities (A/ps) with <m v_x^2> = k_B T_s * scale per species."""
    sd = np.array([np.sqrt(KB_AMU_A2_PS2 * temps_k[s] * scale / MASS[s]) for s in symbols])
    return rng.normal(0.0, 1.0, (n_frames, len(symbols), 3)) * sd[None, :, None]


def test_species_temperatures_from_velocities(tmp_path, write_trajectory):
    """Maxwell-Boltzmann velocities at T_H = 310 K, T_O = 290 K are recovered within 3 sigma,
    with and without the centre-of-mass momentum removed (dof 3N_s - 3 M_s/M)."""
    rng = np.random.default_rng(3)
    symbols = water_symbols(32)
    masses = np.array([MASS[s] for s in symbols])
    target = {"H": 310.0, "O": 290.0}
    for name, fix_com in (("free", False), ("fixcom", True)):
        run = tmp_path / name
        run.mkdir()
        v = maxwell_velocities(rng, symbols, target, 300)
        if fix_com:  # what i-PI's fixcom does: subtract the COM velocity
            v -= (np.einsum("n,fnc->fc", masses, v) / masses.sum())[:, None, :]
        write_trajectory(run / "simulation.vel_0.xyz", symbols, v * AU_VELOCITY_PER_A_PS, 12.4,
                         what="velocities", unit="atomic_unit")
        res = temperatures.temperatures_of(find_run(run), timestep_fs=1.0)
        assert res["velocity_info"]["com_removed"] is fix_com
        temps = res["temperatures"]
        for s in ("H", "O"):
            assert abs(temps[f"T_{s}"]["mean_k"] - target[s]) < 3 * temps[f"T_{s}"]["err_k"], (name, s, temps)
        assert temps["T_H"]["source"] == "velocities"
    out = tmp_path / "report"
    assert analyze_main(["temperatures", str(tmp_path / "free"), str(tmp_path / "fixcom"), "--target", "300",
                         "--timestep-fs", "1", "--out", str(out)]) == 0
    md = (out / "temperatures.md").read_text()
    assert "ΔT_H (K)" in md and "ΔT_O (K)" in md and "| free |" in md and "| fixcom |" in md


def test_temperatures_from_properties_columns(tmp_path, write_properties):
    """i-PI's temperature(H) / temperature(atom=O) / temperature(nm=k) columns map to T_H, T_O, T_centroid, T_nm1."""
    rng = np.random.default_rng(4)
    n = 2000
    cols = {"step": np.arange(n), "time{picosecond}": np.arange(n) * 1e-3}
    truth = {"temperature{kelvin}": 301.0, "temperature(H){kelvin}": 305.0, "temperature(atom=O){kelvin}": 293.0,
             "temperature(nm=0){kelvin}": 299.0, "temperature(nm=1){kelvin}": 302.0}
    for name, mean in truth.items():
        cols[name] = mean + ar1(rng, n, 0.8, 10.0)
    write_properties(tmp_path / "simulation.out", cols)
    temps = temperatures.temperatures_of(find_run(tmp_path))["temperatures"]
    for label, name in zip(("T", "T_H", "T_O", "T_centroid", "T_nm1"), truth):
        assert abs(temps[label]["mean_k"] - truth[name]) < 3 * temps[label]["err_k"]
        assert temps[label]["source"] == "properties"


def test_pimd_centroid_and_normal_mode_temperatures(tmp_path, write_trajectory):
    """Bead velocities of a ring polymer at P*T (i-PI samples beads at P T): every normal mode
    and the centroid have temperature T = 300 K."""
    rng = np.random.default_rng(5)
    symbols, n_beads = water_symbols(16), 4
    for b in range(n_beads):
        v = maxwell_velocities(rng, symbols, {"H": 300.0, "O": 300.0}, 250, scale=n_beads)
        write_trajectory(tmp_path / f"simulation.vel_{b}.xyz", symbols, v * AU_VELOCITY_PER_A_PS, 10.0,
                         what="velocities", unit="atomic_unit", bead=b)
    res = temperatures.temperatures_of(find_run(tmp_path), timestep_fs=0.5)
    temps = res["temperatures"]
    assert res["velocity_info"]["n_beads"] == 4
    for label in ("T", "T_H", "T_O", "T_centroid", "T_nm1", "T_nm2", "T_nm3"):
        assert abs(temps[label]["mean_k"] - 300.0) < 3 * temps[label]["err_k"], (label, temps[label])


def test_vdos_peak_of_harmonic_velocities(tmp_path, write_trajectory):
    """v_i(t) = A cos(2 pi nu t + phi_i) gives a VDOS peak at nu: O at 1000 cm^-1, H at 3000 cm^-1."""
    rng = np.random.default_rng(6)
    symbols = water_symbols(8)
    n, dt_fs = 2000, 1.0
    t_ps = np.arange(n) * dt_fs * 1e-3
    nu = {"O": 1000.0 / spectrum.CM1_PER_THZ, "H": 3000.0 / spectrum.CM1_PER_THZ}  # THz
    v = np.empty((n, len(symbols), 3))
    for i, s in enumerate(symbols):
        direction = rng.normal(size=3)
        v[:, i] = np.cos(2 * np.pi * nu[s] * t_ps + rng.uniform(0, 2 * np.pi))[:, None] * direction * 5.0
    write_trajectory(tmp_path / "simulation.vel_0.xyz", symbols, v * AU_VELOCITY_PER_A_PS, 10.0,
                     what="velocities", unit="atomic_unit")
    res = spectrum.spectrum_of(find_run(tmp_path), timestep_fs=dt_fs)
    for s, expected in (("O", 1000.0), ("H", 3000.0)):
        # the peak of a windowed transform is exact up to the padded grid spacing (resolution/8)
        assert res["species"][s]["peak_cm1"] == pytest.approx(expected, abs=res["species"][s]["resolution_cm1"] / 4)


def random_walk(rng, n_frames: int, n_atoms: int, d_a2_ps: float, dt_ps: float) -> np.ndarray:
    """Brownian positions (A): Gaussian steps of variance 2 D dt per dimension, so MSD = 6 D t."""
    steps = rng.normal(0.0, np.sqrt(2 * d_a2_ps * dt_ps), (n_frames, n_atoms, 3))
    steps[0] = rng.uniform(0, 12.0, (n_atoms, 3))
    return np.cumsum(steps, axis=0)


def test_diffusion_of_wrapped_random_walk(tmp_path, write_trajectory):
    """A random walk with D = 0.25 A^2/ps (2.5e-5 cm^2/s), written wrapped into the box and with a
    uniform centre-of-mass drift added, gives D back within 3 sigma (+2% for the COM removal)."""
    rng = np.random.default_rng(7)
    symbols, d_true, dt_ps, box = water_symbols(32), 0.25, 0.01, 12.0
    x = random_walk(rng, 1500, len(symbols), d_true, dt_ps)
    x += np.arange(len(x))[:, None, None] * np.array([0.02, 0.0, 0.0])  # COM drift, 2 A/ps
    write_trajectory(tmp_path / "simulation.pos_0.xyz", symbols, np.mod(x, box), box, steps=np.arange(len(x)) * 20)
    res = diffusion.diffusion_of(find_run(tmp_path), "O", timestep_fs=0.5, n_blocks=5)
    # removing the COM of 96 independent walkers lowers D by about sum(m^2)/M^2 < 2%
    assert abs(res["d_a2_ps"] - d_true) < 3 * res["d_err_a2_ps"] + 0.02 * d_true, res
    assert res["d_1e5_cm2_s"] == pytest.approx(10 * res["d_a2_ps"])
    kept = diffusion.diffusion_of(find_run(tmp_path), "O", timestep_fs=0.5, remove_com=False)
    assert kept["d_a2_ps"] > 2 * d_true  # the drift is ballistic: it dominates the MSD if kept


def test_yeh_hummer_correction_value():
    """k_B T xi / (6 pi eta L) for water at 300 K, eta = 0.85 mPa s, L = 12.42 A is about 0.59e-5 cm^2/s."""
    corr = diffusion.yeh_hummer_a2ps(300.0, 0.85, 12.42)
    assert corr * diffusion.E5CM2S_PER_A2PS == pytest.approx(1.380649e-23 * 300 * 2.837297 / (
        6 * np.pi * 0.85e-3 * 12.42e-10) * 1e4 / 1e-5, rel=1e-6)


@pytest.mark.parametrize("cell", [np.diag([11.0, 12.0, 13.0]),
                                  np.array([[12.0, 0.0, 0.0], [4.0, 11.0, 0.0], [1.0, 2.0, 12.5]])])
def test_rdf_of_ideal_gas_is_one(tmp_path, cell, write_trajectory):
    """Uniform random positions (ideal gas) in orthorhombic and triclinic cells give g(r) = 1."""
    rng = np.random.default_rng(8)
    symbols = water_symbols(40)
    frames = rng.uniform(0, 1, (40, len(symbols), 3)) @ cell
    write_trajectory(tmp_path / "simulation.pos_0.xyz", symbols, frames, cell)
    res = rdf.rdf_of(find_run(tmp_path), [("O", "O"), ("O", "H"), ("H", "H")], n_bins=50)
    for name, (r, g) in res["series"].items():
        far = r > 2.0  # below 2 A the shells hold few pairs: Poisson noise > 10%
        # 40 frames x ~1000-6000 pairs: mean over r > 2 A is 1 within ~1%, per bin within ~10%
        assert np.mean(g[far]) == pytest.approx(1.0, abs=0.03), name
        assert np.max(np.abs(g[far] - 1.0)) < 0.35, name
