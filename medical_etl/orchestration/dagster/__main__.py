"""``make dagster``: ``dagster dev`` over these definitions, on 127.0.0.1 only, DAGSTER_HOME under the project.

DAGSTER_HOME defaults to ``data/dagster_home`` (beside the lake and the embedded server); Dagster keeps its
runs, event logs and schedules there in SQLite files. Its ``dagster.yaml``, written when absent, turns
Dagster's telemetry off (nothing leaves the machine), shows medical_etl's log lines in each run's log, and
has Dagster's run queue start our runs one at a time: they share one job lock, so a backfill's partitions
wait their turn instead of finding the lock taken.
The runs use the configured database, the embedded one included (DB_HOST empty), as the CLI does.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HOST = "127.0.0.1"
DEFINITIONS = "medical_etl.orchestration.dagster.defs"
DAGSTER_YAML = """\
# Written by `make dagster` when absent (medical_etl.orchestration.dagster); yours to edit.
telemetry:
  enabled: false
python_logs:
  managed_python_loggers: [medical_etl]
  python_log_level: INFO
concurrency:
  runs:
    tag_concurrency_limits:  # one job lock (LOGS_PATH/pipeline.lock): one run at a time; raise with more workers
      - key: medical_etl/job
        limit: 1
"""


def prepare_home(home: Path) -> Path:
    """DAGSTER_HOME, created, with its dagster.yaml."""
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    conf = home / "dagster.yaml"
    if not conf.exists():
        conf.write_text(DAGSTER_YAML, encoding="utf-8")
    return home


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m medical_etl.orchestration.dagster",
                                     description=f"dagster dev over medical_etl's jobs, on {HOST} only")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args(argv)
    home = prepare_home(Path(os.environ.get("DAGSTER_HOME") or "data/dagster_home"))
    bin_dir = Path(sys.executable).parent  # this environment's dagster, and the dbt the runs may call
    env = {**os.environ, "DAGSTER_HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    dagster = str(bin_dir / "dagster")
    print(f"dagster dev: http://{HOST}:{args.port} (DAGSTER_HOME={home})", file=sys.stderr, flush=True)
    os.execve(dagster, [dagster, "dev", "--host", HOST, "--port", str(args.port), "--module-name", DEFINITIONS],
              env)


if __name__ == "__main__":
    main()
