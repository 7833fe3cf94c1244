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
