#!/bin/bash
# Everything on one GPU node: `ipi-nc run` starts i-PI and the drivers (unix sockets),
# replaces a driver that dies and restarts a dead or hung i-PI from its checkpoint.
#   INPUT=inputs/nve/nve-mts.xml MODEL=models/data/water-m.pt sbatch run-one-node.sh
# SLURM sends SIGTERM 120 s before the time limit: the runner stops i-PI softly (RESTART);
# submitting the same job again continues (--resume, chosen when WORKDIR has a checkpoint).
#
# Variables (environment of sbatch, which exports it to the job):
#   INPUT     i-PI input XML                                (default inputs/nve/nve-mts.xml)
#   MODEL     model file (.pt, ipi-ncforces or metatomic)   (default models/data/water-m.pt)
#   DEVICE    torch device of the drivers                   (default cuda)
#   WORKDIR   run folder                                    (default runs/<INPUT stem>)
#   RUN_ARGS  more `ipi-nc run` options, e.g. "--drivers 2 --steps 20000" (default none)
#SBATCH --job-name=ipi-nc-run
#SBATCH --nodes=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=4
#SBATCH --time=24:00:00
#SBATCH --signal=B:TERM@120
set -euo pipefail
INPUT=${INPUT:-inputs/nve/nve-mts.xml}
MODEL=${MODEL:-models/data/water-m.pt}
DEVICE=${DEVICE:-cuda}
WORKDIR=${WORKDIR:-runs/$(basename "$INPUT" .xml)}
RUN_ARGS=${RUN_ARGS:-}
RESUME=""
if [ -f "$WORKDIR/RESTART" ] || compgen -G "$WORKDIR/*chk*" > /dev/null; then RESUME="--resume"; fi
# exec: the batch shell becomes the runner, so SLURM's SIGTERM reaches it
# shellcheck disable=SC2086  # RUN_ARGS holds several options
exec ipi-nc run "$INPUT" --model "$MODEL" --device "$DEVICE" --workdir "$WORKDIR" $RESUME $RUN_ARGS
