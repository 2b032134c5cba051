#!/usr/bin/env bash
# Stand up a real one-node SLURM (with slurmdbd accounting, so `sacct` works) on loopback.
#
#   sudo tests/slurm/up.sh          # idempotent: a second call returns at once when all is up
#   sudo tests/slurm/down.sh        # stops the daemons by their pid files
#
# Installs Debian's slurm-wlm, munge, slurmdbd and mariadb-server with apt-get when missing,
# writes the configuration and all state (spool, logs, pid files, database) under
# $GHANET_SLURM_STATE (default /tmp/ghanet-slurm), links the config files into /etc/slurm
# (where sinfo/sbatch/sacct look for them), starts the daemons as background processes
# (no systemd) and waits until `sinfo` shows the node idle.
#
# The node advertises one fake GPU per CPU (gres gpu, device files equal to /dev/null) so rules that ask for a GPU
# (--gpus / --gres) are accepted; jobs still run on the CPU.
# Accounting: cluster "ghanet", account "ghanet" with the calling user in it.
set -euo pipefail

STATE=${GHANET_SLURM_STATE:-/tmp/ghanet-slurm}
DB_PORT=${GHANET_SLURM_DB_PORT:-3307}
CLUSTER=ghanet
ACCOUNT=ghanet
USER_NAME=$(id -un)
START=$(date +%s)

log() { echo "[slurm-up $(( $(date +%s) - START ))s] $*" >&2; }
die() { echo "slurm-up: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts daemons)"

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    local i
    for ((i = 0; i < limit * 4; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.25
    done
    die "timed out after ${limit}s waiting for $what (logs: $STATE/log)"
}

node_idle() { sinfo -h -N -o '%T' 2>/dev/null | grep -qx 'idle'; }
node_ready() { # idle; a node drained by an earlier (stale) registration is resumed
    node_idle && return 0
    if sinfo -h -N -o '%T' 2>/dev/null | grep -Eq 'drain|inval'; then
        scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    fi
    return 1
}

# ------------------------------------------------------------------ packages
if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null \
    || ! command -v munged >/dev/null || ! command -v mariadbd >/dev/null || ! command -v sacct >/dev/null; then
    log "installing slurm-wlm munge slurmdbd mariadb-server (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm slurm-client munge slurmdbd mariadb-server >/dev/null
fi

mkdir -p "$STATE"/{etc,log,pids,spool/ctld,spool/d,run}
chmod 755 "$STATE"

# ------------------------------------------------------------------ munge
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    # munged forks; its pid file lives in /run/munge (it must be writable by user munge)
    runuser -u munge -- munged --force --pid-file=/run/munge/munged.pid \
        --log-file=/var/log/munge/munged.log || die "munged did not start: see /var/log/munge/munged.log"
    wait_for 15 "munge" bash -c 'munge -n | unmunge'
fi
ln -sf /run/munge/munged.pid "$STATE/pids/munged.pid"

# ------------------------------------------------------------------ mariadb (private datadir)
DATADIR=$STATE/mysql
SOCK=$STATE/run/mysqld.sock
if [ ! -d "$DATADIR/mysql" ]; then
    log "initialising MariaDB in $DATADIR"
    mkdir -p "$DATADIR"
    chown mysql:mysql "$DATADIR"
    mariadb-install-db --user=mysql --datadir="$DATADIR" --auth-root-authentication-method=socket \
        --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1
fi
chown mysql:mysql "$STATE/run" "$DATADIR"
if ! alive "$STATE/pids/mariadbd.pid"; then
    log "starting mariadbd"
    # own pid file path: mariadbd runs as user mysql and writes it into $STATE/run
    nohup mariadbd --no-defaults --user=mysql --datadir="$DATADIR" --socket="$SOCK" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
        --pid-file="$STATE/run/mariadbd.pid" --innodb-buffer-pool-size=64M \
        --log-error="$STATE/log/mariadbd.log" >/dev/null 2>&1 &
    echo $! >"$STATE/pids/mariadbd.pid"
    wait_for 60 "mariadbd" mariadb --socket="$SOCK" -uroot -e 'SELECT 1'
fi
mariadb --socket="$SOCK" -uroot <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL

# ------------------------------------------------------------------ configuration
CPUS=$(nproc)
# Fake GPUs, one per CPU: character devices equal to /dev/null (major 1, minor 3)
N_GPUS=$CPUS
mkdir -p "$STATE/dev"
for ((i = 0; i < N_GPUS; i++)); do
    [ -c "$STATE/dev/gpu$i" ] || mknod -m 666 "$STATE/dev/gpu$i" c 1 3
done
MEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
MEM=$(( MEM * 9 / 10 ))  # stay below what slurmd measures, or the node is drained

cat >"$STATE/etc/slurm.conf.new" <<CONF
# One-node test cluster on loopback, written by tests/slurm/up.sh
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/pids/slurmctld.pid
SlurmdPidFile=$STATE/pids/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
AccountingStoreFlags=job_comment
MinJobAge=300
SchedulerParameters=sched_interval=1,bf_interval=1
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM Gres=gpu:$N_GPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

cat >"$STATE/etc/gres.conf.new" <<CONF
# Fake GPUs (copies of /dev/null): lets --gpus/--gres requests through on a CPU-only test node
NodeName=localhost Name=gpu File=$STATE/dev/gpu[0-$((N_GPUS - 1))]
CONF

cat >"$STATE/etc/slurmdbd.conf.new" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$STATE/pids/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
chmod 0600 "$STATE/etc/slurmdbd.conf.new"

stop_pid() { # stop_pid NAME: a daemon whose configuration changed
    local file=$STATE/pids/$1.pid i
    alive "$file" || return 0
    log "configuration changed: restarting $1"
    local pid
    pid=$(cat "$file" 2>/dev/null) || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 80; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$file"
}
changed=0
for f in slurm.conf gres.conf slurmdbd.conf; do
    if cmp -s "$STATE/etc/$f.new" "$STATE/etc/$f"; then
        rm -f "$STATE/etc/$f.new"
    else
        mv -f "$STATE/etc/$f.new" "$STATE/etc/$f"
        changed=1
    fi
done
CTLD_FLAGS=()
if [ "$changed" = 1 ]; then
    for name in slurmd slurmctld slurmdbd; do stop_pid "$name"; done
    CTLD_FLAGS=(-c)  # a new node definition: start from a clean job/node state
fi

mkdir -p /etc/slurm
for f in slurm.conf gres.conf slurmdbd.conf; do
    ln -sf "$STATE/etc/$f" "/etc/slurm/$f"
done

# ------------------------------------------------------------------ daemons
if ! alive "$STATE/pids/slurmdbd.pid"; then
    log "starting slurmdbd"
    slurmdbd || die "slurmdbd did not start: $(tail -3 "$STATE/log/slurmdbd.log")"
    wait_for 60 "slurmdbd" sacctmgr -n list cluster
fi
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi
if ! sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT"; then
    sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="ghanet tests" organization=ghanet >/dev/null
fi
if ! sacctmgr -n -P list assoc user="$USER_NAME" account="$ACCOUNT" format=user | grep -qx "$USER_NAME"; then
    sacctmgr -i add user "$USER_NAME" account="$ACCOUNT" defaultaccount="$ACCOUNT" cluster="$CLUSTER" >/dev/null
fi

if ! alive "$STATE/pids/slurmctld.pid"; then
    log "starting slurmctld"
    slurmctld "${CTLD_FLAGS[@]}" || die "slurmctld did not start: $(tail -3 "$STATE/log/slurmctld.log")"
    wait_for 60 "slurmctld (scontrol ping)" bash -c 'scontrol ping | grep -q UP'
fi
if ! alive "$STATE/pids/slurmd.pid"; then
    log "starting slurmd"
    slurmd -N localhost || die "slurmd did not start: $(tail -3 "$STATE/log/slurmd.log")"
fi
wait_for 60 "the node to be idle in sinfo" node_ready
wait_for 30 "sacct" sacct -n -X -S now
log "up: $(sinfo -h -N -o '%N %T %c cpus %m MB %G')"
