"""The ``medical-etl`` command line (also ``python -m medical_etl``): every sub-command.

This is an edge: it reads the settings once and passes explicit values on; stages never read the
environment. stdout carries the result only (JSON or the report); progress and errors go to
stderr. Exit codes: 0 success, 1 a failure, 2 a configuration error, 75 a transient failure
(retrying later may succeed, see :mod:`medical_etl.errors`); ``monitor`` exits with the worst
alert's severity.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from datetime import datetime, timezone

from medical_etl import __version__
from medical_etl.config import ConfigError, Settings, load_settings
from medical_etl.errors import EtlError, JobError, StageFailed
from medical_etl.jobs.stages import run_stage
from medical_etl.secrets import mask

EX_TEMPFAIL = 75


def setup_logging(verbose: bool = False, level: str = "INFO") -> None:
    """LOG_LEVEL for this process (and, through the settings, for the stage processes); -v = DEBUG."""
    from medical_etl.logsetup import configure_logging

    configure_logging("DEBUG" if verbose else level)


def cmd_doctor(args, settings: Settings) -> int:
    from medical_etl.ops.doctor import checks

    failed = False
    for name, ok, required, detail in checks(settings):
        mark = "ok  " if ok else ("FAIL" if required else "warn")
        print(f"[{mark}] {name:<10} {mask(detail)}")
        failed |= required and not ok
    return 1 if failed else 0


def _date(value: str) -> datetime:
    d = datetime.fromisoformat(value)
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)


def _int_at_least(low: int):
    """An argparse type: a whole number of at least ``low``."""
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {n}")
        return n
    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def _seconds(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not math.isfinite(x) or x < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, 0 or more, got {value!r}")
    return x


def _failed(exc: StageFailed | JobError) -> int:
    """1, or 75 when the failure was transient (the job already retried it STAGE_RETRIES times)."""
    if exc.reason:
        print(f"(transient: {exc.reason}; retrying later may succeed)", file=sys.stderr)
        return EX_TEMPFAIL
    return 1


def _print(summary: dict) -> None:
    print(json.dumps(summary, indent=2, default=str, ensure_ascii=False))


def _stage(name: str, opts_from_args):
    def run(args, settings: Settings) -> int:
        try:
            summary = run_stage(name, settings, job=args.job, **opts_from_args(args))
        except StageFailed as exc:
            _print(exc.summary)
            print(f"error: {exc}", file=sys.stderr)
            return _failed(exc)
        _print(summary)
        return 0
    return run


def _scrape_opts(args) -> dict:
    opts = dict(limit=args.limit, since=args.since, download_photos=not args.no_photos)
    if args.channels:
        opts["channels"] = args.channels.split(",")
    if args.refresh_days is not None:
        opts["refresh_days"] = args.refresh_days
    return opts


def cmd_import_export(args, settings: Settings) -> int:
    from medical_etl.progress import Progress
    from medical_etl.runlog import track_run
    from medical_etl.scrape.stage import import_telegram_export

    with track_run(settings.logs_path, job=args.job or "import-export", stage="scrape") as rec:
        summary = import_telegram_export(args.export_dir, settings.raw_data_path, args.channel,
                                         run_id=rec.run_id, on_channel=Progress("import-export").channel)
        rec.metrics.update(summary)
    _print(summary)
    return 0


def cmd_telegram_login(args, settings: Settings) -> int:
    from medical_etl.scrape.telegram import interactive_login

    path = interactive_login(settings)
    print(f"session saved to {path} (mode 0600)" if path else "logged in (string session)")
    return 0


def _jobs_help() -> str:
    from medical_etl.jobs.definitions import jobs

    try:
        return ", ".join(jobs())
    except Exception:  # noqa: BLE001 - help text must not fail on an unreadable Makefile
        return "see the Makefile's JOB lines"


def cmd_jobs(args, settings: Settings) -> int:
    from medical_etl.jobs.definitions import job_definitions

    for job in job_definitions().values():
        print(f"  {job.name:<12} {job.describe()}" + (f"  -- {job.about}" if job.about else ""))
    return 0


def cmd_job(args, settings: Settings) -> int:
    from medical_etl.jobs import run_job

    try:
        summary = run_job(args.name, settings, full_refresh=args.full_refresh, refresh_days=args.refresh_days,
                          lock_wait_s=args.lock_wait, stages=args.stages.split() if args.stages else None)
    except JobError as exc:
        print(json.dumps(_brief(exc.summary), indent=2, default=str, ensure_ascii=False))
        print(f"error: {exc}", file=sys.stderr)
        return _failed(exc)
    print(json.dumps(_brief(summary), indent=2, default=str, ensure_ascii=False))
    return 0


def _brief(summary: dict) -> dict:
    """Job summary without the bulky per-node details."""
    out = {k: v for k, v in summary.items() if k != "stages"}
    out["stages"] = {name: {k: v for k, v in st.items() if k not in ("nodes", "channels", "slowest_models")}
                     for name, st in summary.get("stages", {}).items()}
    return out


def cmd_cron(args, settings: Settings) -> int:
    from medical_etl.ops import cron

    try:
        if args.action == "show":
            rendered = cron.block()
            print(rendered.text, end="")
            for note in rendered.notes:
                print(note, file=sys.stderr)
        elif args.action == "install":
            rendered = cron.install(args.crontab)
            print(f"installed the medical_etl entries for {cron.REPO} (crontab -l to see them)")
            for note in rendered.notes:
                print(note)
        else:
            rest = cron.uninstall(args.crontab)
            print(f"removed the medical_etl entries for {cron.REPO}"
                  + ("" if rest is not None else " (the crontab held nothing else: removed)"))
    except cron.CronError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _warehouse(settings: Settings):
    """The warehouse's connection parameters, or None when they cannot be had (an embedded server that
    does not start): the monitor then judges the run log alone, as for an unreachable server."""
    from medical_etl.db import conn_params

    try:
        return conn_params(settings)
    except Exception as exc:  # noqa: BLE001 - the monitor must still report
        logging.getLogger("medical_etl.monitor").warning("warehouse not checked: %s", mask(exc))
        return None


def cmd_monitor(args, settings: Settings) -> int:
    """Exit code by the worst active severity: 0 none/info, 1 warning, 2 error, 3 critical; 4 bad rules."""
    from pathlib import Path

    from medical_etl.monitor.evaluate import DEFAULT_RULES, format_text, run_monitor
    from medical_etl.monitor.rules import RulesError

    try:
        result, rc = run_monitor(settings.logs_path / "runs.jsonl", rules_path=Path(args.rules or DEFAULT_RULES),
                                 state_path=Path(args.state) if args.state else None,
                                 db=None if args.no_warehouse else _warehouse(settings),
                                 html_path=Path(args.html) if args.html else None, send=not args.no_deliver)
    except RulesError as exc:
        print(f"monitor: refusing the rules file: {exc}", file=sys.stderr)
        return 4
    print(json.dumps(result, indent=2, default=str, ensure_ascii=False) if args.json else format_text(result))
    return rc


def _shell_dbt_env(settings: Settings) -> dict[str, str]:
    """The variables that aim a shell's dbt (profiles.yml) and psql at the settings' database."""
    from medical_etl.db import conn_params
    from medical_etl.jobs.stages import settings_dbt_paths
    from medical_etl.transform.dbt import shell_env

    return shell_env(conn_params(settings), settings_dbt_paths(settings))  # starts the embedded server if needed


def cmd_dbt(args, settings: Settings) -> int:
    """Run dbt with ARGS against the settings' database (embedded included); dbt's exit code."""
    import os
    import subprocess
    from pathlib import Path

    from medical_etl.transform.dbt import ENV_PREFIX

    env = {**os.environ, **_shell_dbt_env(settings)}
    password = settings.db_password.reveal()
    if password:
        env[ENV_PREFIX + "PASSWORD"] = env["PGPASSWORD"] = password
    dbt = Path(sys.executable).with_name("dbt")
    cmd = [str(dbt) if dbt.exists() else "dbt", *args.dbt_args]
    sys.stdout.flush()
    return subprocess.run(cmd, env=env, cwd=env["DBT_PROJECT_DIR"]).returncode


def cmd_env(args, settings: Settings) -> int:
    """Print shell exports for plain dbt and psql: eval "$(medical-etl env)"."""
    import shlex

    from medical_etl.transform.dbt import ENV_PREFIX

    out = [f"export {k}={shlex.quote(v)}" for k, v in _shell_dbt_env(settings).items()]
    password = settings.db_password.reveal()
    if password and args.with_password:
        out += [f"export {k}={shlex.quote(password)}" for k in (ENV_PREFIX + "PASSWORD", "PGPASSWORD")]
    elif password:
        out.append(f"# DB_PASSWORD is set but not printed: add --with-password, or export PGPASSWORD and "
                   f"{ENV_PREFIX}PASSWORD yourself")
    print("\n".join(out))
    return 0


def cmd_backup(args, settings: Settings) -> int:
    from medical_etl.ops.backup import backup
    from medical_etl.runlog import track_run

    # A stage-level record: the job rules (failure, staleness) stay about the pipeline's jobs, and
    # the backup_failure rule watches this one.
    with track_run(settings.logs_path, job="backup", stage="backup") as rec:
        summary = backup(settings, keep=args.keep)
        rec.metrics.update({k: v for k, v in summary.items() if k not in ("lake", "logs")})
    _print(summary)
    return 0


def cmd_restore(args, settings: Settings) -> int:
    from medical_etl.ops.backup import RestoreRefused, list_backups
    from medical_etl.ops.restore import resolve_backup, restore

    if args.list:
        for b in list_backups(settings.backup_path):
            print(b.name)
        return 0
    if not args.backup:
        print("error: name a backup (a folder of BACKUP_PATH, or latest); --list shows them", file=sys.stderr)
        return 2
    try:
        summary = restore(settings, resolve_backup(args.backup, settings), force=args.force)
    except RestoreRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    _print(summary)
    return 0


def cmd_report(args, settings: Settings) -> int:
    from medical_etl.ops.report import print_report

    print_report(settings)
    return 0


def cmd_status(args, settings: Settings) -> int:
    """Exit 0; the database being unreachable is reported, not fatal (the lake and run log still print)."""
    from medical_etl.ops.status import format_text, pipeline_status

    def cursor():
        from contextlib import contextmanager

        from medical_etl.db import conn_params, connect

        @contextmanager
        def _cur():
            conn = connect(conn_params(settings), attempts=1, connect_timeout=min(settings.db_connect_timeout_s, 5))
            try:
                conn.set_session(readonly=True)
                with conn.cursor() as cur:
                    yield cur
            finally:
                conn.close()
        return _cur()

    status = pipeline_status(logs_path=settings.logs_path, lake_path=settings.raw_data_path, cursor=cursor)
    print(json.dumps(status, indent=2, default=str, ensure_ascii=False) if args.json else format_text(status))
    return 0


def cmd_serve(args, settings: Settings) -> int:
    from medical_etl.api.serve import serve

    return serve(settings, host=args.host, port=args.port, access_log=not args.no_access_log)


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check configuration, database and tools")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("job", help="run a job: its stages in order, under the job lock")
    p.add_argument("name", help=f"the job ({_jobs_help()}; `medical-etl jobs` lists them, from the Makefile)")
    p.add_argument("--full-refresh", action="store_true", help="rebuild incremental dbt models")
    p.add_argument("--refresh-days", type=_non_negative_int, help="re-read the last N days of posts (counts)")
    p.add_argument("--lock-wait", type=_seconds, help="seconds to wait for a running job (default: the job's "
                                                     "own, LOCK_WAIT; 0 for most jobs: skip)")
    p.add_argument("--stages", help="the job's stages as the Makefile lists them (checked, not chosen)")
    p.set_defaults(func=cmd_job)

    p = sub.add_parser("jobs", help="list the jobs: their stages in run order and options (the Makefile's JOB lines)")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("cron", help="install or remove this checkout's crontab entries")
    p.add_argument("action", choices=["install", "uninstall", "show"])
    p.add_argument("--crontab", default="crontab", help="the crontab command (default: crontab)")
    p.set_defaults(func=cmd_cron)

    p = sub.add_parser("monitor", help="evaluate the alert rules over the run log; exit code = worst severity")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--rules", help="rules file (default monitor/pipeline_alerts.json)")
    p.add_argument("--state", help="alert state file (default LOGS_PATH/monitor_state.json)")
    p.add_argument("--html", help="also write the HTML report here (e.g. monitor/report.html)")
    p.add_argument("--no-deliver", action="store_true", help="evaluate and print only")
    p.add_argument("--no-warehouse", action="store_true", help="use the run log only")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("backup", help="back up the database (pg_dump), the lake and the run log to BACKUP_PATH")
    p.add_argument("--keep", type=int, help="backups to keep (default BACKUP_KEEP)")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("restore", help="restore a backup into an empty database, lake and log folder")
    p.add_argument("backup", nargs="?", help="a backup folder of BACKUP_PATH, or latest")
    p.add_argument("--force", action="store_true",
                   help="restore over a non-empty database (dropped) and lake/logs (moved aside)")
    p.add_argument("--list", action="store_true", help="list the backups in BACKUP_PATH")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("report", help="print what the warehouse holds: counts, image categories, top products")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("status", help="the pipeline's assets: last runs, counts, freshness, what is stale")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("serve", help="the analytical API and dashboard (API_HOST:API_PORT, default 127.0.0.1:8000)")
    p.add_argument("--host", help="address to bind (API_HOST); non-loopback needs API_KEYS")
    p.add_argument("--port", type=int, help="port (API_PORT)")
    p.add_argument("--no-access-log", action="store_true", help="do not log each request")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("scrape", help="stage 1: Telegram channels to the data lake")
    p.add_argument("--channels", help="comma-separated channels (default: TELEGRAM_CHANNELS or the channels file)")
    p.add_argument("--limit", type=_positive_int, help="at most this many messages per channel")
    p.add_argument("--since", type=_date, help="first backfill starts at this date (ISO 8601)")
    p.add_argument("--no-photos", action="store_true", help="do not download photos")
    p.add_argument("--refresh-days", type=_non_negative_int, help="re-read the last N days to refresh views and forwards")
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.set_defaults(func=_stage("scrape", _scrape_opts))

    p = sub.add_parser("load", help="stage 2: data lake to the raw tables in PostgreSQL")
    p.add_argument("--batch-rows", type=_positive_int, help="rows per COPY batch and transaction (LOAD_BATCH_ROWS)")
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.set_defaults(func=_stage("load", lambda a: {"batch_rows": a.batch_rows} if a.batch_rows else {}))

    p = sub.add_parser("transform", help="stage 3: dbt build of the star schema (models and tests)")
    p.add_argument("--full-refresh", action="store_true", help="rebuild incremental models (weekly run)")
    p.add_argument("--select", nargs="+", help="dbt node selection")
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.set_defaults(func=_stage("transform", lambda a: {"full_refresh": a.full_refresh, "select": a.select}))

    p = sub.add_parser("enrich", help="stage 4: YOLO object detection on new photos, then the detection models")
    p.add_argument("--no-dbt", action="store_true", help="do not build the detection models afterwards")
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.set_defaults(func=_stage("enrich", lambda a: {"build_models": not a.no_dbt}))

    p = sub.add_parser("import-export", help="import a Telegram Desktop JSON export into the data lake")
    p.add_argument("export_dir", help="folder holding result.json (and photos/)")
    p.add_argument("--channel", help="channel username (default: the folder's name)")
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_import_export)

    p = sub.add_parser("dbt", help="run dbt ARGS against the configured database (embedded included)",
                       description="Runs the project's dbt in medical_warehouse/ against the database the settings "
                                   "name, e.g. `medical-etl dbt build`, `medical-etl dbt show --select dim_channels`.")
    p.add_argument("dbt_args", nargs=argparse.REMAINDER, help="dbt's own arguments")
    p.set_defaults(func=cmd_dbt)

    p = sub.add_parser("env", help='print exports for plain dbt and psql: eval "$(medical-etl env)"')
    p.add_argument("--with-password", action="store_true", help="also export DB_PASSWORD (as PGPASSWORD)")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("telegram-login", help="interactive Telegram login; writes the session file (0600)")
    p.set_defaults(func=cmd_telegram_login)




def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medical-etl", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"medical-etl {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG (same as LOG_LEVEL=DEBUG)")
    register(p.add_subparsers(dest="command", required=True))
    return p


def _error_exit(exc: BaseException) -> int:
    """Print a failure, masked, with what it is about; the exit code says whether retrying may help."""
    from medical_etl.jobs.retry import transient_reason

    where = []
    if isinstance(exc, EtlError):
        where += [f"stage {exc.stage}"] if exc.stage else []
        where += [f"setting {exc.setting}"] if exc.setting else []
    why = transient_reason(exc)
    label = type(exc).__name__ + (f" ({', '.join(where)})" if where else "")
    print(f"error: {label}: {mask(exc)}", file=sys.stderr)
    if why:
        print(f"(transient: {why}; retrying later may succeed)", file=sys.stderr)
        return EX_TEMPFAIL
    return 2 if isinstance(exc, ConfigError) else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        setup_logging(args.verbose)
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.verbose:
        settings = dataclasses.replace(settings, log_level="DEBUG")
    setup_logging(level=settings.log_level)
    from medical_etl.runlog import configure_rotation

    configure_rotation(settings.runlog_max_mb)
    try:
        rc = args.func(args, settings)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the edge reports, masked, and exits non-zero
        logging.getLogger("medical_etl").debug("failure", exc_info=True)
        return _error_exit(exc)
    if isinstance(rc, dict):
        print(json.dumps(rc, indent=2, default=str, ensure_ascii=False))
        return 0
    return int(rc or 0)
