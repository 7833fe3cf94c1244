#!/bin/bash
# Everything on one GPU node: the runner starts i-PI and the drivers (unix sockets).
#SBATCH --job-name=ipi-nc-run
#SBATCH --nodes=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=4
#SBATCH --time=24:00:00
#SBATCH --signal=B:TERM@120
set -euo pipefail
INPUT=${INPUT:-inputs/nve/nve-mts.xml}
MODEL=${MODEL:-models/data/water-m.pt}
RESUME=""
[ -d "runs/$(basename "$INPUT" .xml)" ] && RESUME="--resume"
# SIGTERM 120 s before the time limit: the runner stops i-PI softly (RESTART); resubmit to continue
exec ipi-nc run "$INPUT" --model "$MODEL" --device cuda $RESUME
