"""Error bars for correlated time series: block averaging and autocorrelation-aware fits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BlockAverage:
    """Mean of a correlated series with its standard error from block averaging.

    block_size: samples per block at the chosen blocking level; n_blocks: blocks used.
    """

    mean: float
    stderr: float
    block_size: int
    n_blocks: int


def block_average(x: np.ndarray) -> BlockAverage:
    """Flyvbjerg-Petersen blocking with the Lee-Kent-Needs choice of the block size.

    The series is repeatedly halved by averaging neighbouring pairs; the standard error
    of the mean at level l is s_l / sqrt(n_l - 1). The level used is the smallest with
    block size B satisfying B^3 > 2 n (s_l/s_0)^4 (Lee, Kent, Needs, PRE 83, 066706 (2011)),
    i.e. blocks longer than the correlation time; if none qualifies, the last level with
    at least 4 blocks is used (a lower bound on the error).
    """
    x = np.asarray(x, dtype=float).ravel()
    n = len(x)
    if n == 0:
        raise ValueError("block_average of an empty series")
    mean = float(x.mean())
    if n < 4:
        return BlockAverage(mean, float("nan"), 1, n)
    levels = []  # (block size, n blocks, stderr)
    y = x.copy()
    size = 1
    while len(y) >= 4:
        levels.append((size, len(y), float(y.std(ddof=1) / np.sqrt(len(y)))))
        m = len(y) // 2
        y = 0.5 * (y[0:2 * m:2] + y[1:2 * m:2])
        size *= 2
    s0 = levels[0][2] * np.sqrt(n)  # standard deviation of the raw samples
    if s0 == 0.0:
        return BlockAverage(mean, 0.0, 1, n)
    for size, nb, se in levels:
        sigma_ratio = se * np.sqrt(nb) / s0
        if size ** 3 > 2.0 * n * sigma_ratio ** 4:
            return BlockAverage(mean, se, size, nb)
    size, nb, se = levels[-1]
    return BlockAverage(mean, se, size, nb)


def statistical_inefficiency(x: np.ndarray) -> float:
    """g = 1 + 2 sum_k rho_k, with Sokal's automatic window (sum up to k < 5 tau).

    The number of independent samples of the series is n / g (g >= 1).
    """
    x = np.asarray(x, dtype=float) - np.mean(x)
    n = len(x)
    if n < 4 or not np.any(x):
        return 1.0
    f = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(f * np.conj(f))[:n]
    acf /= acf[0]
    tau = 0.5
    for k in range(1, n):
        tau += acf[k]
        if k >= 5.0 * tau:
            break
    return float(max(1.0, 2.0 * tau))


@dataclass
class LinearFit:
    """y = intercept + slope * t, with slope standard errors (same units as slope).

    stderr_naive assumes independent residuals; stderr corrects it for their
    autocorrelation by the statistical inefficiency g of the residuals:
    stderr = stderr_naive * sqrt(g).
    """

    slope: float
    intercept: float
    stderr: float
    stderr_naive: float
    inefficiency: float


def linear_fit(t: np.ndarray, y: np.ndarray) -> LinearFit:
    """Least-squares line through (t, y) with an autocorrelation-corrected slope error."""
    t = np.asarray(t, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(t) < 3:
        raise ValueError("a line fit needs at least 3 points")
    tc = t - t.mean()
    sxx = float(np.sum(tc ** 2))
    slope = float(np.sum(tc * (y - y.mean())) / sxx)
    intercept = float(y.mean() - slope * t.mean())
    resid = y - intercept - slope * t
    naive = float(np.sqrt(np.sum(resid ** 2) / (len(t) - 2) / sxx))
    g = statistical_inefficiency(resid)
    return LinearFit(slope, intercept, naive * np.sqrt(g), naive, g)


def running_slopes(t: np.ndarray, y: np.ndarray, n_windows: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slopes of y over ``n_windows`` consecutive windows: (window centre, slope, stderr).

    A real drift shows as slopes of one sign in every window; noise scatters them
    around zero within their errors.
    """
    t = np.asarray(t, dtype=float)
    y = np.asarray(y, dtype=float)
    n = len(t)
    n_windows = max(1, min(n_windows, n // 5))
    edges = np.linspace(0, n, n_windows + 1).astype(int)
    centres, slopes, errs = [], [], []
    for a, b in zip(edges[:-1], edges[1:]):
        if b - a < 3:
            continue
        fit = linear_fit(t[a:b], y[a:b])
        centres.append(0.5 * (t[a] + t[b - 1]))
        slopes.append(fit.slope)
        errs.append(fit.stderr)
    return np.array(centres), np.array(slopes), np.array(errs)


@dataclass
class ReplicaAverage:
    """Mean over independent replicas of one set-up, with the error taken from their spread.

    Block averaging of one run sees only correlations shorter than the run; a component that
    wanders on the scale of the run length (or longer) shifts the whole run mean and shows
    only as scatter between replicas. Here each replica contributes its mean m_i (equal
    weights; replicas of one set-up have equal lengths):

    - mean = (1/n) sum m_i; spread = std(m_i, ddof=1), the error of ONE run's mean;
    - stderr_replicas = spread / sqrt(n), the error of the replica mean;
    - block_stderr_one_run = rms of the runs' block-averaging errors (what one run reports);
    - stderr_blocks = sqrt(sum_i block_err_i^2) / n, what block averaging says about the mean;
    - stderr = max(stderr_replicas, stderr_blocks): the error reported. Block averaging is a
      floor (it cannot see slow components); the replica spread is unbiased but noisy for
      few replicas (relative error about 1/sqrt(2 (n-1)), ``stderr_rel_uncertainty``);
    - ratio = spread / block_stderr_one_run: about 1 when blocks see everything, > 1.5 when
      they miss slow components;
    - n_eff_* : independent samples per run, variance of the instantaneous samples divided
      by the variance of a run mean: from the replica spread (``n_eff_replicas``), from the
      blocks (``n_eff_blocks``) and n / g with the autocorrelation-based statistical
      inefficiency g (``n_eff_acf``, mean over runs).
    """

    mean: float
    stderr: float
    stderr_replicas: float
    stderr_blocks: float
    spread: float
    block_stderr_one_run: float
    ratio: float
    n_replicas: int
    samples_per_run: float
    sample_std: float
    n_eff_replicas: float
    n_eff_blocks: float
    n_eff_acf: float
    stderr_rel_uncertainty: float

    def runs_for(self, target_stderr: float) -> float:
        """Replicas of this length needed for stderr <= target_stderr (same units as mean)."""
        sigma_one = max(self.spread, self.block_stderr_one_run)
        return (sigma_one / target_stderr) ** 2


def replica_average(series: list[np.ndarray]) -> ReplicaAverage:
    """Replica mean and errors of several independent series of one observable (see ReplicaAverage)."""
    runs = [np.asarray(s, dtype=float).ravel() for s in series]
    n = len(runs)
    if n < 2:
        raise ValueError("a replica average needs at least 2 replicas")
    if any(len(r) < 4 for r in runs):
        raise ValueError("every replica needs at least 4 samples")
    means = np.array([r.mean() for r in runs])
    blocks = np.array([block_average(r).stderr for r in runs])
    spread = float(means.std(ddof=1))
    se_rep = spread / np.sqrt(n)
    se_blk = float(np.sqrt(np.sum(blocks ** 2)) / n)
    one_run = float(np.sqrt(np.mean(blocks ** 2)))
    var_inst = float(np.mean([r.var(ddof=1) for r in runs]))
    length = float(np.mean([len(r) for r in runs]))

    def n_eff(var_of_mean: float) -> float:
        return float(min(length, var_inst / var_of_mean)) if var_of_mean > 0 else length

    return ReplicaAverage(
        mean=float(means.mean()), stderr=float(max(se_rep, se_blk)), stderr_replicas=float(se_rep),
        stderr_blocks=se_blk, spread=spread, block_stderr_one_run=one_run,
        ratio=spread / one_run if one_run > 0 else float("inf"), n_replicas=n, samples_per_run=length,
        sample_std=float(np.sqrt(var_inst)), n_eff_replicas=n_eff(spread ** 2), n_eff_blocks=n_eff(one_run ** 2),
        n_eff_acf=float(np.mean([len(r) / statistical_inefficiency(r) for r in runs])),
        stderr_rel_uncertainty=float(1.0 / np.sqrt(2.0 * (n - 1))),
    )
