"""``ipi-nc export``: write our models as metatomic ``AtomisticModel`` TorchScript files.

The exported file runs wherever metatomic runs: i-PI's ``metatomic`` PES, metatomic-ase's
calculator, LAMMPS ``pair_style metatomic``, and our own driver. The wrapper
(:class:`DualHeadMetatomic`) reuses the trained layers of a
:class:`ipi_ncforces.models.dualhead.DualHeadPotential` and replaces our vesin-torch
neighbour search by the full neighbour list (cutoff = the model's, in Angstrom) that the
engine computes from the model's request, so the same backbone, heads and numbers
(up to summation order) come out.

Outputs (metatomic 0.1.19 names and layouts):

* ``energy`` (eV; per system, or per atom when asked) for C and M models;
* ``non_conservative_force`` (eV/A, values (n_atoms, 3, 1)) for NC and M models;
* ``non_conservative_stress`` (eV/A^3, (n_systems, 3, 3, 1)) = -W / V from the direct
  head's pair virial W (eV), 0 for a non-periodic system (i-PI multiplies by V again).

q-TIP4P/F is exported as an energy-only model (forces and virial by autograd in the
engine) through :class:`ipi_ncforces.models.qtip4pf_metatomic.QTIP4PFMetatomic`, which reads
the engine's neighbour list instead of building its own with vesin-torch (not scriptable).
"""



from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

from ipi_ncforces.models.base import DIRECT_HEAD, DTYPES, ENERGY_HEAD, PotentialModel
from ipi_ncforces.models.dualhead import DualHeadPotential, cosine_cutoff
from ipi_ncforces.models.qtip4pf import QTIP4PF

try:  # metatensor/metatomic classes are needed to script and save; imported lazily by callers
    from metatensor.torch import Labels, TensorBlock, TensorMap
    from metatomic.torch import ModelOutput, NeighborListOptions, System
except ImportError:  # pragma: no cover - metatomic-torch is a dependency
    Labels = TensorBlock = TensorMap = ModelOutput = NeighborListOptions = System = None

PAPER = (
    "F. Bigi, M. F. Langer, M. Ceriotti, The dark side of the forces: assessing non-conservative force "
    "models for atomistic machine learning, ICML 2025, arXiv:2412.11569"
)
QTIP4PF_PAPER = (
    "S. Habershon, T. E. Markland, D. E. Manolopoulos, Competing quantum effects in the dynamics of a "
    "flexible water model, J. Chem. Phys. 131, 024501 (2009)"
)
REPOSITORY = "ipi-ncforces (i-PI drivers and studies of non-conservative forces)"


class DualHeadMetatomic(nn.Module):
    """metatomic ``ModelInterface`` around a DualHeadPotential (its layers, not a copy).

    forward(systems, outputs, selected_atoms) -> {"energy": ..., "non_conservative_force":
    ..., "non_conservative_stress": ...} for the requested ones, from one backbone pass.
    """

    def __init__(self, model: DualHeadPotential):
        super().__init__()
        self.has_energy: bool = ENERGY_HEAD in model.heads
        self.has_direct: bool = DIRECT_HEAD in model.heads
        self.cutoff: float = float(model.cutoff)
        self.scale_ev: float = float(model.scale_ev)
        self.norm: float = float(model.avg_neighbors) ** -0.5
        self.embedding = model.embedding
        self.rbf = model.rbf
        self.interactions = model.interactions
        identity = nn.Identity()
        self.energy_mlp = model.energy_mlp if self.has_energy else identity
        self.direct_center = model.direct_center if self.has_direct else identity
        self.direct_neighbor = model.direct_neighbor if self.has_direct else identity
        self.direct_radial = model.direct_radial if self.has_direct else identity
        self.direct_gate = model.direct_gate if self.has_direct else identity
        self.direct_out = model.direct_out if self.has_direct else identity
        dtype = model.embedding.weight.dtype
        self.register_buffer("offsets", torch.tensor(model.energy_offsets_ev, dtype=dtype))
        self.register_buffer("species_index", model.species_index.clone())
        self.neighbors_options = NeighborListOptions(cutoff=self.cutoff, full_list=True, strict=True)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [self.neighbors_options]

    def forward(
        self,
        systems: List[System],
        outputs: Dict[str, ModelOutput],
        selected_atoms: Optional[Labels] = None,
    ) -> Dict[str, TensorMap]:
        device = systems[0].positions.device
        dtype = systems[0].positions.dtype
        n_systems = len(systems)
        centers: List[torch.Tensor] = []
        neighbors: List[torch.Tensor] = []
        vectors: List[torch.Tensor] = []
        edge_system: List[torch.Tensor] = []
        kinds: List[torch.Tensor] = []
        atom_system: List[torch.Tensor] = []
        atom_index: List[torch.Tensor] = []
        first_atom: List[int] = []
        n_total = 0
        for s, system in enumerate(systems):
            pairs = system.get_neighbor_list(self.neighbors_options)
            samples = pairs.samples.values
            centers.append(samples[:, 0].to(torch.long) + n_total)
            neighbors.append(samples[:, 1].to(torch.long) + n_total)
            vectors.append(pairs.values.reshape(-1, 3))
            edge_system.append(torch.full((samples.shape[0],), s, dtype=torch.long, device=device))
            n_atoms = len(system)
            kinds.append(self.species_index[system.types.to(torch.long)])
            atom_system.append(torch.full((n_atoms,), s, dtype=torch.long, device=device))
            atom_index.append(torch.arange(n_atoms, dtype=torch.long, device=device))
            first_atom.append(n_total)
            n_total += n_atoms
        center = torch.cat(centers)
        neighbor = torch.cat(neighbors)
        vector = torch.cat(vectors)
        edge_structure = torch.cat(edge_system)
        kind = torch.cat(kinds)
        per_atom_system = torch.cat(atom_system)
        per_atom_index = torch.cat(atom_index)

        r = torch.linalg.vector_norm(vector, dim=1)
        unit = vector / r.unsqueeze(1)
        rbf = self.rbf(r, cosine_cutoff(r, self.cutoff))
        h = self.embedding(kind)
        for block in self.interactions:
            h = block(h, rbf, unit, center, neighbor, self.norm)

        # atoms whose outputs are asked for (all by default), as flat indices
        selected = torch.arange(n_total, dtype=torch.long, device=device)
        if selected_atoms is not None:
            chosen = selected_atoms.values.to(device)
            starts = torch.tensor(first_atom, dtype=torch.long, device=device)
            selected = starts[chosen[:, 0].to(torch.long)] + chosen[:, 1].to(torch.long)

        result: Dict[str, TensorMap] = {}
        key = Labels("_", torch.zeros((1, 1), dtype=torch.int32, device=device))
        if self.has_energy and "energy" in outputs:
            per_atom = self.scale_ev * self.energy_mlp(h).squeeze(1) + self.offsets.to(dtype)[kind]
            request = outputs["energy"]
            if request.sample_kind == "atom":
                values = per_atom[selected].reshape(-1, 1)
                samples = Labels(
                    ["system", "atom"],
                    torch.stack([per_atom_system[selected], per_atom_index[selected]], dim=1).to(torch.int32),
                )
            else:
                values = torch.zeros(n_systems, dtype=dtype, device=device)
                values = values.index_add(0, per_atom_system[selected], per_atom[selected]).reshape(-1, 1)
                samples = Labels("system", torch.arange(n_systems, dtype=torch.int32, device=device).reshape(-1, 1))
            energy_block = TensorBlock(
                values=values,
                samples=samples,
                components=[],
                properties=Labels("energy", torch.zeros((1, 1), dtype=torch.int32, device=device)),
            )
            result["energy"] = TensorMap(key, [energy_block])

        want_force = "non_conservative_force" in outputs
        want_stress = "non_conservative_stress" in outputs
        if self.has_direct and (want_force or want_stress):
            pre = self.direct_center(h)[center] + self.direct_neighbor(h)[neighbor]
            hidden = nn.functional.silu(pre + self.direct_radial(rbf)) * self.direct_gate(rbf)
            weight = self.direct_out(hidden).squeeze(1)
            pair_force = (self.scale_ev * weight).unsqueeze(1) * unit
            xyz = Labels("xyz", torch.arange(3, dtype=torch.int32, device=device).reshape(-1, 1))
            if want_force:
                forces = torch.zeros(n_total, 3, dtype=dtype, device=device).index_add(0, center, pair_force)
                force_block = TensorBlock(
                    values=forces[selected].reshape(-1, 3, 1),
                    samples=Labels(
                        ["system", "atom"],
                        torch.stack([per_atom_system[selected], per_atom_index[selected]], dim=1).to(torch.int32),
                    ),
                    components=[xyz],
                    properties=Labels(
                        "non_conservative_force", torch.zeros((1, 1), dtype=torch.int32, device=device)
                    ),
                )
                result["non_conservative_force"] = TensorMap(key, [force_block])
            if want_stress:
                per_edge = -0.5 * vector.unsqueeze(2) * pair_force.unsqueeze(1)
                virial = torch.zeros(n_systems, 3, 3, dtype=dtype, device=device).index_add(0, edge_structure, per_edge)
                virial = 0.5 * (virial + virial.transpose(1, 2))
                volumes: List[torch.Tensor] = []
                for system in systems:
                    volumes.append(torch.abs(torch.linalg.det(system.cell)))
                volume = torch.stack(volumes).reshape(n_systems, 1, 1)
                safe = torch.where(volume > 0, volume, torch.ones_like(volume))
                stress = torch.where(volume > 0, -virial / safe, torch.zeros_like(virial))
                stress_block = TensorBlock(
                    values=stress.reshape(n_systems, 3, 3, 1),
                    samples=Labels("system", torch.arange(n_systems, dtype=torch.int32, device=device).reshape(-1, 1)),
                    components=[
                        Labels("xyz_1", torch.arange(3, dtype=torch.int32, device=device).reshape(-1, 1)),
                        Labels("xyz_2", torch.arange(3, dtype=torch.int32, device=device).reshape(-1, 1)),
                    ],
                    properties=Labels(
                        "non_conservative_stress", torch.zeros((1, 1), dtype=torch.int32, device=device)
                    ),
                )
                result["non_conservative_stress"] = TensorMap(key, [stress_block])
        return result


class ExportError(ValueError):
    """A model that cannot be exported; one line naming the file and why."""


def interaction_range_ang(model: DualHeadPotential) -> float:
    """How far (A) an atom's outputs can see: one cutoff per interaction block, one more
    for the direct head (it mixes the features of both atoms of each edge)."""
    return model.cutoff * (model.n_layers + (1 if DIRECT_HEAD in model.heads else 0))


def to_atomistic(
    model: PotentialModel,
    *,
    dtype: torch.dtype = torch.float64,
    name: str = "",
    description: str = "",
    source: str = "",
    direct_stress: bool = True,
):
    """A metatomic ``AtomisticModel`` for ``model`` (a DualHeadPotential or QTIP4PF), in ``dtype``.

    direct_stress: declare ``non_conservative_stress`` for a model with a direct head
    (False makes a model like most direct-force models in the wild: forces only)."""
    import metatomic.torch as mta

    if isinstance(model, QTIP4PF):
        return _qtip4pf_atomistic(model, dtype=dtype, name=name, description=description)
    if not isinstance(model, DualHeadPotential):
        kind = type(model).__name__
        raise ExportError(
            f"'{source or kind}' holds a {kind}; only dual-head ML models (C, NC, M) and q-TIP4P/F can be exported"
        )
    model = model.to(dtype=dtype).eval()
    module = DualHeadMetatomic(model).to(dtype=dtype).eval()
    outputs = {}
    if module.has_energy:
        outputs["energy"] = mta.ModelOutput(unit="eV", sample_kind="atom", description="total energy, sum of atomic energies")
    if module.has_direct:
        outputs["non_conservative_force"] = mta.ModelOutput(
            unit="eV/Angstrom", sample_kind="atom", description="direct (non-conservative) forces"
        )
        if direct_stress:
            outputs["non_conservative_stress"] = mta.ModelOutput(
                unit="eV/Angstrom^3",
                sample_kind="system",
                description="direct stress, -W/V from the direct head's pair virial",
            )
    variant = getattr(model, "variant", "")
    heads = " and ".join(
        {"energy": "an energy head (conservative forces by autograd)", "direct": "a direct-force head"}[h]
        for h in model.heads
    )
    metadata = mta.ModelMetadata(
        name=name or f"ipi-ncforces dual-head {variant} water model",
        description=description
        or (
            f"Message-passing potential ({model.n_layers} interaction blocks, cutoff {model.cutoff:g} A) with "
            f"{heads}, from {REPOSITORY}; variant {variant}."
        ),
        authors=["ipi-ncforces"],
        references={"model": [PAPER], "architecture": [PAPER]},
    )
    capabilities = mta.ModelCapabilities(
        outputs=outputs,
        atomic_types=sorted(int(z) for z in model.species),
        interaction_range=interaction_range_ang(model),
        length_unit="angstrom",
        supported_devices=["cpu", "cuda"],
        dtype={torch.float64: "float64", torch.float32: "float32"}[dtype],
    )
    return mta.AtomisticModel(module, metadata, capabilities)


def _qtip4pf_atomistic(model: QTIP4PF, *, dtype: torch.dtype, name: str, description: str):
    """Energy-only metatomic model of q-TIP4P/F (Ewald: interaction range infinite)."""
    import metatomic.torch as mta

    from ipi_ncforces.models.qtip4pf_metatomic import QTIP4PFMetatomic

    module = QTIP4PFMetatomic(model).to(dtype=dtype).eval()
    metadata = mta.ModelMetadata(
        name=name or "q-TIP4P/F water",
        description=description
        or (
            f"q-TIP4P/F flexible water (energy only; forces and virial by autograd), from {REPOSITORY}. "
            f"Ewald sum (alpha {model.ewald_alpha:g} 1/A, real-space cutoff {model.real_cutoff:g} A, "
            f"|k| < {model.kspace_cutoff:g} 1/A), O-O Lennard-Jones switched to 0 at {model.lj_cutoff:g} A. "
            "Atoms must be ordered O H H per molecule."
        ),
        authors=["ipi-ncforces"],
        references={"model": [QTIP4PF_PAPER], "implementation": [REPOSITORY]},
    )
    capabilities = mta.ModelCapabilities(
        outputs={"energy": mta.ModelOutput(unit="eV", sample_kind="system", description="total energy")},
        atomic_types=[1, 8],
        interaction_range=float("inf"),
        length_unit="angstrom",
        supported_devices=["cpu", "cuda"],
        dtype={torch.float64: "float64", torch.float32: "float32"}[dtype],
    )
    return mta.AtomisticModel(module, metadata, capabilities)


def export_model(
    model_path: str | Path,
    output_path: str | Path,
    *,
    dtype: torch.dtype = torch.float64,
    name: str = "",
    description: str = "",
    direct_stress: bool = True,
) -> Path:
    """Read our ``model_path`` (safe load), write the metatomic TorchScript file ``output_path``."""
    from ipi_ncforces.models.io import load_model

    model = load_model(model_path, dtype=dtype)
    atomistic = to_atomistic(
        model, dtype=dtype, name=name, description=description, source=str(model_path), direct_stress=direct_stress
    )
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        atomistic.save(str(output_path))
        _drop_recorded_extensions(output_path)
    return output_path


EXTRA_FILES = ("torch-version", "metatomic-version", "extensions", "extensions-deps", "export-metadata", "model-metadata")


def _drop_recorded_extensions(path: Path) -> None:
    """``AtomisticModel.save`` records every TorchScript library loaded in this process
    (here vesin_torch, which our training-time neighbour search imports) as a required
    extension; the exported code uses none, so engines should not be asked to load any."""
    extra = {name: "" for name in EXTRA_FILES}
    module = torch.jit.load(str(path), _extra_files=extra)
    extra["extensions"] = "[]"
    extra["extensions-deps"] = "[]"
    torch.jit.save(module, str(path), _extra_files=extra)


def main(argv: list[str] | None = None) -> int:
    """``ipi-nc export MODEL.pt OUT.pt``; exit 0, or 2 (bad input) with a one-line error."""
    import argparse
    import sys

    from ipi_ncforces.models.io import ModelFileError

    parser = argparse.ArgumentParser(
        prog="ipi-nc export",
        description="Write an ipi-ncforces C / NC / M model or q-TIP4P/F as a metatomic TorchScript file "
        "(for i-PI's metatomic PES, metatomic-ase, LAMMPS pair_style metatomic, and 'ipi-nc driver').",
        epilog="Outputs: energy (C, M), non_conservative_force and non_conservative_stress (NC, M); "
        "q-TIP4P/F: energy only (forces and virial by autograd in the engine; atoms ordered O H H). "
        "Units eV, Angstrom.",
    )
    parser.add_argument("model", help="ipi-ncforces model file (.pt from 'ipi-nc train', or a saved q-TIP4P/F)")
    parser.add_argument("output", help="metatomic model file to write (.pt)")
    parser.add_argument(
        "--dtype", choices=("float64", "float32"), default="float64", help="precision of the exported model (default float64)"
    )
    parser.add_argument("--name", default="", help="model name in the metadata (default: from the variant)")
    parser.add_argument("--description", default="", help="model description in the metadata")
    args = parser.parse_args(argv)
    dtype = DTYPES[args.dtype]
    try:
        path = export_model(args.model, args.output, dtype=dtype, name=args.name, description=args.description)
    except (ModelFileError, ExportError) as exc:
        print(f"ipi-nc export: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ipi-nc export: error: cannot write '{args.output}': {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"ipi-nc export: wrote {path} (metatomic, {args.dtype})")
    return 0
