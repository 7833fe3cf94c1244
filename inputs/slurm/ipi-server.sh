#!/bin/bash
# i-PI on one CPU node, drivers on GPU nodes over inet sockets (submit this first).
# The inputs need inet sockets: ipi-nc inputs make --from-shipped nve/nve-mts.xml \
#   --sockets inet --host 0.0.0.0 --port 31415 --out nve-mts-inet.xml
# i-PI listens on PORT (cons) and PORT+1 (direct); the driver job reads the host name
# from ipi-host.txt written here.
#SBATCH --job-name=ipi-server
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --time=24:00:00
set -euo pipefail
INPUT=${INPUT:-nve-mts-inet.xml}
hostname > ipi-host.txt
exec i-pi "$INPUT"
