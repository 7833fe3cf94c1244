"""Replica error bars (analysis.stats.replica_average, ``ipi-nc analyze temperatures --replicas``).

Synthetic series with a known variance of the mean: AR(1) noise (correlation time of a few
samples, like the instantaneous kinetic temperature) plus a slow AR(1) component whose
correlation time is comparable to the run (like the slow wander of T_O seen in issue 13).
Block averaging of one run cannot see the slow part; the replica estimate must.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ipi_ncforces.analysis.cli import main as analyze_main
from ipi_ncforces.analysis.stats import block_average, replica_average


def ar1_batch(rng: np.random.Generator, shape: tuple[int, ...], n: int, phi: float, std: float) -> np.ndarray:
    """Stationary AR(1) series x_t = phi x_{t-1} + e_t with marginal std ``std``; shape + (n,)."""
    x = np.empty(shape + (n,))
    x[..., 0] = rng.normal(0.0, std, shape)
    noise = rng.normal(0.0, std * np.sqrt(1.0 - phi ** 2), shape + (n,))
    for t in range(1, n):
        x[..., t] = phi * x[..., t - 1] + noise[..., t]
    return x


def var_of_mean_ar1(n: int, phi: float, std: float) -> float:
    """Exact variance of the mean of n samples of a stationary AR(1): (s^2/n^2) sum_{|k|<n} (n-|k|) phi^|k|."""
    k = np.arange(1, n)
    return std ** 2 / n ** 2 * (n + 2.0 * np.sum((n - k) * phi ** k))


# 1500 samples per run; fast part: phi 0.8 (g = 9), 30 K; slow part: correlation time 1500
# samples (one run length), 8 K: one run's mean has sigma ~ 6.5 K, of which blocks see ~2 K.
N, FAST, SLOW = 1500, (0.8, 30.0), (1.0 - 1.0 / 1500, 8.0)
TRUE_SIGMA_ONE_RUN = float(np.sqrt(var_of_mean_ar1(N, *FAST) + var_of_mean_ar1(N, *SLOW)))


@pytest.fixture(scope="module")
def experiments():
    """300 independent experiments of 8 replicas each (true mean 0)."""
    rng = np.random.default_rng(2024)
    shape = (300, 8)
    return ar1_batch(rng, shape, N, *FAST) + ar1_batch(rng, shape, N, *SLOW)


def test_replica_sigma_matches_true_spread_with_slow_component(experiments):
    """The σ reported for a replica mean matches (within 1.5x, the issue's criterion) both the
    exact σ of the mean and the spread of the replica means over 300 synthetic experiments,
    although the block σ of one run is > 2x too small (so this test can fail)."""
    results = [replica_average(list(exp)) for exp in experiments]
    true_sigma_mean = TRUE_SIGMA_ONE_RUN / np.sqrt(8)
    empirical = float(np.std([r.mean for r in results], ddof=1))
    rms_reported = float(np.sqrt(np.mean([r.stderr ** 2 for r in results])))
    # the exact value and the empirical spread agree (300 samples: ±4% on a std)
    assert empirical == pytest.approx(true_sigma_mean, rel=0.15)
    assert 1 / 1.5 < rms_reported / empirical < 1.5
    assert 1 / 1.5 < rms_reported / true_sigma_mean < 1.5
    # single experiments: the spread of 8 replicas is within 1.5x of the truth in most of them
    ratios = np.array([r.stderr / true_sigma_mean for r in results])
    assert np.mean((ratios > 1 / 1.5) & (ratios < 1.5)) > 0.75
    # block averaging alone misses the slow part: what made the error bars too small
    block_one_run = float(np.sqrt(np.mean([r.block_stderr_one_run ** 2 for r in results])))
    assert TRUE_SIGMA_ONE_RUN / block_one_run > 2.0
    assert np.median([r.ratio for r in results]) > 2.0
    # the effective number of independent samples per run follows the true variance of a run mean
    n_eff_true = (FAST[1] ** 2 + SLOW[1] ** 2) / TRUE_SIGMA_ONE_RUN ** 2
    assert np.median([r.n_eff_replicas for r in results]) == pytest.approx(n_eff_true, rel=0.3)
    assert np.median([r.n_eff_blocks for r in results]) > 3 * n_eff_true


def test_replica_sigma_agrees_with_blocks_when_no_slow_component():
    """Fast AR(1) only: blocks see everything, spread / block σ ~ 1, n_eff ~ n (1 - phi)/(1 + phi)."""
    rng = np.random.default_rng(7)
    phi, std = 0.8, 30.0
    runs = ar1_batch(rng, (200, 8), N, phi, std)
    results = [replica_average(list(exp)) for exp in runs]
    true_sigma_one = np.sqrt(var_of_mean_ar1(N, phi, std))
    assert np.median([r.ratio for r in results]) == pytest.approx(1.0, abs=0.3)
    assert np.sqrt(np.mean([r.stderr ** 2 for r in results])) == pytest.approx(true_sigma_one / np.sqrt(8), rel=0.3)
    n_eff_true = N * (1 - phi) / (1 + phi)  # 167 for phi = 0.8
    # the blocks read ~1.35x too many independent samples (their σ ~15% small) at 1500 samples:
    # the Lee-Kent-Needs level is chosen where the plateau has not quite been reached
    for attr, rel in (("n_eff_replicas", 0.3), ("n_eff_blocks", 0.5), ("n_eff_acf", 0.3)):
        assert np.median([getattr(r, attr) for r in results]) == pytest.approx(n_eff_true, rel=rel), attr


def test_block_sigma_is_the_floor_for_few_lucky_replicas():
    """Two replicas with identical means: zero spread, so the reported σ falls back on the blocks."""
    rng = np.random.default_rng(3)
    a = rng.normal(0.0, 1.0, 400)
    r = replica_average([a, a[::-1]])
    assert r.stderr_replicas == pytest.approx(0.0, abs=1e-12)
    assert r.stderr == pytest.approx(r.stderr_blocks) and r.stderr > 0
    assert r.stderr_blocks == pytest.approx(block_average(a).stderr / np.sqrt(2))
    with pytest.raises(ValueError, match="at least 2 replicas"):
        replica_average([a])


def test_cli_replicas_reports_replica_sigma(tmp_path, write_properties, experiments):
    """``ipi-nc analyze temperatures RUN... --replicas --target 300`` writes the replica summary:
    the mean of the run means, σ = spread / sqrt(n), block σ and their ratio, and a run length
    for the σ wanted; fewer than 2 runs is an input error (exit 2)."""
    def replica_set(name: str, t_o: list[np.ndarray]) -> list[str]:
        """One run per series of experiments[0] (T, T_H from it) with the given T_O series (K)."""
        dirs = []
        for k, (series, o) in enumerate(zip(experiments[0], t_o)):
            d = tmp_path / f"{name}{k}"
            d.mkdir()
            write_properties(d / "sim.out", {"step": np.arange(N), "time{picosecond}": np.arange(N) * 1e-3,
                                             "temperature{kelvin}": 300.0 + series / 3,
                                             "temperature(H){kelvin}": 305.0 + series, "temperature(O){kelvin}": o})
            dirs.append(str(d))
        return dirs

    runs = replica_set("rep", [290.0 - s for s in experiments[0]])
    out = tmp_path / "report"
    assert analyze_main(["temperatures", *runs, "--replicas", "--target", "300", "--out", str(out)]) == 0
    data = json.loads((out / "temperatures.json").read_text())
    est = data["replicas"]["estimates"]
    means = np.array([s.mean() for s in experiments[0]])
    assert est["T_H"]["mean_k"] == pytest.approx(305.0 + means.mean())
    assert est["T_O"]["stderr_replicas_k"] == pytest.approx(means.std(ddof=1) / np.sqrt(8))
    assert est["T_O"]["ratio"] == pytest.approx(est["T_O"]["spread_k"] / est["T_O"]["block_stderr_one_run_k"])
    # run length for σ <= 1.5 K: (spread / 1.5)^2 runs of 1.5 ps (N samples of 1 fs)
    assert est["T_O"]["ps_total_needed"] == pytest.approx((means.std(ddof=1) / 1.5) ** 2 * N * 1e-3, rel=1e-3)
    md = (out / "temperatures.md").read_text()
    assert "σ replicas (K)" in md and "| T_O |" in md and "| rep0 |" in md
    split = data["replicas"]["species_split"]  # T_O - T_H per run: 290 - s - (305 + s)
    assert split["mean_k"] == pytest.approx(-15.0 - 2.0 * means.mean())
    assert split["stderr_k"] == pytest.approx(2.0 * means.std(ddof=1) / np.sqrt(8))
    assert "T_O - T_H (mean of the per-run differences" in md
    assert analyze_main(["temperatures", runs[0], "--replicas", "--out", str(out)]) == 2

    # --minus: a second set-up sharing each replica's slow part (same start), T_O 4 K higher
    others = replica_set("other", [294.0 - s + e / 10 for s, e in zip(experiments[0], experiments[1])])
    assert analyze_main(["temperatures", *runs, "--replicas", "--minus", *others, "--out", str(out)]) == 0
    paired = json.loads((out / "temperatures.json").read_text())["paired_difference"]
    assert paired["T_O"]["delta_k"] == pytest.approx(-4.0 - np.mean([s.mean() for s in experiments[1][:8]]) / 10)
    assert paired["T_H"]["delta_k"] == pytest.approx(0.0, abs=1e-9)
    assert paired["T_O"]["stderr_paired_k"] < paired["T_O"]["stderr_unpaired_k"] / 3
    assert "Paired difference" in (out / "temperatures.md").read_text()
    assert analyze_main(["temperatures", *runs, "--replicas", "--minus", *others[:3], "--out", str(out)]) == 2
    assert analyze_main(["temperatures", *runs, "--minus", *others, "--out", str(out)]) == 2


def test_time_blocks_show_a_trend_shared_by_replicas():
    """Replicas that all relax from +20 K to 0 (equilibration not finished) show it block by block,
    although each run's mean looks stationary to the replica spread."""
    from ipi_ncforces.analysis.temperatures import time_blocks

    rng = np.random.default_rng(11)
    n = 2000
    trend = 20.0 * np.exp(-np.arange(n) / 300.0)
    results = [{"series": {"T_O": 300.0 + trend + rng.normal(0, 5, n)}} for _ in range(6)]
    blocks = time_blocks(results, ["T_O"], interval_ps=1e-3)
    means = [b["T_O"]["mean_k"] - 300.0 for b in blocks]
    # exact block means of the trend: 20 * 300/500 * (1 - e^(-500/300)) e^(-500 k/300) = 9.8, 1.9, 0.4, 0.07 K
    assert means[0] == pytest.approx(9.8, abs=1.0) and abs(means[-1]) < 1.0
    assert (means[0] - means[-1]) / blocks[0]["T_O"]["stderr_k"] > 5
    assert blocks[1]["from_ps"] == pytest.approx(0.5)


def test_paired_difference_cancels_the_shared_start_and_keeps_its_sigma_honest():
    """Two set-ups whose replica k shares a slow component (same start structure) and differ
    by +5 K: the paired difference finds +5 K with a σ far below the unpaired one, and that
    σ matches the spread of the paired estimate over 200 synthetic experiments within 1.5x."""
    from ipi_ncforces.analysis.temperatures import paired_difference

    rng = np.random.default_rng(7)
    n_exp, n_rep, n = 200, 8, 600
    shared = ar1_batch(rng, (n_exp, n_rep), n, 1.0 - 1.0 / 600, 8.0)  # slow, shared by the pair
    a = shared + ar1_batch(rng, (n_exp, n_rep), n, 0.8, 30.0) + 305.0
    b = shared + ar1_batch(rng, (n_exp, n_rep), n, 0.8, 30.0) + 300.0

    def results(x):
        return [{"temperatures": {"T_O": {}}, "series": {"T_O": s}} for s in x]

    diffs = [paired_difference(results(a[i]), results(b[i]))["T_O"] for i in range(n_exp)]
    deltas = np.array([d["delta_k"] for d in diffs])
    assert deltas.mean() == pytest.approx(5.0, abs=3 * deltas.std() / np.sqrt(n_exp))
    rms_sigma = float(np.sqrt(np.mean([d["err_k"] ** 2 for d in diffs])))
    assert 1 / 1.5 < rms_sigma / deltas.std(ddof=1) < 1.5
    assert np.median([d["stderr_unpaired_k"] / d["stderr_paired_k"] for d in diffs]) > 1.5
    with pytest.raises(ValueError):
        paired_difference(results(a[0]), results(b[0][:3]))
