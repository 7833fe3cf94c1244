"""ipi-ncforces models as an i-PI PES: in-process (``<ffdirect>``) or i-PI's own Python driver.

Command line (i-PI's stock client, no ipi-nc process needed)::

    i-pi-py_driver -u -a water -m custom -P $(python -c 'import ipi_ncforces.ipi_driver.pes as p; print(p.__file__)') \\
        -o model=water-m.pt,template=water.xyz,mode=direct,device=cpu

Inside i-PI, no socket at all::

    <ffdirect name="direct">
      <pes>custom</pes>
      <pes_path>/path/to/ipi_driver/pes.py</pes_path>
      <parameters>{model: water-m.pt, template: water.xyz, mode: direct}</parameters>
    </ffdirect>

Parameters: ``model`` (.pt file), ``template`` (any ASE-readable structure with i-PI's
atom order, used for the species), ``mode`` (conservative | direct | correction),
``device`` (cpu, cuda, cuda:1), ``dtype`` (float32 | float64; default float64 on CPU,
float32 on CUDA), ``remove_net_force`` (bool, default true: the mean direct force is
subtracted, as in i-PI's ``metatomic`` PES; false serves the raw direct head), ``neighbor_skin`` (Verlet skin in A for
neighbour lists kept between calls; default 0.5 on CPU, 0 = off, the default on CUDA); for metatomic
model files also ``variant``, ``extensions`` (directory) and ``check_consistency`` (bool). i-PI batches (``batch_size``) arrive as
lists and are evaluated in ONE model call.

MTS in-process: when one i-PI holds a ``conservative`` and a ``direct`` ``<ffdirect>`` on
the same model file (same template, device, dtype and options) and the model has both
heads, the two share ONE loaded model and, at the outer steps where i-PI asks both for
the same positions, ONE backbone pass (:class:`ipi_ncforces.ipi_driver.shared_pass.SharedPass`,
as ``ipi-nc driver --mts-direct-address`` does over sockets). Replies are those of the
separate evaluators (float round-off aside). ``shared_pass: false`` turns it off.
"""

from __future__ import annotations

import sys
import weakref

from ipi.pes.dummy import Dummy_driver

SUMMARY_PREFIX = "ipi-nc pes (in-process): "  # exit-summary lines in i-PI's log (parsed by benchmarks/md.py)

__DRIVER_NAME__ = "ncforces"
__DRIVER_CLASS__ = "NCForcesDriver"


def _as_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (true/false), got '{value}'")


class NCForcesDriver(Dummy_driver):
    """i-PI PES serving an ipi-ncforces model; returns Hartree-unit tuples."""

    def __init__(
        self,
        model: str,
        template: str,
        mode: str = "conservative",
        device: str = "cpu",
        dtype: str | None = None,
        remove_net_force=True,
        neighbor_skin=None,
        variant=None,
        extensions=None,
        check_consistency=False,
        shared_pass=True,
        *args,
        **kwargs,
    ):
        self.model_path = model
        self.template = template
        self.mode = mode
        self.device = device
        self.dtype = dtype
        self.remove_net_force = _as_bool(remove_net_force)
        self.neighbor_skin = None if neighbor_skin is None else float(neighbor_skin)
        self.variant = variant or None
        self.extensions = extensions or None
        self.check_consistency = _as_bool(check_consistency)
        self.shared_pass = _as_bool(shared_pass)
        self.paired_with: NCForcesDriver | None = None
        super().__init__(*args, **kwargs)

    def _load_key(self) -> tuple:
        from pathlib import Path

        resolved = lambda p: str(Path(p).resolve()) if p else p  # noqa: E731
        return (resolved(self.model_path), resolved(self.template), self.device, self.dtype, self.remove_net_force,
                self.neighbor_skin, self.variant, resolved(self.extensions), self.check_consistency)

    def check_parameters(self) -> None:
        # imported here so that i-PI can scan this file without importing torch
        from ipi_ncforces.ipi_driver.setup import build_evaluator
        from ipi_ncforces.ipi_driver.shared_pass import IN_PROCESS_PES
        from ipi_ncforces.models.modes import CONSERVATIVE, DIRECT

        key = self._load_key()
        partner = IN_PROCESS_PES.get(key)
        if (
            self.shared_pass and partner is not None and partner.shared_pass and partner.paired_with is None
            and {self.mode, partner.mode} == {CONSERVATIVE, DIRECT} and self._pair_with(partner)
        ):
            return  # the partner's exit summary covers both
        # i-PI ends with os._exit after its soft-exit callbacks: atexit would not run
        from ipi.utils.softexit import softexit

        softexit.register_function(_print_summary, weakref.ref(self))
        self.evaluator = build_evaluator(
            model_path=self.model_path,
            structure_path=self.template,
            mode=self.mode,
            device=self.device,
            dtype=self.dtype,
            remove_net_force=self.remove_net_force,
            neighbor_skin_ang=self.neighbor_skin,
            variant=self.variant,
            extensions_directory=self.extensions,
            check_consistency=self.check_consistency,
        )
        self._serve = self.evaluator
        if IN_PROCESS_PES.get(key) is None:
            IN_PROCESS_PES[key] = self

    def _pair_with(self, partner: "NCForcesDriver") -> bool:
        """Serve this mode from ``partner``'s model, both through one SharedPass; False
        (nothing changed) if the model lacks a head for it."""
        from ipi_ncforces.ipi_driver.evaluator import ForceEvaluator
        from ipi_ncforces.ipi_driver.setup import default_skin_ang
        from ipi_ncforces.ipi_driver.shared_pass import SharedPass
        from ipi_ncforces.models.modes import CONSERVATIVE, DIRECT

        first = partner.evaluator
        skin = default_skin_ang(self.device) if self.neighbor_skin is None else self.neighbor_skin
        try:
            self.evaluator = ForceEvaluator(first.backend, first.species.cpu().numpy(), self.mode,
                                            remove_net_force=self.remove_net_force, neighbor_skin_ang=skin)
        except ValueError:
            return False
        cons, direct = (self, partner) if self.mode == CONSERVATIVE else (partner, self)
        assert direct.mode == DIRECT
        shared = SharedPass(cons.evaluator, direct.evaluator)
        cons._serve, direct._serve = shared.conservative, shared.direct
        self.paired_with, partner.paired_with = partner, self
        self.shared = partner.shared = shared
        return True

    def compute_structure(self, cell, pos):
        return self._serve([cell], [pos])[0]

    def compute(self, cell, pos):
        if isinstance(cell, list):
            return self._serve(cell, pos)
        return self.compute_structure(cell, pos)


def _print_summary(ref: "weakref.ref[NCForcesDriver]") -> None:
    """At i-PI's exit: the request timings of an in-process PES, as ``ipi-nc driver`` prints
    them on exit (one line per kind of pass; the shared pass of an MTS pair once)."""
    pes = ref()
    if pes is None or getattr(pes, "evaluator", None) is None:
        return
    shared = getattr(pes, "shared", None)
    text = shared.summary() if shared is not None else f"{pes.mode} forces: {pes.evaluator.timings.summary()}"
    for line in text.splitlines():
        print(SUMMARY_PREFIX + line, file=sys.stderr, flush=True)
