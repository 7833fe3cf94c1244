#!/bin/bash
# Model drivers on a GPU node, connecting to the i-PI server job (ipi-server.sh) over inet
# sockets. Submit after the server, from the same folder:
#   MODEL=water-m.pt STRUCTURE=water64.xyz sbatch --dependency=after:<server job id> drivers-gpu.sh
# MTS layout: a conservative driver on PORT and a direct driver on PORT+1 share the GPU;
# both exit 0 when i-PI sends EXIT at the end of the run.
#
# Variables (environment of sbatch, which exports it to the job):
#   MODEL      model file (.pt, ipi-ncforces or metatomic)  (default models/data/water-m.pt)
#   STRUCTURE  structure template: the SAME file (same atoms, same order) as the i-PI input's
#              <initialize><file>; i-PI sends positions only   (default inputs/water64.xyz)
#   PORT       first inet port of the i-PI input            (default 31415)
#   DEVICE     torch device of the drivers                  (default cuda)
#   HOST_FILE  file with the i-PI server's host name        (default ipi-host.txt)
#   CONNECT_TIMEOUT_S  seconds a driver waits for i-PI to listen (default 600)
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
DEVICE=${DEVICE:-cuda}
HOST_FILE=${HOST_FILE:-ipi-host.txt}
CONNECT_TIMEOUT_S=${CONNECT_TIMEOUT_S:-600}
waited=0
while [ ! -s "$HOST_FILE" ]; do
    sleep 1; waited=$((waited + 1))
    if [ "$waited" -ge "$CONNECT_TIMEOUT_S" ]; then
        echo "drivers-gpu.sh: no '$HOST_FILE' after $CONNECT_TIMEOUT_S s: is ipi-server.sh running in this folder?" >&2; exit 1
    fi
done
HOST=$(cat "$HOST_FILE")
srun --ntasks=1 --exact ipi-nc driver --model "$MODEL" --structure "$STRUCTURE" --mode conservative \
    --address "$HOST" --port "$PORT" --device "$DEVICE" --connect-timeout "$CONNECT_TIMEOUT_S" &
cons=$!
srun --ntasks=1 --exact ipi-nc driver --model "$MODEL" --structure "$STRUCTURE" --mode direct \
    --address "$HOST" --port $((PORT + 1)) --device "$DEVICE" --connect-timeout "$CONNECT_TIMEOUT_S" &
direct=$!
# the job fails when either driver fails (a bare `wait` would report success)
wait "$cons"
wait "$direct"
