#!/usr/bin/env bash
# Stop the local test cluster started by .ci/slurm/setup.sh (daemons only; packages, configs
# and the accounting database stay, so the next setup.sh starts in seconds).
# Stops processes by their pid files / admin commands, never by name patterns.
set -uo pipefail
[ "$(id -u)" = 0 ] || { echo "teardown.sh: must run as root" >&2; exit 1; }

stop_pidfile() {  # stop_pidfile <pidfile> <name>
  local pid
  [ -s "$1" ] || return 0
  pid="$(cat "$1")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" && echo "teardown.sh: stopped $2 (pid $pid)"
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -f "$1"
}

scancel --user="$(id -un)" >/dev/null 2>&1 || true
stop_pidfile /run/slurm/slurmd.pid slurmd
stop_pidfile /run/slurm/slurmctld.pid slurmctld
stop_pidfile /run/slurm/slurmdbd.pid slurmdbd
mariadb-admin -uroot shutdown >/dev/null 2>&1 && echo "teardown.sh: stopped mariadb"
stop_pidfile /run/munge/munged.pid munged
exit 0
