"""Matplotlib helpers (Agg backend: plots are files, never windows)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def figure(nrows: int = 1, ncols: int = 1, width: float = 6.4, height: float = 3.2):
    """A figure with ``nrows x ncols`` panels (height per row in inches)."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height * nrows), squeeze=False)
    return fig, axes


def save(fig, path: str | Path) -> Path:
    """Save ``fig`` as PNG at ``path`` and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
