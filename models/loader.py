"""``--model FILE``: recognise our format or a metatomic export and load it as a backend.

Both paths are the safe ones: our files are read with ``torch.load(weights_only=True)``
(no arbitrary pickle code runs), metatomic files with ``torch.jit.load`` through
``metatomic.torch.load_atomistic_model`` (TorchScript, no pickle of Python objects).
Anything else gets a one-line :class:`ModelFileError` naming the file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from ipi_ncforces.models.backend import ModelBackend, NativeBackend
from ipi_ncforces.models.base import DTYPES
from ipi_ncforces.models.io import MAKE_ONE, ModelFileError, load_model

NATIVE, METATOMIC = "ipi-ncforces", "metatomic"


def model_format(path: str | Path) -> str:
    """NATIVE or METATOMIC, from the file's zip directory (nothing is unpickled).

    A TorchScript file that is not a metatomic ``AtomisticModel`` raises ModelFileError;
    anything else is left to :func:`ipi_ncforces.models.io.load_model`, whose checks name
    the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file '{path}' does not exist")
    if not zipfile.is_zipfile(path):
        return NATIVE
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return NATIVE
    if any(name.endswith("/extra/model-metadata") or name.endswith("/extra/metatomic-version") for name in names):
        return METATOMIC
    if any(name.endswith("/constants.pkl") or "/code/" in name for name in names):
        raise ModelFileError(
            f"'{path}' is a TorchScript file but not a metatomic AtomisticModel; "
            "export it with metatomic (AtomisticModel.save / 'mtt export') or 'ipi-nc export'"
        )
    return NATIVE


def load_backend(
    path: str | Path,
    *,
    require_heads: tuple[str, ...] = (),
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    variant: str | None = None,
    extensions_directory: str | Path | None = None,
    check_consistency: bool = False,
    neighbor_skin_ang: float = 0.5,
) -> ModelBackend:
    """Load ``path`` in whichever format it is; ModelFileError (one line) when it cannot
    serve ``require_heads`` or is no model.

    dtype: for our models the dtype to run in (None = float64); metatomic models run in
    their own dtype (None, or that dtype). variant / extensions_directory /
    check_consistency: metatomic only (an error for our files when set).
    neighbor_skin_ang: Verlet skin of the metatomic neighbour lists (A); our models
    take theirs from the evaluator's cache.
    """
    from ipi_ncforces.models.metatomic import MetatomicBackend, MetatomicLoadError

    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    kind = model_format(path)
    if kind == NATIVE:
        for option, value in (("--variant", variant), ("--extensions", extensions_directory)):
            if value:
                raise ModelFileError(f"{option} is for metatomic models; '{path}' is an ipi-ncforces model: drop it")
        model = load_model(path, require_heads=require_heads, device=device, dtype=dtype or torch.float64)
        return NativeBackend(model, source=str(path))
    try:
        backend = MetatomicBackend(
            path,
            device=device,
            dtype=dtype,
            variant=variant,
            extensions_directory=extensions_directory,
            check_consistency=check_consistency,
            neighbor_skin_ang=neighbor_skin_ang,
        )
    except MetatomicLoadError as exc:
        raise ModelFileError(str(exc)) from None
    missing = [h for h in require_heads if h not in backend.heads]
    if missing:
        wanted = {"energy": "'energy' output", "direct": "'non_conservative_force' (direct-force) output"}[missing[0]]
        raise ModelFileError(
            f"metatomic model '{path}' has no {wanted}"
            + (f" for variant '{variant}'" if variant else "")
            + f" (outputs: {', '.join(sorted(backend.capabilities.outputs))}); pick a mode this model supports"
        )
    return backend


def model_heads(path: str | Path) -> tuple[str, ...]:
    """The heads ("energy", "direct") a model file can serve (loads it)."""
    return load_backend(path).heads


__all__ = ["METATOMIC", "NATIVE", "MAKE_ONE", "ModelFileError", "load_backend", "model_format", "model_heads"]
