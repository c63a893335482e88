"""``monitor/report.html``: one self-contained page (inline SVG, no scripts or network) with the run
log's numbers, also embedded as JSON (``#report-data``) and as data-* attributes on each mark."""
from __future__ import annotations

import html
import json
from datetime import datetime

from .stats import LogStats

W, H, PAD = 860, 260, 40
COLORS = {"scrape": "#1f77b4", "load": "#2ca02c", "transform": "#9467bd", "enrich": "#ff7f0e"}


def _scale(values, lo_px, hi_px):
    lo, hi = (min(values), max(values)) if values else (0, 1)
    span = (hi - lo) or 1
    return lambda v: lo_px + (v - lo) / span * (hi_px - lo_px)


def _durations_chart(stats: LogStats, last: int) -> tuple[str, dict]:
    series = {s: list(runs)[-last:] for s, runs in stats.stages.items()}
    all_runs = [r for runs in series.values() for r in runs if r.finished_at]
    if not all_runs:
        return "<p>No stage runs yet.</p>", {}
    x = _scale([r.finished_at.timestamp() for r in all_runs], PAD, W - PAD)
    y = _scale([0] + [r.duration_s for r in all_runs], H - PAD, PAD)
    parts, data = [], {}
    for stage, runs in sorted(series.items()):
        runs = [r for r in runs if r.finished_at]
        color = COLORS.get(stage, "#555")
        pts = " ".join(f"{x(r.finished_at.timestamp()):.1f},{y(r.duration_s):.1f}" for r in runs)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        for r in runs:
            failed = r.status != "success"
            parts.append(
                f'<circle class="mark duration{" failed" if failed else ""}" cx="{x(r.finished_at.timestamp()):.1f}" '
                f'cy="{y(r.duration_s):.1f}" r="{5 if failed else 3}" fill="{"#d62728" if failed else color}" '
                f'data-stage="{html.escape(stage)}" data-run="{html.escape(r.run_id)}" '
                f'data-duration="{r.duration_s}" data-status="{html.escape(r.status)}">'
                f'<title>{html.escape(stage)} {r.duration_s:.1f} s ({html.escape(r.status)})</title></circle>')
        data[stage] = [{"run_id": r.run_id, "duration_s": r.duration_s, "status": r.status} for r in runs]
    legend = "".join(f'<text x="{PAD + 110 * i}" y="18" fill="{COLORS.get(s, "#555")}">{html.escape(s)}</text>'
                     for i, s in enumerate(sorted(series)))
    top = max(r.duration_s for r in all_runs)
    axis = (f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#999"/>'
            f'<text x="4" y="{PAD}" font-size="11">{top:.0f} s</text><text x="4" y="{H - PAD}" font-size="11">0</text>')
    return f'<svg id="durations" width="{W}" height="{H}" role="img">{legend}{axis}{"".join(parts)}</svg>', data


def _volume_chart(stats: LogStats, last: int) -> tuple[str, list]:
    scrapes = {r.run_id: r.metrics.get("new_messages", 0) for r in stats.stage_runs("scrape")}
    photos = {r.run_id: r.metrics.get("photos_analysed", 0) for r in stats.stage_runs("enrich")}
    runs = [r.run_id for r in stats.stage_runs("scrape")][-last:]
    rows = [{"run_id": rid, "messages": scrapes.get(rid) or 0, "photos": photos.get(rid) or 0} for rid in runs]
    if not rows:
        return "<p>No scrape runs yet.</p>", []
    top = max(max(r["messages"], r["photos"]) for r in rows) or 1
    bw = (W - 2 * PAD) / len(rows)
    parts = []
    for i, r in enumerate(rows):
        for j, (kind, color) in enumerate((("messages", "#1f77b4"), ("photos", "#ff7f0e"))):
            h = r[kind] / top * (H - 2 * PAD)
            parts.append(f'<rect class="mark {kind}" x="{PAD + i * bw + j * bw / 2:.1f}" y="{H - PAD - h:.1f}" '
                         f'width="{max(bw / 2 - 1, 1):.1f}" height="{h:.1f}" fill="{color}" '
                         f'data-run="{html.escape(r["run_id"])}" data-{kind}="{r[kind]}">'
                         f'<title>{kind}: {r[kind]}</title></rect>')
    legend = ('<text x="40" y="18" fill="#1f77b4">new messages</text>'
              '<text x="180" y="18" fill="#ff7f0e">photos analysed</text>')
    return f'<svg id="volume" width="{W}" height="{H}" role="img">{legend}{"".join(parts)}</svg>', rows


def _freshness_chart(freshness: dict) -> str:
    if not freshness:
        return "<p>Warehouse not reachable or empty: no per-channel freshness.</p>"
    top = max(freshness.values()) or 1
    parts = []
    for i, (ch, hours) in enumerate(sorted(freshness.items())):
        w = hours / top * (W - 260)
        parts.append(f'<text x="4" y="{30 + i * 24}">{html.escape(ch)}</text>'
                     f'<rect class="mark freshness" x="200" y="{18 + i * 24}" width="{w:.1f}" height="16" '
                     f'fill="#8c564b" data-channel="{html.escape(ch)}" data-hours="{hours}"></rect>'
                     f'<text x="{206 + w:.1f}" y="{30 + i * 24}">{hours:.1f} h</text>')
    return f'<svg id="freshness" width="{W}" height="{40 + 24 * len(freshness)}">{"".join(parts)}</svg>'


def render(stats: LogStats, summary: dict, alerts: list, freshness: dict, generated: datetime,
           last: int = 100) -> str:
    dur_svg, dur_data = _durations_chart(stats, last)
    vol_svg, vol_data = _volume_chart(stats, last)
    data = {"generated_at": generated.isoformat(), "durations": dur_data, "volume": vol_data,
            "freshness_hours": freshness, "alerts": [a.as_dict() for a in alerts], "summary": summary}
    alert_rows = "".join(f'<tr class="alert {a.severity}"><td>{a.severity}</td><td>{html.escape(a.alert_type)}</td>'
                         f'<td>{html.escape(a.message)}</td></tr>' for a in alerts) or \
        '<tr><td colspan="3">No active alerts.</td></tr>'
    health = "".join(f"<tr><td>{html.escape(j)}</td><td>{h['runs']}</td><td>{h['success']}</td><td>{h['failed']}</td>"
                     f"<td>{h['skipped']}</td></tr>" for j, h in summary["health"].items())
    payload = json.dumps(data, default=str).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medical_etl monitor</title>
<style>body{{font:14px system-ui,sans-serif;margin:24px;color:#222}} h2{{margin-top:28px}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ddd;padding:4px 8px}}
tr.critical td,tr.error td{{background:#fde0e0}} tr.warning td{{background:#fff4d6}} svg{{background:#fafafa}}</style>
</head><body>
<h1>medical_etl pipeline monitor</h1>
<p>Generated {generated:%Y-%m-%d %H:%M} UTC from {html.escape(summary['log']['path'])}:
{summary['log']['records']} records, {summary['log']['malformed_lines']} malformed lines skipped.</p>
<h2>Active alerts</h2><table id="alerts"><tr><th>severity</th><th>type</th><th>message</th></tr>{alert_rows}</table>
<h2>Job health</h2><table><tr><th>job</th><th>runs</th><th>success</th><th>failed</th><th>skipped</th></tr>{health}</table>
<h2>Run duration by stage (failed runs in red)</h2>{dur_svg}
<h2>New messages and photos analysed per run</h2>{vol_svg}
<h2>Hours since each channel's last post</h2>{_freshness_chart(freshness)}
<script type="application/json" id="report-data">{payload}</script>
</body></html>
"""
