"""The monitor's last line: one plain-words verdict a newcomer can act on.

Data scraped from a recorded Telegram Desktop export (``TELEGRAM_SOURCE=sample`` or an export folder)
is a snapshot: its newest post is as old as the export, and a re-run adds nothing. Judging it by
today's date ("channel has not posted for 7,500 h") or by volume ("0 new messages") would only say
that a snapshot is a snapshot, so those rules are set aside while the latest scrape read one, and
the verdict says so.
"""
from __future__ import annotations

from datetime import datetime

from medical_etl.monitor.stats import LogStats

# Rules that judge the live feed; meaningless for a recorded snapshot.
LIVE_FEED_METRICS = {"channel_hours_since_last_post", "new_messages_vs_trailing_avg"}


def recorded_source(stats: LogStats) -> str | None:
    """``sample`` or ``export`` when the latest pipeline scrape read a recorded export, else None."""
    runs = [r for r in stats.stage_runs("scrape") if r.job != "import-export" and r.finished_at]
    if not runs:
        return None
    source = max(runs, key=lambda r: r.finished_at).metrics.get("source")
    return source if source in ("sample", "export") else None


def verdict(result: dict, recorded: str | None, newest_post: datetime | None, now: datetime) -> str:
    m = result["metrics"]
    worst = result["worst_severity"]
    alerts = [a for a in result["active_alerts"] if a["severity"] != "info"]
    last = m.get("last_success_at")
    if not m["log"]["records"]:
        return "no runs recorded yet: run `make demo` (sample data) or `make pipeline`, then `make monitor` again."
    ago = _ago(now, datetime.fromisoformat(last)) if last else None
    if worst in (None, "info"):
        text = f"OK. The last successful run finished {ago} ago and no alert is active." if ago else \
            "OK. No alert is active."
    elif worst == "warning":
        text = (f"WARNING. {len(alerts)} alert(s) above deserve a look; nothing failed"
                + (f" (last successful run {ago} ago)." if ago else "."))
    else:
        text = (f"ACTION NEEDED ({worst}). Read the {worst} alert(s) above and the run log "
                "(`tail logs/runs.jsonl`); the exit code says how bad (2 error, 3 critical).")
    if result.get("problems"):
        text += f" Also {len(result['problems'])} PROBLEM line(s) above: the monitor itself needs a look."
    if recorded:
        what = "the shipped sample export" if recorded == "sample" else "a recorded Telegram Desktop export"
        snap = f" (newest post {newest_post:%Y-%m-%d})" if newest_post else ""
        text += (f" The data comes from {what}{snap}, not live Telegram: a snapshot neither grows nor stays "
                 "fresh, so channel freshness and new-message volume are not judged. With TELEGRAM_SOURCE=api "
                 "a channel silent for 7 days, or a run bringing under 20% of the usual posts, raises a warning.")
    return text


def _ago(now: datetime, then: datetime) -> str:
    s = max(0, (now - then).total_seconds())
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.0f} h"
    return f"{s / 86400:.0f} days"
