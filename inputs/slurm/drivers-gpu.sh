#!/bin/bash
# Model drivers on a GPU node, connecting to the i-PI server job over inet sockets.
# Submit after ipi-server.sh: sbatch --dependency=after:<server job id> drivers-gpu.sh
#SBATCH --job-name=ipi-drivers
#SBATCH --nodes=1
#SBATCH --ntasks=2
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=4
#SBATCH --time=24:00:00
set -euo pipefail
MODEL=${MODEL:-models/data/water-m.pt}
STRUCTURE=${STRUCTURE:-inputs/water64.xyz}
PORT=${PORT:-31415}
while [ ! -s ipi-host.txt ]; do sleep 5; done
HOST=$(cat ipi-host.txt)
# MTS: conservative forces on PORT, direct forces on PORT+1; both share the one GPU
srun --ntasks=1 --exact ipi-nc driver --model "$MODEL" --structure "$STRUCTURE" --mode conservative \
    --address "$HOST" --port "$PORT" --device cuda --connect-timeout 600 &
srun --ntasks=1 --exact ipi-nc driver --model "$MODEL" --structure "$STRUCTURE" --mode direct \
    --address "$HOST" --port $((PORT + 1)) --device cuda --connect-timeout 600 &
wait
