"""The asset view: what the pipeline has materialised, how fresh it is, what is stale.

Four assets, one per stage: ``telegram_data`` (the lake, by scrape), ``raw_database`` (load),
``data_warehouse`` (transform) and ``image_enrichment`` (enrich). For each: its last successful and
(if newer) last failed run from the run log, its metadata read from the lake or the warehouse, and
whether it is stale relative to its upstream. Backs ``medical-etl status`` and the API's
``/api/pipeline/status``. The lake and run-log parts work when the database cannot be reached; run-log
lines that are torn or not valid records are skipped and counted.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from datetime import date, datetime, timezone
from pathlib import Path

from medical_etl import lake
from medical_etl.runlog import RunLog
from medical_etl.secrets import mask

ASSETS = {  # asset -> (stage that materialises it, upstream asset)
    "telegram_data": ("scrape", None),
    "raw_database": ("load", "telegram_data"),
    "data_warehouse": ("transform", "raw_database"),
    "image_enrichment": ("enrich", "raw_database"),
}
MARTS = ["dim_channels", "dim_dates", "fct_messages", "fct_product_prices", "fct_image_detections",
         "fct_image_categories"]
_MESSAGE_KEY = b'"message_id":'
log = logging.getLogger(__name__)


def _parse_time(value: str | None) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)  # comparable with every other time


def _run_view(rec: dict, with_error: bool = False) -> dict:
    out = {"at": rec.get("finished_at"), "started_at": rec.get("started_at"), "run_id": rec.get("run_id"),
           "job": rec.get("job"), "duration_s": rec.get("duration_s")}
    if with_error:
        err = rec.get("error")
        message = err.get("message") if isinstance(err, dict) else err
        out["error"] = message or rec.get("reason") or rec.get("status")
    return out


def last_runs(records: Iterable[dict]) -> dict[str, dict]:
    """Per stage: the last successful record and the last failed one, from valid run-log records."""
    out: dict[str, dict] = {stage: {"success": None, "failure": None} for stage, _ in ASSETS.values()}
    for rec in records:
        stage = rec.get("stage")
        if stage not in out:
            continue
        if rec.get("status") == "success":
            out[stage]["success"] = rec
        elif rec.get("status") == "failed":
            out[stage]["failure"] = rec
    return out


def lake_metadata(lake_dir: Path) -> dict:
    """Channels, messages, photos, bytes and the newest post per channel, from the lake's files.

    Messages are counted without parsing (one ``"message_id":`` key per message in the lake's JSON);
    the newest post per channel is read from that channel's newest date partition only.
    """
    lake_dir = Path(lake_dir)
    msg_dir = lake_dir / lake.MESSAGES_DIR
    channels: dict[str, dict] = {}
    n_bytes = n_files = messages = 0
    newest_partition: dict[str, Path] = {}
    if msg_dir.is_dir():
        for day in sorted(os.scandir(msg_dir), key=lambda e: e.name):
            if not day.is_dir():
                continue
            for f in os.scandir(day.path):
                if not f.name.endswith(".json"):
                    continue
                ch = f.name[:-5]
                data = Path(f.path).read_bytes()
                n = data.count(_MESSAGE_KEY)
                messages += n
                n_bytes += len(data)
                n_files += 1
                c = channels.setdefault(ch, {"messages": 0, "photos": 0, "newest_post_at": None})
                c["messages"] += n
                newest_partition[ch] = Path(f.path)  # days are visited in order: the last one wins
    for ch, path in newest_partition.items():
        try:
            dates = [m.get("date") for m in lake.read_partition(path).values() if m.get("date")]
            channels[ch]["newest_post_at"] = max(dates) if dates else None
        except (OSError, ValueError):
            channels[ch]["newest_post_at"] = None
    photos = 0
    img_dir = lake_dir / lake.IMAGES_DIR
    if img_dir.is_dir():
        for ch_dir in os.scandir(img_dir):
            if not ch_dir.is_dir():
                continue
            for f in os.scandir(ch_dir.path):
                if f.is_file():
                    photos += 1
                    n_bytes += f.stat().st_size
                    channels.setdefault(ch_dir.name, {"messages": 0, "photos": 0, "newest_post_at": None})
                    channels[ch_dir.name]["photos"] += 1
    return {"path": str(lake_dir), "channels": len(channels), "messages": messages, "photos": photos,
            "bytes": n_bytes, "files": n_files, "per_channel": dict(sorted(channels.items()))}


# --- the warehouse ----------------------------------------------------------------------------------

def _one(cur, sql: str, args=None):
    cur.execute(sql, args)
    row = cur.fetchone()
    if row is None:
        return None
    return next(iter(row.values())) if isinstance(row, dict) else row[0]


def _exists(cur, table: str) -> bool:
    return _one(cur, "SELECT to_regclass(%s) IS NOT NULL", (table,))


def _rows(cur, table: str, exact: bool) -> int | None:
    """Rows in ``table``: exact, or the planner's count (marts are analysed after builds that change them
    by a tenth) when that says the table is large; a small table is counted (a few rows appended to an
    empty one leave its statistics at 0)."""
    if not _exists(cur, table):
        return None
    if not exact:
        est = _one(cur, "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", (table,))
        if est is not None and est >= 10_000:
            return int(est)
    return int(_one(cur, f"SELECT count(*) FROM {table}"))  # noqa: S608 - table names are ours


def warehouse_metadata(cur, exact: bool = True) -> dict:
    """Counts and timestamps of the raw tables and marts (a cursor in any transaction mode)."""
    marts = {m: _rows(cur, f"marts.{m}", exact) for m in MARTS}
    raw: dict = {"rows": _rows(cur, "raw.telegram_messages", exact),
                 "rejects": _rows(cur, "raw.load_rejects", True)}
    if raw["rows"] is not None:
        newest = _one(cur, "SELECT max(updated_at) FROM raw.telegram_messages")
        raw["newest_row_at"] = newest
        raw["files_loaded"] = _rows(cur, "raw.loaded_files", exact)
    enrich: dict = {"photos_analysed": None, "unreadable": None, "photos_in_raw": None, "objects_per_class": {},
                    "model": None}
    if _exists(cur, "raw.image_analyses"):
        if exact:
            cur.execute("""SELECT count(*) FILTER (WHERE status <> 'unreadable') AS analysed,
                                  count(*) FILTER (WHERE status = 'unreadable') AS unreadable
                           FROM (SELECT DISTINCT ON (channel, message_id) status FROM raw.image_analyses
                                 ORDER BY channel, message_id, analysed_at DESC) AS latest""")
            row = cur.fetchone()
            enrich["photos_analysed"], enrich["unreadable"] = (row["analysed"], row["unreadable"]) \
                if isinstance(row, dict) else row
        else:  # readable analysed photos = fct_image_categories' rows; unreadable ones via a partial index
            enrich["photos_analysed"] = marts["fct_image_categories"]
            enrich["unreadable"] = _one(cur, "SELECT count(*) FROM raw.image_analyses WHERE status = 'unreadable'")
        if raw["rows"] is not None:
            enrich["photos_in_raw"] = _one(cur, "SELECT count(*) FROM raw.telegram_messages "
                                                "WHERE image_path IS NOT NULL") if exact else \
                _one(cur, "SELECT coalesce(sum(image_post_count), 0) FROM marts.dim_channels") \
                if _exists(cur, "marts.dim_channels") else None
    if _exists(cur, "marts.agg_detected_classes"):
        cur.execute("SELECT class_name, sum(objects)::bigint AS n FROM marts.agg_detected_classes "
                    "GROUP BY 1 ORDER BY 2 DESC, 1")
        enrich["objects_per_class"] = {r["class_name"] if isinstance(r, dict) else r[0]:
                                       int(r["n"] if isinstance(r, dict) else r[1]) for r in cur.fetchall()}
    return {"raw": raw, "marts": marts, "enrichment": enrich}


def _age_hours(at, now: datetime) -> float | None:
    if isinstance(at, str):
        at = _parse_time(at)
    if isinstance(at, date) and not isinstance(at, datetime):
        at = datetime(at.year, at.month, at.day, tzinfo=timezone.utc)
    if at is None:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return round((now - at).total_seconds() / 3600, 2)


class DatabaseHealthSeen:
    """The database's health as the last job that recorded it saw it (``metrics.database`` of a job's
    record: size, connections, max_connections, the largest relations), with the peak connections of
    that job's stages; noted from the run-log records passed through :meth:`watch`."""

    def __init__(self):
        self.last, self.peaks = None, {}

    def watch(self, records: Iterable[dict]) -> Iterator[dict]:
        for rec in records:
            metrics = rec.get("metrics") or {}
            if rec.get("stage") is None and isinstance(metrics.get("database"), dict) \
                    and "database_size_bytes" in metrics["database"]:
                self.last = rec
                self.peaks = {k: v for k, v in self.peaks.items() if k == rec.get("run_id")}
            elif rec.get("stage") and isinstance(metrics.get("db_connections_peak"), int):
                self.peaks.setdefault(rec.get("run_id"), {})[rec["stage"]] = {
                    "peak": metrics["db_connections_peak"], "server_peak": metrics.get("db_connections_server_peak")}
            yield rec

    def result(self) -> dict | None:
        """None when no job recorded it yet."""
        if self.last is None:
            return None
        rec = self.last
        return {"recorded_at": rec.get("finished_at"), "run_id": rec.get("run_id"), "job": rec.get("job"),
                **rec["metrics"]["database"], "stage_connections": self.peaks.get(rec.get("run_id"), {})}


def pipeline_status(
    *,
    logs_path: Path,
    lake_path: Path,
    cursor: Callable[[], AbstractContextManager] | None,
    exact_counts: bool = True,
    now: datetime | None = None,
    public: bool = False,
) -> dict:
    """The four assets with their last runs, metadata and staleness.

    ``cursor`` opens a database cursor (a context manager), or is None; a database that cannot be
    reached is reported in ``database.error`` and the lake and run-log parts are still filled.
    ``exact_counts=False`` reads table sizes from the planner's statistics (constant time; the API).
    ``public=True`` (the API) leaves out the server's paths and the database error's details (the
    server's address and user), which it logs instead.
    """
    now = now or datetime.now(timezone.utc)
    scan = RunLog(logs_path).scan()
    health = DatabaseHealthSeen()
    runs = last_runs(health.watch(scan))
    lake_meta = lake_metadata(lake_path)
    if public:
        lake_meta.pop("path")
    db: dict = {"reachable": False, "error": None}
    wh = None
    if cursor is not None:
        try:
            with cursor() as cur:
                wh = warehouse_metadata(cur, exact=exact_counts)
            db["reachable"] = True
        except Exception as exc:  # noqa: BLE001 - status reports the database's state, it does not fail on it
            db["error"] = f"{type(exc).__name__}: {mask(exc).strip()}"
            if public:
                log.warning("pipeline status: the warehouse was not read: %s", db["error"])
                db["error"] = "database unavailable (details in the server log)"
    else:
        db["error"] = "no database configured"

    assets = []
    for name, (stage, upstream) in ASSETS.items():
        ok, bad = runs[stage]["success"], runs[stage]["failure"]
        ok_at = _parse_time(ok.get("finished_at")) if ok else None
        bad_at = _parse_time(bad.get("finished_at")) if bad else None
        metrics = (ok or {}).get("metrics") or {}
        asset: dict = {
            "asset": name, "stage": stage, "upstream": upstream,
            "last_success": _run_view(ok) if ok else None,
            "last_failure": _run_view(bad, True) if bad and (ok_at is None or (bad_at and bad_at > ok_at)) else None,
            "age_hours": _age_hours(ok_at, now),
            "stale": False, "stale_reasons": [],
        }
        if name == "telegram_data":
            asset["metadata"] = {k: v for k, v in lake_meta.items()}
            newest = [c["newest_post_at"] for c in lake_meta["per_channel"].values() if c["newest_post_at"]]
            asset["newest_post_age_hours"] = _age_hours(max(newest), now) if newest else None
        elif name == "raw_database":
            asset["metadata"] = dict(wh["raw"]) if wh else None
            scrape_ok = runs["scrape"]["success"]
            scrape_at, load_at = _parse_time((scrape_ok or {}).get("finished_at")), _parse_time((ok or {}).get("started_at"))
            if scrape_at and (load_at is None or scrape_at > load_at):
                asset["stale_reasons"].append("the lake has a scrape newer than the last load")
        elif name == "data_warehouse":
            asset["metadata"] = {"models_built": metrics.get("models_built"), "tests_passed": metrics.get("tests_passed"),
                                 "tests_failed": metrics.get("tests_failed"),
                                 "rows_per_mart": wh["marts"] if wh else None}
            newest_raw = wh["raw"].get("newest_row_at") if wh else None
            built_at = _parse_time((ok or {}).get("started_at"))
            if newest_raw and (built_at is None or newest_raw > built_at):
                asset["stale_reasons"].append(f"raw rows updated at {newest_raw.isoformat()} after the last dbt build")
        else:
            e = dict(wh["enrichment"]) if wh else {}
            e["model"] = metrics.get("model")
            asset["metadata"] = e or None
            pending = None
            if e.get("photos_in_raw") is not None and e.get("photos_analysed") is not None:
                pending = max(0, e["photos_in_raw"] - e["photos_analysed"] - (e.get("unreadable") or 0))
                e["photos_not_analysed"] = pending
            if pending:
                asset["stale_reasons"].append(f"{pending} loaded photos not analysed yet")
        asset["stale"] = bool(asset["stale_reasons"])
        assets.append(asset)
    run_log = {"records": scan.records, "skipped_lines": {"malformed": scan.malformed, "invalid": scan.invalid}}
    if not public:
        run_log = {"path": str(RunLog(logs_path).path), **run_log}
    return {"generated_at": now.isoformat(), "database": db, "database_health": health.result(),
            "run_log": run_log, "assets": assets}


def format_text(status: dict) -> str:
    """A short human-readable rendering of :func:`pipeline_status`."""
    run_log = status["run_log"]
    lines = [f"Pipeline assets at {status['generated_at'][:19]}Z (run log {run_log['path']})"]
    skipped = run_log["skipped_lines"]
    if skipped["malformed"] or skipped["invalid"]:
        lines.append(f"  run log: skipped {skipped['malformed']} torn or malformed line(s) and "
                     f"{skipped['invalid']} invalid record(s)")
    if not status["database"]["reachable"]:
        lines.append(f"  database: UNREACHABLE - {status['database']['error']} (lake and run log still shown)")
    health = status.get("database_health")
    if health:
        lines.append(f"\ndatabase health (recorded by job {health['job']} run {health['run_id']} at {health['recorded_at']})")
        lines.append(f"  size {health['database_size_bytes'] / 1e6:,.1f} MB, connections {health['connections']} "
                     f"of max {health['max_connections']}")
        for stage, c in health["stage_connections"].items():
            lines.append(f"    {stage:<10} peak {c['peak']} session(s) of its own, {c['server_peak']} on the server")
        lines.append(f"  {'largest relations':<44} {'MB':>9} {'live':>10} {'dead':>10}  last vacuum / analyze")
        for r in health["relations"]:
            lines.append(f"    {r['relation']:<42} {r['size_bytes'] / 1e6:>9.1f} {r['live_tuples'] or 0:>10} "
                         f"{r['dead_tuples'] or 0:>10}  {(r['last_vacuum'] or '-')[:19]} / {(r['last_analyze'] or '-')[:19]}")
    for a in status["assets"]:
        ok = a["last_success"]
        state = "STALE" if a["stale"] else ("FAILED" if a["last_failure"] else ("ok" if ok else "never run"))
        lines.append(f"\n{a['asset']} [{state}]  (stage {a['stage']})")
        if ok:
            lines.append(f"  last success: {ok['at']}  run {ok['run_id']}  job {ok['job']}  ({a['age_hours']} h ago)")
        else:
            lines.append("  last success: never")
        if a["last_failure"]:
            f = a["last_failure"]
            lines.append(f"  last failure: {f['at']}  run {f['run_id']}  job {f['job']}: {f['error']}")
        for r in a["stale_reasons"]:
            lines.append(f"  stale: {r}")
        m = a.get("metadata")
        if a["asset"] == "telegram_data":
            lines.append(f"  {m['channels']} channels, {m['messages']} messages, {m['photos']} photos, "
                         f"{m['bytes'] / 1e6:.1f} MB in {m['path']}")
            for ch, c in m["per_channel"].items():
                lines.append(f"    {ch:<28} {c['messages']:>8} messages {c['photos']:>7} photos  "
                             f"newest post {c['newest_post_at'] or '-'}")
        elif m is None:
            lines.append("  metadata: database unreachable")
        elif a["asset"] == "raw_database":
            lines.append(f"  rows {m.get('rows')}, rejects {m.get('rejects')}, files loaded {m.get('files_loaded')}, "
                         f"newest row {m.get('newest_row_at')}")
        elif a["asset"] == "data_warehouse":
            lines.append(f"  models built {m['models_built']}, tests passed {m['tests_passed']}, "
                         f"failed {m['tests_failed']}")
            for mart, n in (m["rows_per_mart"] or {}).items():
                lines.append(f"    {mart:<28} {'missing' if n is None else n:>10}")
        else:
            lines.append(f"  photos analysed {m.get('photos_analysed')}, unreadable {m.get('unreadable')}, "
                         f"not analysed {m.get('photos_not_analysed')}, model {m.get('model')}")
            top = ", ".join(f"{k} {v}" for k, v in list((m.get("objects_per_class") or {}).items())[:8])
            if top:
                lines.append(f"    objects: {top}")
    return "\n".join(lines)
