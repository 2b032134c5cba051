#!/usr/bin/env bash
# Stop the test SLURM started by tests/slurm/up.sh, by its pid files. Keeps the state folder
# (database, config) so a later up.sh is fast; `down.sh --purge` removes it as well.
set -uo pipefail

STATE=${GHANET_SLURM_STATE:-/tmp/ghanet-slurm}

stop() { # stop NAME: TERM the pid in $STATE/pids/NAME.pid, wait, then KILL
    local name=$1 file=$STATE/pids/$1.pid pid i
    [ -s "$file" ] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for ((i = 0; i < 80; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "slurm-down: $name ($pid) did not stop in 20 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
    rm -f "$file"
}

[ -d "$STATE/pids" ] || { echo "slurm-down: nothing to stop ($STATE/pids absent)" >&2; exit 0; }
# slurmd first (running jobs end), then the controller, accounting, database, munge
for name in slurmd slurmctld slurmdbd mariadbd munged; do
    stop "$name"
done
if [ "${1:-}" = "--purge" ]; then
    for f in slurm.conf gres.conf slurmdbd.conf; do
        [ "$(readlink "/etc/slurm/$f" 2>/dev/null)" = "$STATE/etc/$f" ] && rm -f "/etc/slurm/$f"
    done
    rm -rf "$STATE"
fi
echo "slurm-down: stopped" >&2
