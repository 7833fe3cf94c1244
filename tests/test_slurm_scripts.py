"""The SLURM scripts in inputs/slurm/, run through stub ``sbatch``, ``srun`` and ``scontrol``
executables (first on PATH) that record their argv and run the job steps locally: the
scripts must start i-PI and the drivers with the right arguments, and the run must finish.

The stubs: ``sbatch [OPTIONS] SCRIPT`` runs ``bash SCRIPT`` in the background with
SLURM_JOB_ID / SLURM_JOB_NODELIST set, output to slurm-<id>.out and the exit code to
job-<id>.rc; ``srun [--OPTION=VALUE ...] CMD`` execs CMD; ``scontrol show hostnames``
prints this host. Each appends its argv (JSON) to stub-calls.jsonl. The job scripts run
the real ``i-pi`` and ``ipi-nc`` of this environment (on PATH) on the CPU."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import ipi_ncforces.inputs as inputs_package

SLURM = Path(inputs_package.__file__).resolve().parent / "slurm"
BIN = Path(sys.executable).parent  # i-pi and ipi-nc of this environment

STUB_HEADER = f"""#!{sys.executable}
import json, os, subprocess, sys
with open(os.environ["STUB_CALLS"], "a") as log:
    log.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
"""
STUBS = {
    "sbatch": STUB_HEADER + """
args = sys.argv[1:]
while args and args[0].startswith("-"):
    args.pop(0)  # options only as --NAME=VALUE (what the scripts and the docs use)
counter = os.path.join(os.environ["STUB_DIR"], "next-job-id")
job = int(open(counter).read()) + 1 if os.path.exists(counter) else 1001
open(counter, "w").write(str(job))
env = {**os.environ, "SLURM_JOB_ID": str(job), "SLURM_JOB_NODELIST": "localhost"}
out = open(f"slurm-{job}.out", "w")
rc = os.path.join(os.environ["STUB_DIR"], f"job-{job}.rc")
subprocess.Popen(["bash", "-c", 'bash "$@"; echo $? > ' + rc, "job", *args], stdout=out, stderr=subprocess.STDOUT, env=env)
print(f"Submitted batch job {job}")
""",
    "srun": STUB_HEADER + """
args = sys.argv[1:]
while args and args[0].startswith("-"):
    args.pop(0)
os.execvp(args[0], args)
""",
    "scontrol": STUB_HEADER + """
if sys.argv[1:3] == ["show", "hostnames"]:
    print(__import__("socket").gethostname())
""",
}


@pytest.fixture
def cluster(tmp_path):
    """A submit folder with the stubs first on PATH; returns (folder, env, calls reader, job waiter)."""
    stubs = tmp_path / "stub-bin"
    stubs.mkdir()
    for name, text in STUBS.items():
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    submit = tmp_path / "submit"
    submit.mkdir()
    env = {**os.environ, "PATH": f"{stubs}:{BIN}:{os.environ['PATH']}", "STUB_DIR": str(stubs),
           "STUB_CALLS": str(tmp_path / "stub-calls.jsonl"), "OMP_NUM_THREADS": "1"}

    def calls(name: str) -> list[list[str]]:
        path = tmp_path / "stub-calls.jsonl"
        rows = [json.loads(ln) for ln in path.read_text().splitlines()] if path.is_file() else []
        return [row[1:] for row in rows if row[0] == name]

    def wait_job(job: str, timeout_s: float = 120.0) -> int:
        rc = stubs / f"job-{job}.rc"
        deadline = time.monotonic() + timeout_s
        while not rc.is_file() or not rc.read_text().strip():
            assert time.monotonic() < deadline, (submit / f"slurm-{job}.out").read_text()
            time.sleep(0.1)
        return int(rc.read_text())

    return submit, env, calls, wait_job


def _sbatch(args: list[str], submit: Path, env: dict, **variables: str) -> str:
    out = subprocess.run(["sbatch", *args], cwd=submit, env={**env, **variables}, capture_output=True, text=True, check=True)
    return out.stdout.split()[-1]


def _free_port_pair() -> int:
    """A port P with P and P+1 free on this machine (MTS: cons on P, direct on P+1)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                if b.connect_ex(("127.0.0.1", port + 1)) != 0 and port < 65000:
                    return port
    raise RuntimeError("no free port pair")


@pytest.mark.slow
def test_server_and_gpu_driver_jobs_run_an_mts_simulation(cluster, box_file, toy_model_file):
    submit, env, calls, wait_job = cluster
    try:
        socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        pytest.skip("this machine's host name does not resolve: the drivers could not find the server")
    port = _free_port_pair()
    # the input exactly as the header of ipi-server.sh says, on the small box and for 6 steps
    subprocess.run(["ipi-nc", "inputs", "make", "--from-shipped", "nve/nve-mts.xml", "--structure", str(box_file),
                    "--sockets", "inet", "--host", "0.0.0.0", "--port", str(port), "--steps", "6",
                    "--properties-fs", "0.5", "--name", "slurmrun", "--out", "nve-mts-inet.xml"],
                   cwd=submit, env=env, check=True, capture_output=True)
    server = _sbatch([str(SLURM / "ipi-server.sh")], submit, env, INPUT="nve-mts-inet.xml")
    drivers = _sbatch([f"--dependency=after:{server}", str(SLURM / "drivers-gpu.sh")], submit, env,
                      MODEL=str(toy_model_file), STRUCTURE=str(box_file), PORT=str(port), DEVICE="cpu",
                      CONNECT_TIMEOUT_S="60")
    assert wait_job(server) == 0, (submit / f"slurm-{server}.out").read_text()
    assert wait_job(drivers) == 0, (submit / f"slurm-{drivers}.out").read_text()

    assert calls("sbatch") == [[str(SLURM / "ipi-server.sh")], [f"--dependency=after:{server}", str(SLURM / "drivers-gpu.sh")]]
    host = (submit / "ipi-host.txt").read_text().strip()
    assert host == socket.gethostname()
    common = ["--model", str(toy_model_file), "--structure", str(box_file)]
    expected = [
        ["--ntasks=1", "--exact", "ipi-nc", "driver", *common, "--mode", "conservative", "--address", host,
         "--port", str(port), "--device", "cpu", "--connect-timeout", "60"],
        ["--ntasks=1", "--exact", "ipi-nc", "driver", *common, "--mode", "direct", "--address", host,
         "--port", str(port + 1), "--device", "cpu", "--connect-timeout", "60"],
    ]
    assert sorted(calls("srun")) == sorted(expected)
    props = np.loadtxt(submit / "slurmrun.out", ndmin=2)
    np.testing.assert_array_equal(props[:, 0], np.arange(7))  # i-PI ran every step with both drivers
    assert np.all(np.isfinite(props))


def test_one_node_job_runs_and_a_resubmission_resumes(cluster, box_file, toy_model_file, tmp_path):
    submit, env, calls, wait_job = cluster
    subprocess.run(["ipi-nc", "inputs", "make", "--from-shipped", "nve/nve-direct.xml", "--structure", str(box_file),
                    "--steps", "4", "--properties-fs", "0.5", "--checkpoint-fs", "0.5",
                    "--name", f"slurm{os.getpid()}", "--out", "small.xml"],
                   cwd=submit, env=env, check=True, capture_output=True)
    variables = dict(INPUT="small.xml", MODEL=str(toy_model_file), DEVICE="cpu")
    first = _sbatch([str(SLURM / "run-one-node.sh")], submit, env, **variables)
    assert wait_job(first) == 0, (submit / f"slurm-{first}.out").read_text()
    workdir = submit / "runs" / "small"
    assert "resuming" not in (submit / f"slurm-{first}.out").read_text()
    # resubmitted with more steps: the script sees the checkpoint and continues the run
    second = _sbatch([str(SLURM / "run-one-node.sh")], submit, env, RUN_ARGS="--steps 8 --progress-every 60", **variables)
    assert wait_job(second) == 0, (submit / f"slurm-{second}.out").read_text()
    out = (submit / f"slurm-{second}.out").read_text()
    assert "resuming from" in out
    props = np.loadtxt(next(workdir.glob("*.out")), ndmin=2)
    np.testing.assert_array_equal(props[:, 0], np.arange(9))  # steps 0..8, each once
    assert calls("srun") == []  # the runner starts i-PI and the drivers itself
    assert shutil.which("sbatch", path=env["PATH"]).startswith(str(tmp_path))
