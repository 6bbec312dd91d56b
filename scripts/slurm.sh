#!/usr/bin/env bash
# A single-node Slurm cluster on loopback, for the batch-backend tests and for trying the slurm
# backend on a laptop: installs Debian's packages if they are missing (as root), writes its
# configuration into a state folder, starts munged, slurmctld and slurmd, and waits until the
# node takes jobs. Clients find it with SLURM_CONF=<state folder>/slurm.conf (printed by `up`).
#
#   scripts/slurm.sh up [STATE_DIR]       (default: build/slurm)
#   scripts/slurm.sh status [STATE_DIR]
#   scripts/slurm.sh down [STATE_DIR]     stops what `up` started (munged too, if it started it)
#
# Accounting is off (no slurmdbd): finished jobs stay visible to squeue for MinJobAge seconds.
# The node advertises more CPUs than the machine has, so that short jobs run side by side.
set -euo pipefail

action=${1:-status}
state=$(realpath -m "${2:-build/slurm}")
conf="$state/slurm.conf"
export SLURM_CONF="$conf"

say() { echo "slurm: $*" >&2; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
      && command -v munged >/dev/null; then
    return
  fi
  if [ "$(id -u)" != 0 ]; then
    say "Slurm is not installed and installing it needs root: apt-get install slurmctld slurmd slurm-client munge"
    exit 3
  fi
  say "installing slurmctld slurmd slurm-client munge (Debian packages)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    slurmctld slurmd slurm-client munge >"$state/apt.log" 2>&1 || {
      say "apt-get failed (see $state/apt.log)"; exit 3; }
}

write_config() {
  local cpus=8 memory=16000
  mkdir -p "$state/state" "$state/spool" "$state/jobs"
  cat >"$conf" <<EOF
ClusterName=b2cal
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$state/state
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$state/jobcomp.txt
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,default_queue_depth=1000
SlurmdParameters=config_overrides
MaxArraySize=20001
MaxJobCount=50000
MinJobAge=300
DefMemPerCPU=100
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=localhost MaxTime=1 State=UP
EOF
}

munge_socket=/run/munge/munge.socket.2

start_munge() {
  for _ in $(seq 1 20); do  # a munged that is stopping: let it go
    pgrep -x munged >/dev/null && [ ! -S "$munge_socket" ] || break
    sleep 0.25
  done
  if pgrep -x munged >/dev/null && [ -S "$munge_socket" ]; then return; fi
  touch "$state/munged.ours"  # `down` stops it again
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  if [ ! -s /etc/munge/munge.key ]; then
    /usr/sbin/mungekey --create >/dev/null 2>&1 || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 1 40); do [ -S "$munge_socket" ] && return; sleep 0.25; done
  say "munged did not start"; exit 4
}

up() {
  mkdir -p "$state"
  if pid_alive "$state/slurmctld.pid" && pid_alive "$state/slurmd.pid"; then
    say "already up (SLURM_CONF=$conf)"
    echo "SLURM_CONF=$conf"
    return
  fi
  install_packages
  write_config
  start_munge
  pid_alive "$state/slurmctld.pid" || slurmctld -f "$conf"
  pid_alive "$state/slurmd.pid" || slurmd -f "$conf" -N localhost
  for _ in $(seq 1 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
      say "up: partitions $(sinfo -h -o '%P' | tr '\n' ' ')(SLURM_CONF=$conf)"
      echo "SLURM_CONF=$conf"
      return
    fi
    sleep 0.5
  done
  say "the node did not come up; last lines of the logs:"
  tail -n 5 "$state/slurmctld.log" "$state/slurmd.log" >&2 || true
  down
  exit 4
}

down() {
  for daemon in slurmd slurmctld; do
    if pid_alive "$state/$daemon.pid"; then
      kill "$(cat "$state/$daemon.pid")" 2>/dev/null || true
      for _ in $(seq 1 40); do pid_alive "$state/$daemon.pid" || break; sleep 0.25; done
      pid_alive "$state/$daemon.pid" && kill -9 "$(cat "$state/$daemon.pid")" 2>/dev/null || true
    fi
  done
  rm -f "$state/slurmd.pid" "$state/slurmctld.pid"
  if [ -f "$state/munged.ours" ]; then
    pkill -x munged 2>/dev/null || true
    for _ in $(seq 1 40); do pgrep -x munged >/dev/null || break; sleep 0.25; done
    rm -f "$state/munged.ours"
  fi
  say "down"
}

status() {
  if pid_alive "$state/slurmctld.pid" && pid_alive "$state/slurmd.pid"; then
    sinfo
  else
    say "not running (state folder $state)"
    exit 1
  fi
}

case "$action" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status [STATE_DIR]" >&2; exit 2 ;;
esac
