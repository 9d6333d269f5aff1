#!/usr/bin/env bash
# Brings up a single-node Slurm cluster on localhost for the integration tests (munged,
# slurmctld, slurmd as private daemons: no systemd, no cgroups, no accounting database),
# from Debian's packages. Run as root. Afterwards: `source $GEOLOC_SLURM_DIR/env.sh`.
#
#   GEOLOC_SLURM_DIR   state, logs, config (default /tmp/geoloc-slurm)
#   GEOLOC_SLURM_GPUS  fake GPUs to declare as gres gpu:N (default 0)
#
# Stop it with .ci/slurm/stop.sh. Notes from bringing it up here: `sacct` needs slurmdbd,
# so finished jobs are read from `scontrol` while MinJobAge keeps them (300 s);
# `DependencyParameters=kill_invalid_depend` makes a dependant of a failed job end as
# cancelled instead of pending forever; slurmd wants a device file per GPU, a /dev/null
# clone does for tests.
set -euo pipefail
D=${GEOLOC_SLURM_DIR:-/tmp/geoloc-slurm}
GPUS=${GEOLOC_SLURM_GPUS:-0}
CPUS=$(nproc)
MEM_MB=$(( $(awk '/^MemTotal:/{print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
say() { echo "[slurm] $*" >&2; }

[ "$(id -u)" = 0 ] || { say "needs root"; exit 1; }
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  say "installing slurmctld slurmd slurm-client munge"
  # Keep the packages from starting system daemons on install.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge
  rm -f /usr/sbin/policy-rc.d
fi

if [ -s "$D/run/slurmctld.pid" ] && kill -0 "$(cat "$D/run/slurmctld.pid")" 2>/dev/null; then
  say "already running in $D"; exit 0
fi
rm -rf "$D/state" "$D/spool" "$D/log"
mkdir -p "$D"/{state,spool,log,run,munge,gpu}
chmod 755 "$D" "$D"/{state,spool,log,run,gpu}
chown munge:munge "$D/munge"

M=$D/munge
[ -s "$M/munge.key" ] || dd if=/dev/urandom of="$M/munge.key" bs=1024 count=1 status=none
chown munge:munge "$M/munge.key"; chmod 400 "$M/munge.key"
rm -f "$M/munge.socket"*
runuser -u munge -- /usr/sbin/munged --socket="$M/munge.socket" --key-file="$M/munge.key" \
  --pid-file="$M/munged.pid" --log-file="$M/munged.log" --seed-file="$M/munged.seed"
for _ in $(seq 50); do [ -s "$M/munged.pid" ] && break; sleep 0.1; done
cp "$M/munged.pid" "$D/run/munged.pid"
munge -S "$M/munge.socket" -n | unmunge -S "$M/munge.socket" >/dev/null

GRES=""; GRES_TYPES=""
if [ "$GPUS" -gt 0 ]; then
  GRES_TYPES="GresTypes=gpu"; GRES="Gres=gpu:$GPUS"; : > "$D/gres.conf"
  for i in $(seq 0 $((GPUS - 1))); do
    rm -f "$D/gpu/nvidia$i"; mknod -m 666 "$D/gpu/nvidia$i" c 1 3
    echo "NodeName=localhost Name=gpu File=$D/gpu/nvidia$i" >> "$D/gres.conf"
  done
fi
cat > "$D/slurm.conf" <<CONF
ClusterName=geoloc-ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$M/munge.socket
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$D/log/jobcomp.txt
MinJobAge=300
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
DependencyParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
$GRES_TYPES
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB $GRES State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
echo "export SLURM_CONF=$D/slurm.conf" > "$D/env.sh"
export SLURM_CONF=$D/slurm.conf

slurmctld -f "$SLURM_CONF"
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.2; done
scontrol ping | grep -q 'is UP' || { tail -20 "$D/log/slurmctld.log" >&2; exit 1; }
slurmd -f "$SLURM_CONF" -N localhost
for _ in $(seq 150); do
  [ "$(sinfo -h -n localhost -o %T 2>/dev/null)" = idle ] && break; sleep 0.2
done
[ "$(sinfo -h -n localhost -o %T)" = idle ] || { tail -20 "$D/log/slurmd.log" >&2; exit 1; }
say "up: $(sinfo -h -o '%P %D %T %N'); source $D/env.sh"
