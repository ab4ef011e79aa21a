#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the `slurm` tests and for trying the slurm
# launcher: Debian's slurm-wlm, slurmdbd, munge and MariaDB, started without systemd.
#
#   tests/slurm/cluster.sh up      install what is missing, write configs, start, wait for idle
#   tests/slurm/cluster.sh down    stop the daemons (PID files), keep packages and configs
#   tests/slurm/cluster.sh status  daemons and node state
#
# Idempotent: `up` on a running cluster only checks it. Needs root (apt, daemons).
# Partitions: `debug` (default) and `preempt`, a low-priority partition whose jobs are requeued
# when `debug` needs the node (PreemptType=preempt/partition_prio), for the preemption tests.
set -euo pipefail

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
ETC=/etc/slurm
RUN=/run/embreg-slurm
LOG=/var/log/slurm
SPOOL=/var/spool/slurm
DB_PASS=embreg-slurm  # local-only MariaDB account of this test cluster
PACKAGES="slurm-wlm slurmdbd munge mariadb-server"

log() { printf '[slurm] %s\n' "$*"; }
die() { printf '[slurm] error: %s\n' "$*" >&2; exit 1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
  local missing=""
  for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  [ -z "$missing" ] && return
  [ "$(id -u)" = 0 ] || die "need root to install:$missing"
  log "installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q $missing >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $missing >/dev/null; }
}

write_configs() {
  mkdir -p "$ETC" "$RUN" "$LOG" "$SPOOL/ctld" "$SPOOL/d"
  chown -R slurm:slurm "$RUN" "$LOG" "$SPOOL"
  cat > "$ETC/slurm.conf" <<CONF
# written by embreg tests/slurm/cluster.sh
ClusterName=embreg
SlurmctldHost=$HOST
SlurmUser=slurm
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2
MinJobAge=600
KillWait=5
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
PartitionName=preempt Nodes=$HOST Default=NO MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE
CONF
  cat > "$ETC/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
CONF
  chown slurm:slurm "$ETC/slurmdbd.conf"
  chmod 600 "$ETC/slurmdbd.conf"
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge && chown munge:munge /run/munge
  if ! munge -n >/dev/null 2>&1; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n >/dev/null 2>&1 && return; sleep 0.2; done
    die "munged did not start"
  fi
}

start_mariadb() {
  if ! mysqladmin ping >/dev/null 2>&1; then
    log "starting MariaDB"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    (setsid mysqld_safe >/dev/null 2>&1 &)
    for _ in $(seq 100); do mysqladmin ping >/dev/null 2>&1 && break; sleep 0.3; done
    mysqladmin ping >/dev/null 2>&1 || die "MariaDB did not start"
  fi
  mysql -u root <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL
}

start_daemon() {  # name pidfile command...
  local name=$1 pid=$2; shift 2
  alive "$pid" && return
  log "starting $name"
  "$@"
  for _ in $(seq 100); do alive "$pid" && return; sleep 0.2; done
  die "$name did not start; see $LOG/$name.log"
}

up() {
  install_packages
  write_configs
  start_munge
  start_mariadb
  start_daemon slurmdbd "$RUN/slurmdbd.pid" /usr/sbin/slurmdbd
  for _ in $(seq 50); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.3; done
  sacctmgr -n list cluster format=cluster | grep -qw embreg || sacctmgr -i add cluster embreg >/dev/null
  start_daemon slurmctld "$RUN/slurmctld.pid" /usr/sbin/slurmctld
  start_daemon slurmd "$RUN/slurmd.pid" /usr/sbin/slurmd
  for _ in $(seq 100); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1)
    case "$state" in idle*|mixed*|allocated*) log "node $HOST is $state"; return;; esac
    [ "$state" = "down" ] || [ "$state" = "drained" ] && scontrol update nodename="$HOST" state=resume 2>/dev/null || true
    sleep 0.3
  done
  die "node $HOST did not become idle (state: ${state:-unknown}); see $LOG"
}

down() {
  for d in slurmd slurmctld slurmdbd; do
    if alive "$RUN/$d.pid"; then log "stopping $d"; kill "$(cat "$RUN/$d.pid")"; fi
  done
  for d in slurmd slurmctld slurmdbd; do
    for _ in $(seq 50); do alive "$RUN/$d.pid" || break; sleep 0.2; done
  done
  mysqladmin ping >/dev/null 2>&1 && { log "stopping MariaDB"; mysqladmin shutdown; }
  if [ -f /run/munge/munged.pid ] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; then
    log "stopping munged"; kill "$(cat /run/munge/munged.pid)"
  fi
}

status() {
  for d in slurmdbd slurmctld slurmd; do
    if alive "$RUN/$d.pid"; then echo "$d: running"; else echo "$d: stopped"; fi
  done
  sinfo 2>/dev/null || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) die "usage: $0 up|down|status" ;;
esac
