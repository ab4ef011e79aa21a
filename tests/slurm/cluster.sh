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
# local-only MariaDB account of this test cluster: its own user name, and its password set on
# every `up` (ALTER USER), so an existing account (e.g. a `slurm` user made by a site's own set-up
# with another password) neither blocks nor is changed by it
DB_USER=embreg_slurm
DB_PASS=embreg-slurm
PACKAGES="slurm-wlm slurmdbd munge mariadb-server"

log() { printf '[slurm] %s\n' "$*"; }
die() { printf '[slurm] error: %s\n' "$*" >&2; exit 1; }
# die, showing the last lines of a daemon's own log (the cause), not a client's connection error
die_with_log() {  # message logfile
  local msg=$1 file=$2
  if [ -s "$file" ]; then
    printf '[slurm] last lines of %s:\n' "$file" >&2
    tail -n 20 "$file" | sed 's/^/  | /' >&2
  else
    printf '[slurm] (no log at %s)\n' "$file" >&2
  fi
  die "$msg"
}
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
StorageUser=$DB_USER
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

mariadb_log() {  # MariaDB's error log: Debian's default, else the first *.err in its data directory
  local f
  for f in /var/log/mysql/error.log /var/lib/mysql/*.err; do [ -s "$f" ] && { echo "$f"; return; }; done
  echo /var/log/mysql/error.log
}

start_mariadb() {
  if ! mysqladmin ping >/dev/null 2>&1; then
    log "starting MariaDB"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    (setsid mysqld_safe >/dev/null 2>&1 &)
    for _ in $(seq 100); do mysqladmin ping >/dev/null 2>&1 && break; sleep 0.3; done
    mysqladmin ping >/dev/null 2>&1 || die_with_log "MariaDB did not start" "$(mariadb_log)"
  fi
  mysql -u root <<SQL
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL
}

start_daemon() {  # name pidfile command...
  local name=$1 pid=$2; shift 2
  alive "$pid" && return
  log "starting $name"
  "$@"
  for _ in $(seq 100); do alive "$pid" && return; sleep 0.2; done
  die_with_log "$name did not start" "$LOG/$name.log"
}

up() {
  install_packages
  write_configs
  start_munge
  start_mariadb
  start_daemon slurmdbd "$RUN/slurmdbd.pid" /usr/sbin/slurmdbd
  # slurmdbd runs but may not reach its database (e.g. "Access denied"): its log says why
  local answered=""
  for _ in $(seq 50); do sacctmgr -n list cluster >/dev/null 2>&1 && { answered=1; break; }; sleep 0.3; done
  [ -n "$answered" ] || die_with_log "slurmdbd does not answer (sacctmgr list cluster failed)" "$LOG/slurmdbd.log"
  sacctmgr -n list cluster format=cluster | grep -qw embreg || sacctmgr -i add cluster embreg >/dev/null
  start_daemon slurmctld "$RUN/slurmctld.pid" /usr/sbin/slurmctld
  start_daemon slurmd "$RUN/slurmd.pid" /usr/sbin/slurmd
  for _ in $(seq 100); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1)
    case "$state" in idle*|mixed*|allocated*) log "node $HOST is $state"; return;; esac
    [ "$state" = "down" ] || [ "$state" = "drained" ] && scontrol update nodename="$HOST" state=resume 2>/dev/null || true
    sleep 0.3
  done
  die_with_log "node $HOST did not become idle (state: ${state:-unknown})" "$LOG/slurmd.log"
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
