#!/usr/bin/env bash
# Run a job from cron: into a dated log file under LOGS_PATH, then the monitor. Exit code: the job's.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
job="${1:?usage: cron_run.sh JOB}"
logs=$(.venv/bin/python -c "from medical_etl.config import load_settings; print(load_settings().logs_path)") || exit 1
log="$logs/cron-$(date -u +%F)-$job.log"
{
  echo "=== $(date -u +%FT%TZ) job $job"
  make -s "$job"; rc=$?
  echo "=== $(date -u +%FT%TZ) job $job exited $rc; monitor:"
  make -s monitor
  exit "$rc"
} >> "$log" 2>&1
