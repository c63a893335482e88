"""The monitor: read the log (and the warehouse where reachable), evaluate the rules, deliver, report."""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from medical_etl import resources
from medical_etl.filelock import Lock, LockHeld, acquire_lock
from medical_etl.monitor.alerts import (
    COMMON_FIELDS,
    METRIC_FIELDS,
    METRICS,
    evaluate,
    exit_code,
    load_state,
    save_state,
    slowest_text,
    worst_severity,
)
from medical_etl.monitor.deliver import DELIVERY_CAP_S, deliver, expand
from medical_etl.monitor.html import render
from medical_etl.monitor.rules import load_rules
from medical_etl.monitor.stats import read_log, summarize
from medical_etl.monitor.verdict import LIVE_FEED_METRICS, recorded_source, verdict

if TYPE_CHECKING:
    from medical_etl.db import ConnParams

DEFAULT_RULES = resources.alert_rules()
LOCK_WAIT_S = 2 * DELIVERY_CAP_S  # longer than one monitor holds the state lock


def _wait_for_lock(path: Path, wait_s: float) -> Lock | str:
    """The lock on ``path``, or its holder's note when another monitor keeps it past ``wait_s``
    (polled often: the lock is held only while one run evaluates, delivers and records)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return acquire_lock(path)
        except LockHeld as held:
            if time.monotonic() >= deadline:
                return held.holder
        time.sleep(0.1)


def warehouse_metrics(db: ConnParams, timeout: int = 3) -> dict | None:
    """Freshness per channel and completeness; None when the warehouse cannot be reached."""
    from medical_etl.db import connect

    try:
        conn = connect(db, attempts=1, connect_timeout=timeout)
    except Exception:  # noqa: BLE001 - the monitor works from the log alone
        return None
    out: dict = {"last_post_by_channel": {}}
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT channel, max(message_date) FROM raw.telegram_messages GROUP BY 1")
            out["last_post_by_channel"] = dict(cur.fetchall())
            cur.execute("""SELECT count(*) FILTER (WHERE image_path IS NOT NULL),
                                  (SELECT count(DISTINCT (channel, message_id)) FROM raw.image_analyses)
                           FROM raw.telegram_messages""")
            photos, analysed = cur.fetchone()
            out["photos_analysed_share"] = round(analysed / photos, 4) if photos else None
            conn.commit()
            try:
                cur.execute("SELECT avg((price_count > 0)::int) FROM marts.fct_messages")
                share = cur.fetchone()[0]
                out["posts_with_prices_share"] = round(float(share), 4) if share is not None else None
            except Exception:  # noqa: BLE001 - marts not built yet
                conn.rollback()
                out["posts_with_prices_share"] = None
    except Exception:  # noqa: BLE001 - raw tables not created yet
        conn.rollback()
    finally:
        conn.close()
    return out


def run_monitor(log_path: Path, *, rules_path: Path = DEFAULT_RULES, state_path: Path | None = None,
                db: ConnParams | None = None, env: Mapping[str, str] | None = None,
                html_path: Path | None = None, send: bool = True,
                now: datetime | None = None, lock_wait_s: float = LOCK_WAIT_S) -> tuple[dict, int]:
    """Evaluate once; return (result, exit code: 0 none/info, 1 warning, 2 error, 3 critical).

    ``env`` (default: the environment) fills the delivery settings' ``${VAR}`` placeholders. A
    monitor already running on the same state is waited for up to ``lock_wait_s``; past that this
    run evaluates and reports but sends nothing."""
    env = os.environ if env is None else env
    now = now or datetime.now(timezone.utc)
    rules, delivery_conf = load_rules(rules_path, metric_fields())
    stats = read_log(log_path)
    recorded = recorded_source(stats)
    if recorded:  # a recorded snapshot: freshness and volume of the live feed are not judged
        rules = [r for r in rules if r.metric not in LIVE_FEED_METRICS]
    wh = warehouse_metrics(db) if db is not None else None
    summary = summarize(stats)
    freshness = {ch: round((now - ts).total_seconds() / 3600, 1)
                 for ch, ts in (wh or {}).get("last_post_by_channel", {}).items()}
    summary["data_quality"] = {
        "freshness_hours_by_channel": freshness,
        "photos_analysed_share": (wh or {}).get("photos_analysed_share"),
        "posts_with_prices_share": (wh or {}).get("posts_with_prices_share"),
        "warehouse_reachable": wh is not None,
    }
    state_path = Path(state_path or Path(log_path).parent / "monitor_state.json")
    lock_path = state_path.with_name(state_path.name + ".lock")
    problems, late = [], []
    try:
        lock = _wait_for_lock(lock_path, lock_wait_s)
    except OSError as exc:
        lock = None
        late.append(f"cannot lock {lock_path} ({exc.strerror or exc}): a monitor started at the same time "
                    "may send the same alerts")
    if isinstance(lock, str):
        problems.append(f"another monitor has held {lock_path} for over {lock_wait_s:g} s ({lock}): "
                        "this run sent nothing and recorded nothing")
        send = False
    try:  # evaluate, deliver and record under the lock: two monitors at once send each alert once
        state, state_problems = load_state(state_path, repair=isinstance(lock, Lock))
        problems += state_problems
        active, to_send = evaluate(rules, stats, wh, state, now)
        worst = worst_severity(active)
        deliveries = deliver(to_send, summary, expand(delivery_conf, env), worst) if send else []
        # Only a run that delivered changes what counts as sent; when every channel that carries
        # alerts failed (the dead-man ping carries none), they stay unsent and the next run tries again.
        carried = [d for d in deliveries if d["channel"] != "deadman"]
        delivered = send and not (carried and not any(d["ok"] for d in carried))
        if delivered:
            try:
                save_state(state_path, state)
            except OSError as exc:
                problems.append(f"cannot write the alert state {state_path}: {exc.strerror or exc}")
    finally:
        if isinstance(lock, Lock):
            lock.release()
    problems += late
    if html_path:
        try:
            Path(html_path).write_text(render(stats, summary, active, freshness, now), encoding="utf-8")
        except OSError as exc:
            problems.append(f"cannot write the report {html_path}: {exc.strerror or exc}")
    result = {"generated_at": now.isoformat(), "rules_file": str(rules_path), "worst_severity": worst,
              "active_alerts": [a.as_dict() for a in active],
              "sent": [a.as_dict() for a in to_send] if delivered else [],
              "deliveries": deliveries, "metrics": summary, "problems": problems}
    posts = (wh or {}).get("last_post_by_channel") or {}
    result["verdict"] = verdict(result, recorded, max(posts.values()) if posts else None, now)
    rc = exit_code(active)
    # A failed write is reported on top of the alerts' verdict, never instead of it.
    return result, max(rc, 1) if problems else rc


def metric_fields() -> dict[str, set[str] | None]:
    return {m: (METRIC_FIELDS[m] | COMMON_FIELDS if m in METRIC_FIELDS else None) for m in METRICS}


def format_text(result: dict) -> str:
    m = result["metrics"]
    lines = [f"medical_etl monitor: worst severity {result['worst_severity'] or 'none'}",
             f"log {m['log']['path']}: {m['log']['records']} records, {m['log']['malformed_lines']} malformed"
             + ("" if m["log"]["exists"] else " (no runs yet)")]
    for a in result["active_alerts"]:
        lines.append(f"  [{a['severity'].upper():8}] {a['message']}" + ("" if a["new"] else "  (already sent)"))
    for a in result["sent"]:
        if a["state"] == "resolved":
            lines.append(f"  [RESOLVED] {a['message']}")
    lines.append("health:")
    for job, h in m["health"].items():
        rate = f"{h['failure_rate']:.0%}" if h["failure_rate"] is not None else "-"
        lines.append(f"  {job:<12} runs {h['runs']:>5}  failed {h['failed']:>4}  failure rate {rate}")
    perf = m["performance"]
    lines.append(f"performance (bottleneck: {perf['bottleneck'] or '-'}):")
    for stage, p in perf["stages"].items():
        r = m["resources"].get(stage, {})
        lines.append(f"  {stage:<10} median {p['median_s']} s  p95 {p['p95_s']} s  "
                     f"peak RSS {r.get('peak_rss_mb_max')} MB  cpu {r.get('cpu_s_median')} s")
        if p.get("slowest_models"):
            lines.append(f"  {'':<10} last run's slowest models: {slowest_text(p)}")
    db = m.get("database")
    if db:
        lines.append(f"database: {db['database_size_bytes'] / 1e6:,.1f} MB, {db['connections']} of "
                     f"{db['max_connections']} connections (job {db['job']} run {db['run_id']})")
        for stage, r in m["resources"].items():
            if r.get("db_connections_peak") is not None:
                lines.append(f"  {stage:<10} peak sessions {r['db_connections_peak']} "
                             f"(server {r['db_connections_server_peak']})")
        for rel in db["relations"][:5]:
            lines.append(f"  {rel['relation']:<40} {rel['size_bytes'] / 1e6:>9.1f} MB  live {rel['live_tuples']}  "
                         f"dead {rel['dead_tuples']}")
    dq = m["data_quality"]
    lines.append(f"data: last scrape {m['volume']['last_new_messages']} new messages "
                 f"(trailing avg {m['volume']['trailing_avg_new_messages']}); photos analysed "
                 f"{dq['photos_analysed_share']}; posts with prices {dq['posts_with_prices_share']}")
    for ch, h in dq["freshness_hours_by_channel"].items():
        lines.append(f"  {ch:<24} last post {h} h ago")
    for d in result["deliveries"]:
        lines.append(f"delivery {d['channel']}: " + ("ok" if d["ok"] else f"FAILED {d['error']}"))
    for p in result.get("problems", []):
        lines.append(f"PROBLEM: {p}")
    if result.get("verdict"):
        lines.append(f"verdict: {result['verdict']}")
    return "\n".join(lines)
