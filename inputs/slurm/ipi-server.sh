#!/bin/bash
# i-PI on one CPU node, model drivers on a GPU node over inet sockets. Submit this first:
#   INPUT=nve-mts-inet.xml sbatch ipi-server.sh              -> "Submitted batch job <ID>"
#   MODEL=water-m.pt STRUCTURE=water64.xyz sbatch --dependency=after:<ID> drivers-gpu.sh
# Both jobs must start in the same shared folder (this script writes ipi-host.txt there,
# the drivers job reads it) with the ipi-ncforces environment active (i-pi, ipi-nc on PATH).
#
# The input needs inet sockets listening beyond localhost, e.g.
#   ipi-nc inputs make --from-shipped nve/nve-mts.xml --structure water64.xyz \
#     --sockets inet --host 0.0.0.0 --port 31415 --out nve-mts-inet.xml
# i-PI then listens on PORT (cons) and PORT+1 (direct); give drivers-gpu.sh the same PORT.
#
# Variables (environment of sbatch, which exports it to the job):
#   INPUT      i-PI input XML with inet sockets            (default nve-mts-inet.xml)
#   HOST_FILE  where the server's host name is written     (default ipi-host.txt)
# Outputs: i-PI's files (prefix from the input) in the submit folder; RESTART on SIGTERM.
#SBATCH --job-name=ipi-server
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --time=24:00:00
set -euo pipefail
INPUT=${INPUT:-nve-mts-inet.xml}
HOST_FILE=${HOST_FILE:-ipi-host.txt}
[ -f "$INPUT" ] || { echo "ipi-server.sh: INPUT '$INPUT' does not exist: set INPUT=<i-PI input with inet sockets>" >&2; exit 2; }
# written whole (rename) so that the drivers job never reads half a name
hostname > "$HOST_FILE.tmp" && mv "$HOST_FILE.tmp" "$HOST_FILE"
exec i-pi "$INPUT"
