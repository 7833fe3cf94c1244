"""Turn i-PI requests (cells and positions in Bohr) into i-PI replies (Hartree units).

:class:`ForceEvaluator` is shared by the socket driver, the PES class used by
``i-pi-py_driver -m custom`` and ``<ffdirect>``, and the benchmarks. A whole i-PI
batch (e.g. all PIMD beads) becomes ONE batched model call, with one host->device copy
in and one device->host copy out.

Modes:
* ``conservative``: E, F = -dE/dr, virial W = -dE/dstrain (autograd).
* ``direct``: direct forces without an autograd graph; E from the energy head if the
  model has one (else 0, flagged in extras); the direct virial if the model predicts
  one, else zeros (flagged ``virial_available: false`` and warned once).
* ``correction``: F_cons - F_direct and W_cons - W_direct, energy 0 (the energy is
  carried by the level that serves ``direct`` or ``conservative``).
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from ipi_ncforces.ipi_driver.allocator import keep_freed_memory
from ipi_ncforces.models.units import (
    ANGSTROM_PER_BOHR,
    HARTREE_BOHR_PER_EV_ANGSTROM,
    HARTREE_PER_EV,
)
from ipi_ncforces.models.backend import ModelBackend, NativeBackend, as_backend
from ipi_ncforces.models.base import DIRECT_HEAD, ENERGY_HEAD, Batch, PotentialModel, Prediction
from ipi_ncforces.models.modes import CONSERVATIVE, CORRECTION, DIRECT, FORCE_MODES, HEADS_FOR_MODE
from ipi_ncforces.models.neighbors import NeighborCache


class ForceError(RuntimeError):
    """The model produced forces that must not be sent to i-PI (NaN/inf or absurd)."""


@dataclass
class RequestTimings:
    """Wall-clock seconds spent per request, split into stages."""

    to_device: list[float] = field(default_factory=list)
    model: list[float] = field(default_factory=list)
    to_host: list[float] = field(default_factory=list)
    structures: int = 0

    def summary(self) -> str:
        n = len(self.model)
        if n == 0:
            return "no requests served"
        ms = lambda xs: 1e3 * float(np.mean(xs))  # noqa: E731
        total = np.add(np.add(self.to_device, self.model), self.to_host)
        return (
            f"{n} requests, {self.structures} structures; per request: "
            f"mean {1e3 * float(np.mean(total)):.3f} ms, median {1e3 * float(np.median(total)):.3f} ms, "
            f"max {1e3 * float(np.max(total)):.3f} ms (copy in {ms(self.to_device):.3f} ms, "
            f"model {ms(self.model):.3f} ms, copy out {ms(self.to_host):.3f} ms); "
            f"{1e3 * float(np.sum(total)) / max(self.structures, 1):.3f} ms per structure"
        )


class ForceEvaluator:
    """Evaluate one model in one mode for i-PI.

    model: a loaded PotentialModel (already on ``device`` in ``dtype``), or any
      :class:`ipi_ncforces.models.backend.ModelBackend` (e.g. a metatomic model file);
      the evaluator talks to it only through the backend interface (``self.backend``).
    species: (N,) atomic numbers of the structure i-PI simulates, in i-PI's atom order.
    mode: one of FORCE_MODES.
    remove_net_force: subtract the per-structure mean of the direct forces (direct and
      correction modes) so their sum is zero, as i-PI's ``metatomic`` PES and
      metatomic-ase do. On by default: a direct head's forces have a non-zero sum (no
      Newton's third law) that accelerates the centre of mass. False serves the raw head.
      Conservative forces sum to zero by construction and are never changed.
    max_force_ev_ang: replies with |F| above this (eV/A) are refused as absurd.
    extras_other_head: also return the other head's forces (eV/A) in the extras JSON.
    neighbor_skin_ang: if > 0, keep neighbour lists between requests in a
      :class:`ipi_ncforces.models.neighbors.NeighborCache` with this Verlet skin (A); 0 rebuilds every call.
      (Our models only: a metatomic backend keeps vesin's Verlet lists itself.)
    """

    def __init__(
        self,
        model: PotentialModel | ModelBackend,
        species: np.ndarray | list[int],
        mode: str = CONSERVATIVE,
        *,
        remove_net_force: bool = True,
        max_force_ev_ang: float = 1000.0,
        extras_other_head: bool = False,
        neighbor_skin_ang: float = 0.0,
    ):
        if mode not in FORCE_MODES:
            raise ValueError(f"unknown mode '{mode}' (choose from {', '.join(FORCE_MODES)})")
        self.backend = as_backend(model)
        for head in HEADS_FOR_MODE[mode]:
            self.backend.require_head(head)
        self.model = model
        self.mode = mode
        self.device = self.backend.device
        self.dtype = self.backend.dtype
        self.species = torch.as_tensor(np.asarray(species), dtype=torch.long, device=self.device)
        self.backend.check_species(self.species)
        self.remove_net_force = remove_net_force
        self.max_force_ev_ang = float(max_force_ev_ang)
        self.extras_other_head = extras_other_head
        self.timings = RequestTimings()
        native = isinstance(self.backend, NativeBackend)
        self.neighbor_cache = NeighborCache(neighbor_skin_ang) if neighbor_skin_ang > 0 and native else None
        self.requests = 0
        self._warned_virial = False
        keep_freed_memory()  # per-request tensors stay mapped: see ipi_driver/allocator.py

    def _batch(self, cells_bohr: list[np.ndarray], positions_bohr: list[np.ndarray]) -> Batch:
        n_atoms = len(self.species)
        for pos in positions_bohr:
            if pos.size != 3 * n_atoms:
                raise ValueError(
                    f"i-PI sent {pos.size // 3} atoms but the structure template has {n_atoms}; "
                    "use the same structure file for i-PI and the driver"
                )
        # i-PI's cell h holds lattice vectors as columns; models want rows
        cells = np.stack([np.asarray(h, dtype=np.float64).reshape(3, 3).T for h in cells_bohr])
        positions = np.stack([np.asarray(p, dtype=np.float64).reshape(n_atoms, 3) for p in positions_bohr])
        host = torch.from_numpy(np.concatenate([positions.reshape(-1), cells.reshape(-1)]) * ANGSTROM_PER_BOHR)
        flat = host.to(device=self.device, dtype=self.dtype, non_blocking=False)
        n_pos = positions.size
        return Batch(
            species=self.species,
            positions=flat[:n_pos].reshape(positions.shape),
            cells=flat[n_pos:].reshape(cells.shape),
        )

    def _predict(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """energy (B,) eV, forces (B,N,3) eV/A, virial (B,3,3) eV, extra tensors."""
        heads = self.backend.heads
        if self.mode == CONSERVATIVE:
            want_direct = self.extras_other_head and DIRECT_HEAD in heads
            p = self.backend.evaluate(batch, conservative=True, direct=want_direct)
        elif self.mode == DIRECT:
            want_cons = self.extras_other_head and ENERGY_HEAD in heads
            p = self.backend.evaluate(batch, conservative=want_cons, direct=True)
        else:
            p = self.backend.evaluate(batch, conservative=True, direct=True)
        return self._outputs(p, batch)

    def _outputs(self, p: Prediction, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """This mode's (energy eV, forces eV/A, virial eV, extra tensors) from a prediction
        that holds at least the heads the mode (and extras_other_head) needs."""
        extra: dict[str, torch.Tensor] = {}
        zeros_virial = torch.zeros(batch.n_structures, 3, 3, dtype=self.dtype, device=self.device)
        if self.mode == CONSERVATIVE:
            if self.extras_other_head and p.direct_forces is not None:
                extra["direct_forces"] = p.direct_forces
            return p.energy, p.forces, p.virial, extra
        if self.mode == DIRECT:
            if self.extras_other_head and p.forces is not None:
                extra["conservative_forces"] = p.forces
            energy = p.energy if p.energy is not None else torch.zeros_like(zeros_virial[:, 0, 0])
            virial = p.direct_virial
            if virial is None:
                virial = zeros_virial
                if not self._warned_virial:
                    print(
                        "ipi-nc driver: this model predicts no direct stress; the virial sent to i-PI is zero "
                        "(fine for NVE/NVT/PIMD at fixed cell, wrong for NPT)",
                        file=sys.stderr,
                    )
                    self._warned_virial = True
            return energy, p.direct_forces, virial, extra
        dv = p.direct_virial if p.direct_virial is not None else zeros_virial
        return torch.zeros_like(p.energy), p.forces - p.direct_forces, p.virial - dv, extra

    def _check(self, forces: np.ndarray) -> None:
        if not np.all(np.isfinite(forces)):
            raise ForceError(
                f"model returned NaN/inf forces at request {self.requests} ({self.mode} mode); not sent to i-PI"
            )
        largest = float(np.abs(forces).max()) if forces.size else 0.0
        if largest > self.max_force_ev_ang:
            raise ForceError(
                f"model returned an absurd force of {largest:.3g} eV/A (limit {self.max_force_ev_ang:g}) "
                f"at request {self.requests} ({self.mode} mode); not sent to i-PI"
            )

    def __call__(
        self, cells_bohr: list[np.ndarray], positions_bohr: list[np.ndarray]
    ) -> list[tuple[float, np.ndarray, np.ndarray, str]]:
        """Evaluate a batch; returns one (energy Ha, forces Ha/Bohr (N,3), virial Ha (3,3), extras JSON)
        per structure, in i-PI's atomic units."""
        self.requests += 1
        t0 = time.perf_counter()
        batch = self._batch(cells_bohr, positions_bohr)
        t1 = time.perf_counter()
        with self._neighbors():
            outputs = self._predict(batch)
        return self._finish(outputs, batch.n_structures, t0, t1)

    def _neighbors(self):
        return self.neighbor_cache.active() if self.neighbor_cache is not None else nullcontext()

    def call_with_direct(
        self, cells_bohr: list[np.ndarray], positions_bohr: list[np.ndarray], direct: "ForceEvaluator"
    ) -> tuple[list | ForceError, list | ForceError]:
        """Conservative replies AND the replies ``direct`` (a direct-mode evaluator on the SAME
        model) would send for these positions, from one backbone pass. Either list is a
        ForceError instead if its forces fail the checks, so that the error is raised where
        those forces are asked for. The pass counts in this evaluator's timings."""
        if self.mode != CONSERVATIVE or direct.mode != DIRECT or direct.backend is not self.backend:
            raise ValueError("call_with_direct needs a conservative evaluator and a direct one on the same model")
        self.requests += 1
        direct.requests += 1
        t0 = time.perf_counter()
        batch = self._batch(cells_bohr, positions_bohr)
        t1 = time.perf_counter()
        with self._neighbors():
            p = self.backend.evaluate(batch, conservative=True, direct=True)
        n = batch.n_structures
        # the direct side first: _finish of this side records the timings of the whole pass
        try:
            direct_results: list | ForceError = direct._finish(direct._outputs(p, batch), n, t0, t1, record=False)
        except ForceError as exc:
            direct_results = exc
        try:
            results: list | ForceError = self._finish(self._outputs(p, batch), n, t0, t1)
        except ForceError as exc:
            results = exc
        return results, direct_results

    def _finish(
        self,
        outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict],
        n: int,
        t0: float,
        t1: float,
        record: bool = True,
    ) -> list[tuple[float, np.ndarray, np.ndarray, str]]:
        """Net-force removal, host copy, checks, timings (if ``record``), unit conversion."""
        energy, forces, virial, extra = outputs
        if self.remove_net_force and self.mode != CONSERVATIVE:
            forces = forces - forces.mean(dim=1, keepdim=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()
        # one device->host copy for everything
        packed = torch.cat([energy.reshape(n, 1), forces.reshape(n, -1), virial.reshape(n, 9)], dim=1)
        host = packed.detach().to("cpu", torch.float64).numpy()
        extra_host = {k: v.detach().to("cpu", torch.float64).numpy() for k, v in extra.items()}
        t3 = time.perf_counter()
        self._check(host[:, 1:-9])
        if record:
            self.timings.to_device.append(t1 - t0)
            self.timings.model.append(t2 - t1)
            self.timings.to_host.append(t3 - t2)
            self.timings.structures += n

        results = []
        has_energy = ENERGY_HEAD in self.backend.heads and self.mode != CORRECTION
        for b in range(n):
            extras = {
                "mode": self.mode,
                "energy_available": has_energy,
                "model_ms": 1e3 * (t2 - t1) / n,
            }
            if self.mode == DIRECT:
                extras["virial_available"] = self.model_has_direct_virial
            for key, value in extra_host.items():
                extras[key + "_ev_ang"] = value[b].tolist()
            results.append(
                (
                    float(host[b, 0] * HARTREE_PER_EV),
                    host[b, 1:-9].reshape(-1, 3) * HARTREE_BOHR_PER_EV_ANGSTROM,
                    host[b, -9:].reshape(3, 3) * HARTREE_PER_EV,
                    json.dumps(extras),
                )
            )
        return results

    @property
    def model_has_direct_virial(self) -> bool:
        return bool(self.backend.predicts_direct_virial)
