#!/usr/bin/env bash
# The shell of pipelines/dino.mk: appends each recipe command, with the time,
# to the run's commands log, then runs it with bash -e -o pipefail, so that a
# run directory holds the exact commands that made it.
#   run-logged.sh LOGFILE -c COMMAND
log=$1; shift
[ "${1:-}" = "-c" ] && shift
mkdir -p "$(dirname "$log")"
printf '# %s\n%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" >> "$log"
exec /usr/bin/env bash -e -o pipefail -c "$1"
