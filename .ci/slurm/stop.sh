#!/usr/bin/env bash
# Stops the cluster .ci/slurm/start.sh started (only the daemons its pid files name).
set -uo pipefail
D=${GEOLOC_SLURM_DIR:-/tmp/geoloc-slurm}
export SLURM_CONF=$D/slurm.conf
scancel --state=PENDING,RUNNING -u root 2>/dev/null || true
for d in slurmd slurmctld munged; do
  pf=$D/run/$d.pid
  [ -s "$pf" ] || continue
  pid=$(cat "$pf")
  if [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$d" ]; then
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pf"
done
