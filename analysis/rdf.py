"""Radial distribution functions g_AB(r) (default O-O, O-H, H-H) of periodic runs.

Distances use the minimum image (fractional coordinates rounded), exact for
r_max <= half the smallest perpendicular width of the cell, which is the largest
r_max allowed. g_AB(r) = V n_AB(r) / (N_pairs 4 pi r^2 dr), N_pairs = N_A N_B
(A != B) or N_A (N_A - 1) / 2 (A = B), averaged over frames (and beads for PIMD):
an ideal gas gives 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase.cell import Cell
from ase.geometry import get_distances

from ipi_ncforces.analysis import plotting
from ipi_ncforces.analysis.readers import AnalysisInputError, RunFiles
from ipi_ncforces.analysis.report import markdown_table, write_report


def max_radius(cell: np.ndarray) -> float:
    """Half the smallest distance between opposite faces of the cell (A)."""
    cell = Cell(cell)
    return 0.5 * float(min(cell.volume / cell.areas()))  # volume / face area = distance between faces


def rdf(positions: np.ndarray, cells: np.ndarray, symbols: list[str], a: str, b: str,
        r_max: float, n_bins: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(r A, g(r)) of species pair a-b from (n_frames, n_atoms, 3) A positions and (n_frames, 3, 3) cells."""
    sym = np.array(symbols)
    ia, ib = np.where(sym == a)[0], np.where(sym == b)[0]
    if len(ia) == 0 or len(ib) == 0 or (a == b and len(ia) < 2):
        raise AnalysisInputError(f"not enough atoms for g_{a}{b} (have {dict(zip(*np.unique(sym, return_counts=True)))})")
    edges = np.linspace(0.0, r_max, n_bins + 1)
    hist = np.zeros(n_bins)
    norm = 0.0
    for x, cell in zip(positions, cells):
        volume = abs(np.linalg.det(cell))
        if volume < 1e-9:
            raise AnalysisInputError("g(r) needs a periodic cell; the trajectory has a zero cell")
        if r_max > max_radius(cell) + 1e-9:
            raise AnalysisInputError(f"r_max {r_max:.3f} A exceeds half the cell width {max_radius(cell):.3f} A")
        r = get_distances(x[ia], x[ib], cell=cell, pbc=True)[1]  # (n_a, n_b) minimum-image A
        if a == b:
            r = r[np.triu_indices(len(ia), k=1)]
            pairs = len(ia) * (len(ia) - 1) / 2.0
        else:
            r = r.ravel()
            pairs = float(len(ia) * len(ib))
        hist += np.histogram(r, edges)[0]
        norm += pairs / volume
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    centres = 0.5 * (edges[1:] + edges[:-1])
    return centres, hist / (shell * norm)


def rdf_of(run: RunFiles, pairs: list[tuple[str, str]], r_max: float | None = None, n_bins: int = 200,
           stride: int = 1) -> dict:
    """g(r) of every pair for one run (all bead files pooled), with first-peak position and height."""
    beads, messages = run.read_beads(("positions", "x_centroid"), "no positions trajectory for g(r)")
    pos = np.concatenate([b.data[::stride] for b in beads])
    cells = np.concatenate([b.cells[::stride] for b in beads])
    limit = min(max_radius(c) for c in cells)
    r_max = limit if r_max is None else r_max
    if r_max > limit + 1e-9:
        raise AnalysisInputError(f"{beads[0].path}: --r-max {r_max} A exceeds half the cell width {limit:.3f} A")
    result = {"run": run.name, "r_max_a": r_max, "n_frames": int(len(pos)), "pairs": {}, "warnings": messages,
              "series": {}}
    for a, b in pairs:
        r, g = rdf(pos, cells, beads[0].symbols, a, b, r_max, n_bins)
        i = int(np.argmax(g))
        result["pairs"][f"{a}-{b}"] = {"first_peak_r_a": float(r[i]), "first_peak_g": float(g[i])}
        result["series"][f"{a}-{b}"] = (r, g)
    return result


def plot(results: list[dict], path: Path) -> Path:
    """g(r) per pair (one panel each), runs overlaid."""
    names = list(dict.fromkeys(p for r in results for p in r["series"]))
    fig, axes = plotting.figure(len(names), 1)
    for row, name in enumerate(names):
        for res in results:
            if name in res["series"]:
                r, g = res["series"][name]
                axes[row, 0].plot(r, g, label=res["run"])
        axes[row, 0].axhline(1.0, color="k", lw=0.5)
        axes[row, 0].set_xlabel("r (A)")
        axes[row, 0].set_ylabel(f"g_{name}(r)")
        axes[row, 0].legend(fontsize="small")
    return plotting.save(fig, path)


def analyze(runs: list[RunFiles], out: Path, pairs: list[tuple[str, str]] | None = None,
            r_max: float | None = None, n_bins: int = 200, stride: int = 1) -> dict:
    """g(r) of every run; writes rdf.json/.md/.png. Returns the report data."""
    pairs = pairs or [("O", "O"), ("O", "H"), ("H", "H")]
    results = [rdf_of(r, pairs, r_max, n_bins, stride) for r in runs]
    png = plot(results, Path(out) / "rdf.png")
    names = [f"{a}-{b}" for a, b in pairs]
    rows = [[r["run"]] + [f"{r['pairs'][n]['first_peak_r_a']:.2f} / {r['pairs'][n]['first_peak_g']:.2f}"
                          for n in names] for r in results]
    md = markdown_table(["run"] + [f"g_{n}: peak r (A) / height" for n in names], rows)
    for r in results:  # curves in the JSON: they are the result here
        r["curves"] = {n: {"r_a": rg[0], "g": rg[1]} for n, rg in r["series"].items()}
    warnings = [w for r in results for w in r.pop("warnings")]
    notes = ["minimum image, normalised so that an ideal gas gives g = 1; PIMD: all beads pooled.",
             f"plot: {png.name}"]
    data = {"what": "rdf", "units": {"r": "A"}, "runs": results, "plots": [png.name]}
    return write_report(out, "rdf", data, md, warnings, notes)
