#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the launcher's tests and for trying `bench run --launcher slurm`.
#
#   bash slurm/cluster.sh start    # install (Debian packages) if needed, write slurm.conf, start munged,
#                                  # slurmctld, slurmd; wait until the node is idle. Idempotent.
#   bash slurm/cluster.sh stop     # cancel the cluster's jobs, stop the daemons this script started (pid files)
#   bash slurm/cluster.sh status   # daemons, sinfo, squeue
#
# Runs as root. No cgroups (proctrack/linuxproc, task/none), no accounting (no slurmdbd: `sacct` fails, which
# submitit tolerates), one partition `debug` holding this machine's CPUs and memory. Preemption signalling is on
# (SlurmctldParameters=preempt_send_user_signal + PreemptMode=REQUEUE) so a preempted job receives its --signal
# (submitit: USR2) and is requeued.
#
# Environment: BENCH_SLURM_STATE (state, spool, logs, pid files; default /var/lib/bench-slurm),
#              BENCH_SLURM_PARTITION (default debug), BENCH_SLURM_NO_INSTALL=1 (never call apt-get).
set -euo pipefail

STATE=${BENCH_SLURM_STATE:-/var/lib/bench-slurm}
PARTITION=${BENCH_SLURM_PARTITION:-debug}
CONF=/etc/slurm/slurm.conf
MARKER="# written by clip-prompt-bench slurm/cluster.sh"
MUNGE_SOCKET=/run/munge/munge.socket.2
MUNGE_PID=/run/munge/munged.pid
NODE=$(hostname -s)

say() { echo "[cluster.sh] $*"; }
die() { echo "[cluster.sh] error: $*" >&2; exit 1; }

pid_alive() {  # pid_alive FILE: the process named in FILE is running
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

node_state() {  # the node's state as sinfo reports it (empty when the controller does not answer)
  timeout 5 sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -1 || true
}

healthy() {
  pid_alive "$STATE/slurmctld.pid" && pid_alive "$STATE/slurmd.pid" || return 1
  case "$(node_state)" in
    idle|mixed|allocated|completing|idle*|mixed*|allocated*) return 0 ;;
  esac
  return 1
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
     && command -v munged >/dev/null; then
    return 0
  fi
  [[ ${BENCH_SLURM_NO_INSTALL:-0} == 1 ]] && die "slurm/munge are not installed and BENCH_SLURM_NO_INSTALL=1"
  say "installing slurmctld slurmd slurm-client munge (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 700 /etc/munge
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 755 /run/munge
  if pid_alive "$MUNGE_PID" && munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; then
    return 0
  fi
  rm -f "$MUNGE_PID"
  runuser -u munge -- /usr/sbin/munged --force
  for _ in $(seq 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "munged did not start (see /var/log/munge/munged.log)"
}

write_conf() {
  if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; move it away first (this script only manages its own)"
  fi
  local cpus mem
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {printf "%d", $2/1024}' /proc/meminfo)
  mem=$((mem * 9 / 10))  # leave room for the OS
  mkdir -p /etc/slurm "$STATE/ctld" "$STATE/spool" "$STATE/log"
  local tmp
  tmp=$(mktemp "$CONF.XXXXXX")
  cat >"$tmp" <<EOF
$MARKER
# A one-node test cluster; regenerate with: bash slurm/cluster.sh start
ClusterName=bench
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups, no accounting daemon
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# schedule at once, CPUs as the consumable resource; trust this file over the probed hardware
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
InactiveLimit=0
KillWait=10
MinJobAge=300
Waittime=0
# preemption: requeue, and send the job's --signal (submitit: USR2) when it is preempted
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30
# for preemption tests only: a job here preempts (requeues) jobs of $PARTITION when it needs their CPUs
PartitionName=urgent Nodes=$NODE Default=NO MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
  chmod 644 "$tmp"
  if [[ -f $CONF ]] && cmp -s "$tmp" "$CONF"; then
    rm -f "$tmp"
    return 1  # unchanged
  fi
  mv "$tmp" "$CONF"
  return 0
}

wait_idle() {
  local state
  for i in $(seq 300); do
    state=$(node_state)
    case "$state" in
      idle|mixed|allocated|completing) return 0 ;;
      down*|drain*|drained*|fail*)
        # a node the controller remembers as down (e.g. after an unclean stop): bring it back
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
  done
  die "node $NODE not idle after 60 s (state: ${state:-no answer}); logs in $STATE/log/"
}

start() {
  [[ $(id -u) == 0 ]] || die "run as root (it installs packages and starts daemons)"
  install_packages
  start_munge
  if write_conf && { pid_alive "$STATE/slurmctld.pid" || pid_alive "$STATE/slurmd.pid"; }; then
    say "configuration changed: restarting slurmctld and slurmd"
    stop_pidfile slurmd "$STATE/slurmd.pid"
    stop_pidfile slurmctld "$STATE/slurmctld.pid"
  fi
  if healthy; then
    say "already running: node $NODE $(node_state), partition $PARTITION"
    return 0
  fi
  if ! pid_alive "$STATE/slurmctld.pid"; then
    rm -f "$STATE/slurmctld.pid"
    slurmctld
  fi
  for _ in $(seq 100); do timeout 2 scontrol ping >/dev/null 2>&1 && break; sleep 0.1; done
  if ! pid_alive "$STATE/slurmd.pid"; then
    rm -f "$STATE/slurmd.pid"
    slurmd
  fi
  wait_idle
  say "running: node $NODE $(node_state), partitions $PARTITION (default) and urgent, $(nproc) CPUs; logs in $STATE/log/"
}

stop_pidfile() {  # stop_pidfile NAME FILE
  local f=$2 pid
  pid_alive "$f" || { rm -f "$f"; return 0; }
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || { rm -f "$f"; say "stopped $1"; return 0; }; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
  say "killed $1"
}

stop() {
  if pid_alive "$STATE/slurmctld.pid" && [[ -n $(timeout 5 squeue -h -o %i 2>/dev/null) ]]; then
    # the jobs of this test cluster end with it (else their processes outlive slurmd and restart on the next start)
    say "cancelling the cluster's jobs"
    timeout 10 scancel --full --partition="$PARTITION" >/dev/null 2>&1 || true
    timeout 10 scancel --full --partition=urgent >/dev/null 2>&1 || true
    for _ in $(seq 50); do [[ -z $(timeout 5 squeue -h -o %i 2>/dev/null) ]] && break; sleep 0.2; done
  fi
  stop_pidfile slurmd "$STATE/slurmd.pid"
  stop_pidfile slurmctld "$STATE/slurmctld.pid"
  if pid_alive "$MUNGE_PID"; then
    munged -s >/dev/null 2>&1 || stop_pidfile munged "$MUNGE_PID"
    say "stopped munged"
  fi
}

status() {
  local d
  for d in munged:$MUNGE_PID slurmctld:$STATE/slurmctld.pid slurmd:$STATE/slurmd.pid; do
    if pid_alive "${d#*:}"; then echo "${d%%:*}: running (pid $(cat "${d#*:}"))"; else echo "${d%%:*}: stopped"; fi
  done
  if command -v sinfo >/dev/null && timeout 5 sinfo >/dev/null 2>&1; then
    sinfo
    squeue
  else
    echo "controller: not answering"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) stop; start ;;
  *) echo "usage: bash slurm/cluster.sh start|stop|status|restart" >&2; exit 2 ;;
esac
