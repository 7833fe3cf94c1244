"""Our driver vs i-PI's own ``metatomic`` PES on the same metatomic file: MD steps/s.

One exported model (``ipi-nc export`` of the model under test, in the benchmark dtype;
a metatomic ``--model`` is used as is), NVE water at 192 and 1536 atoms, three force
set-ups, each served three ways:

* ``ours``: ``ipi-nc driver`` on a unix socket (MTS: ONE process serving both sockets,
  the outer step's direct force coming out of the conservative pass);
* ``ipi-socket``: i-PI's ``i-pi-py_driver -m metatomic`` (one process per socket);
* ``ipi-ffdirect``: ``<ffdirect><pes>metatomic</pes>`` inside i-PI (no socket).

Set-ups: conservative; direct (i-PI's ``non_conservative``, ours ``--remove-net-force``,
so both remove the mean force); MTS M=8 (cons [1, 0], direct [-1, 1]). Time per step is
i-PI's own ``t/step`` (verbosity high; warm-up steps dropped), reported per INNER step
of 0.5 fs; ratios are ours / i-PI's. Every process gets ``--threads`` threads.

Run with ``ipi-nc bench --only metatomic`` (opt-in: it starts 18 i-PI runs per size).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ipi_ncforces.benchmarks.common import BenchConfig, markdown_table, structure_file
from ipi_ncforces.benchmarks.ipi_run import STEP_RE, Provider, bench_variant
from ipi_ncforces.inputs import make
from ipi_ncforces.ipi_driver import launch
from ipi_ncforces.models.base import DTYPES

DT_FS = 0.5
WARMUP_STEPS = 2
SERVERS = ("ours", "ipi-socket", "ipi-ffdirect")
SETUPS = {"conservative": ("conservative", 1), "direct": ("direct", 1), "mts8": ("mts", 8)}  # inputs.make forces, M


def exported_model(cfg: BenchConfig) -> Path:
    """The metatomic file under test: ``cfg.model_path`` exported (once) in ``cfg.dtype``,
    or ``cfg.model_path`` itself when it already is a metatomic file."""
    from ipi_ncforces.models.loader import METATOMIC, model_format
    from ipi_ncforces.models.metatomic_export import export_model

    if model_format(cfg.model_path) == METATOMIC:
        return Path(cfg.model_path)
    out = Path(cfg.out) / "work" / f"{Path(cfg.model_path).stem}-metatomic-{cfg.dtype}.pt"
    if not out.is_file():
        dtype = DTYPES[cfg.dtype]
        export_model(cfg.model_path, out, dtype=dtype)
    return out


def _drivers(server: str, v: make.Variant, model: Path, structure: Path, cfg: BenchConfig) -> list[list[str]]:
    """Driver commands for a socket server (none for ffdirect)."""
    names = make.forcefield_names(v)
    if server == "ours":
        mode = "conservative" if names[0] == "cons" else "direct"
        args = ["--model", str(model), "--structure", str(structure), "--mode", mode, "--device", cfg.device,
                "--unix", "--address", make.unix_address(v, names[0]), "--connect-timeout", "120"]
        if "direct" in names:
            args.append("--remove-net-force")
        if len(names) == 2:
            args += ["--mts-direct-address", make.unix_address(v, "direct")]
        return [launch.driver_command(args)]
    if server == "ipi-socket":
        executable = launch.find_executable("i-pi-py_driver")
        return [
            [executable, "-u", "-a", make.unix_address(v, ff), "-m", "metatomic", "-o",
             f"template={structure},model={model},device={cfg.device},non_conservative={'true' if ff == 'direct' else 'false'}"]
            for ff in names
        ]
    return []


def run_one(server: str, setup: str, n_atoms: int, model: Path, cfg: BenchConfig, workdir: Path, outer_steps: int) -> float:
    """Seconds per inner step (median over the steps after the warm-up)."""
    import shutil

    forces, m = SETUPS[setup]
    structure = structure_file(n_atoms, Path(cfg.out) / "work")
    provider = Provider(model, cfg.device, cfg.dtype, cfg.threads)
    v = bench_variant(structure, forces, outer_steps, provider, dt_fs=DT_FS, mts_m=m, pes="metatomic", dtype="",
                      sockets="ffdirect" if server == "ipi-ffdirect" else "unix")
    if workdir.exists():
        shutil.rmtree(workdir)
    xml = make.write(v, workdir / "input.xml")
    ipi = launch.start_ipi(xml, workdir, threads=cfg.threads)
    drivers = []
    try:
        if server != "ipi-ffdirect":
            launch.wait_for_sockets(ipi, [("unix", make.unix_address(v, ff), 0) for ff in make.forcefield_names(v)], 120.0)
            for k, cmd in enumerate(_drivers(server, v, model, structure, cfg)):
                drivers.append(launch.start_process(cmd, workdir, f"driver-{k}.log", cfg.threads, f"driver-{k}"))
        rc = ipi.wait(1800)
        for d in drivers:
            d.wait(60)
    finally:
        launch.kill_processes([ipi, *drivers])
    times = [float(t) for _, t in STEP_RE.findall(ipi.log_text())]
    if rc != 0 or len(times) < outer_steps:
        tail = "\n".join(ipi.log_text().splitlines()[-10:])
        raise RuntimeError(f"{server} {setup} {n_atoms} atoms: i-PI exit {rc}, {len(times)}/{outer_steps} steps\n{tail}")
    return statistics.median(times[WARMUP_STEPS:]) / m


def outer_steps_for(n_atoms: int, m: int, cfg: BenchConfig) -> int:
    inner = 16 if cfg.quick else {192: 64, 1536: 32}.get(n_atoms, 16)
    return max(inner // m, WARMUP_STEPS + 2)


def run(cfg: BenchConfig) -> dict:
    model = exported_model(cfg)
    sizes = (192,) if cfg.quick else tuple(s for s in cfg.md_sizes if s in (192, 1536)) or (192, 1536)
    setups = ("conservative", "direct") if cfg.quick else tuple(SETUPS)
    result: dict = {"model": str(model), "dt_fs": DT_FS, "warmup_steps_dropped": WARMUP_STEPS, "sizes": []}
    for n_atoms in sizes:
        entry: dict = {"n_atoms": n_atoms, "setups": {}}
        for setup in setups:
            m = SETUPS[setup][1]
            steps = outer_steps_for(n_atoms, m, cfg)
            per_server = {}
            for server in SERVERS:
                t = run_one(server, setup, n_atoms, model, cfg, Path(cfg.out) / "work" / "metatomic" / f"{n_atoms}-{setup}-{server}", steps)
                per_server[server] = {"ms_per_inner_step": 1e3 * t, "steps_per_s": 1.0 / t}
            ours = per_server["ours"]["steps_per_s"]
            ratios = {f"ours_vs_{s}": ours / per_server[s]["steps_per_s"] for s in SERVERS if s != "ours"}
            entry["setups"][setup] = {"servers": per_server, "ratios": ratios}
            print(
                f"[metatomic] {n_atoms} atoms {setup}: "
                + ", ".join(f"{s} {per_server[s]['steps_per_s']:.3g} steps/s" for s in SERVERS)
                + "; " + ", ".join(f"{k} {r:.2f}x" for k, r in ratios.items()),
                flush=True,
            )
        result["sizes"].append(entry)
    return result


def markdown(section: dict) -> str:
    rows = []
    for entry in section["sizes"]:
        for setup, data in entry["setups"].items():
            s = data["servers"]
            rows.append([entry["n_atoms"], setup, *(f"{s[name]['steps_per_s']:.3g}" for name in SERVERS),
                         f"{data['ratios']['ours_vs_ipi-socket']:.2f}", f"{data['ratios']['ours_vs_ipi-ffdirect']:.2f}"])
    header = ["atoms", "forces", "ours (steps/s)", "i-PI socket (steps/s)", "i-PI ffdirect (steps/s)",
              "ours / i-PI socket", "ours / i-PI ffdirect"]
    return "\n".join([
        "## Our driver vs i-PI's metatomic PES (same exported model)",
        "",
        f"Model `{section['model']}`; steps/s per inner step of {section['dt_fs']} fs (MTS M=8: outer step / 8).",
        "",
        markdown_table(header, rows),
    ])
