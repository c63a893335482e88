"""``monitor/report.html``: one self-contained page (Apache ECharts inlined, no network) with the run
log's numbers as charts with axes, units, legends and tooltips; the same numbers are embedded as
JSON (``#report-data``) for machines."""
from __future__ import annotations

import html
import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from medical_etl.monitor.stats import LogStats

ECHARTS = Path(__file__).resolve().parents[1] / "static" / "echarts.min.js"
ECHARTS_VERSION = "6.1.0"  # medical_etl/static/echarts.min.js, from the npm package
COLORS = {"scrape": "#1f77b4", "load": "#2ca02c", "transform": "#9467bd", "enrich": "#ff7f0e"}


@lru_cache(maxsize=1)
def _echarts_source() -> str:
    return ECHARTS.read_text(encoding="utf-8")


def _durations(stats: LogStats, last: int) -> dict:
    out = {}
    for stage, runs in sorted(stats.stages.items()):
        runs = [r for r in list(runs)[-last:] if r.finished_at]
        out[stage] = [{"run_id": r.run_id, "finished_at": r.finished_at.isoformat(), "duration_s": r.duration_s,
                       "status": r.status} for r in runs]
    return {s: v for s, v in out.items() if v}


def _volume(stats: LogStats, last: int) -> list:
    photos = {r.run_id: r.metrics.get("photos_analysed", 0) for r in stats.stage_runs("enrich")}
    runs = [r for r in stats.stage_runs("scrape") if r.finished_at][-last:]
    return [{"run_id": r.run_id, "finished_at": r.finished_at.isoformat(),
             "messages": r.metrics.get("new_messages") or 0, "photos": photos.get(r.run_id) or 0} for r in runs]


_SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var colors = %(colors)s;
  var charts = window.__reportCharts = {};
  function init(id) { var c = echarts.init(document.getElementById(id), null, {renderer: "svg"}); charts[id] = c; return c; }
  function fmtTime(v) { return new Date(v).toISOString().slice(0, 16).replace("T", " ") + " UTC"; }
  // Tooltips are HTML: every value from the run log goes in as text.
  function esc(v) { return String(v).replace(/[&<>"']/g, function (c) {
    return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]; }); }
  var stages = Object.keys(data.durations);
  if (stages.length) {
    var failed = [];
    stages.forEach(function (s) { data.durations[s].forEach(function (r) {
      if (r.status !== "success") failed.push({value: [r.finished_at, r.duration_s], run: r, stage: s}); }); });
    var series = stages.map(function (s) {
      return {name: s, type: "line", color: colors[s] || "#555", symbolSize: 6,
              data: data.durations[s].map(function (r) { return {value: [r.finished_at, r.duration_s], run: r, stage: s}; })};
    });
    series.push({name: "failed run", type: "scatter", color: "#d62728", symbol: "diamond", symbolSize: 12, z: 5, data: failed});
    init("durations").setOption({
      animation: false, legend: {top: 0}, grid: {left: 8, right: 24, top: 36, bottom: 44, containLabel: true},
      tooltip: {trigger: "item", formatter: function (p) { var r = p.data.run;
        return "<b>" + esc(p.data.stage) + "</b> " + esc(r.duration_s.toFixed(1)) + " s (" + esc(r.status) + ")<br>run " +
               esc(r.run_id) + "<br>" + esc(fmtTime(r.finished_at)); }},
      xAxis: {type: "time", name: "Run finished (UTC)", nameLocation: "middle", nameGap: 30,
              axisLabel: {formatter: "{yyyy}-{MM}-{dd} {HH}:{mm}", hideOverlap: true}},
      yAxis: {type: "value", name: "Duration (s)", min: 0, nameTextStyle: {align: "left"}},
      series: series
    });
  }
  if (data.volume.length) {
    init("volume").setOption({
      animation: false, legend: {top: 0}, grid: {left: 8, right: 24, top: 36, bottom: 44, containLabel: true},
      tooltip: {trigger: "axis", axisPointer: {type: "shadow"}},
      xAxis: {type: "category", name: "Scrape run (UTC)", nameLocation: "middle", nameGap: 28,
              data: data.volume.map(function (r) { return r.finished_at.slice(0, 16).replace("T", " "); })},
      yAxis: {type: "value", name: "Count per run", minInterval: 1, nameTextStyle: {align: "left"}},
      series: [
        {name: "new messages", type: "bar", color: "#1f77b4", data: data.volume.map(function (r) { return r.messages; })},
        {name: "photos analysed", type: "bar", color: "#ff7f0e", data: data.volume.map(function (r) { return r.photos; })}
      ]
    });
  }
  var fresh = Object.keys(data.freshness_hours).sort();
  if (fresh.length) {
    init("freshness").setOption({
      animation: false, grid: {left: 8, right: 60, top: 16, bottom: 44, containLabel: true},
      tooltip: {trigger: "axis", axisPointer: {type: "shadow"},
                valueFormatter: function (v) { return v.toFixed(1) + " h"; }},
      xAxis: {type: "value", name: "Hours since the channel's last post (h)", nameLocation: "middle", nameGap: 28, min: 0},
      yAxis: {type: "category", data: fresh},
      series: [{name: "hours since last post", type: "bar", color: "#8c564b",
                label: {show: true, position: "right", formatter: function (p) { return p.value.toFixed(1) + " h"; }},
                data: fresh.map(function (c) { return data.freshness_hours[c]; })}]
    });
  }
  document.body.setAttribute("data-state", "ready");
})();
"""


def render(stats: LogStats, summary: dict, alerts: list, freshness: dict, generated: datetime,
           last: int = 100) -> str:
    durations, volume = _durations(stats, last), _volume(stats, last)
    data = {"generated_at": generated.isoformat(), "durations": durations, "volume": volume,
            "freshness_hours": freshness, "alerts": [a.as_dict() for a in alerts], "summary": summary}
    alert_rows = "".join(f'<tr class="alert {a.severity}"><td>{a.severity}</td><td>{html.escape(a.alert_type)}</td>'
                         f'<td>{html.escape(a.message)}</td></tr>' for a in alerts) or \
        '<tr><td colspan="3">No active alerts.</td></tr>'
    health = "".join(f"<tr><td>{html.escape(j)}</td><td>{h['runs']}</td><td>{h['success']}</td><td>{h['failed']}</td>"
                     f"<td>{h['skipped']}</td></tr>" for j, h in summary["health"].items())
    db = summary.get("database")
    if db:
        rels = "".join(f"<tr><td>{html.escape(str(r.get('relation')))}</td><td>{(r.get('size_bytes') or 0) / 1e6:,.1f}</td>"
                       f"<td>{r.get('live_tuples')}</td><td>{r.get('dead_tuples')}</td>"
                       f"<td>{html.escape(str(r.get('last_vacuum') or '-'))[:19]}</td>"
                       f"<td>{html.escape(str(r.get('last_analyze') or '-'))[:19]}</td></tr>" for r in db["relations"])
        database = (f"<p>{db['database_size_bytes'] / 1e6:,.1f} MB; {db['connections']} of {db['max_connections']} "
                    f"connections (recorded by job {html.escape(str(db['job']))}, run {html.escape(str(db['run_id']))})."
                    f"</p><table id=\"relations\"><tr><th>relation</th><th>MB</th><th>live tuples</th>"
                    f"<th>dead tuples</th><th>last vacuum</th><th>last analyze</th></tr>{rels}</table>")
    else:
        database = "<p>No job has recorded the database's health yet.</p>"
    payload = json.dumps(data, default=str).replace("</", "<\\/")
    n_fresh = len(freshness)

    def box(id_, present, empty, height=320):
        return f'<div id="{id_}" class="chart" style="height:{height}px"></div>' if present else f"<p>{empty}</p>"

    script = _SCRIPT % {"colors": json.dumps(COLORS)}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medical_etl monitor</title>
<style>body{{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}} h2{{margin-top:28px}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ddd;padding:4px 8px}}
tr.critical td,tr.error td{{background:#fde0e0}} tr.warning td{{background:#fff4d6}}
.chart{{width:100%;background:#fafafa;border:1px solid #eee}}</style>
</head><body data-state="loading">
<h1>medical_etl pipeline monitor</h1>
<p>Generated {generated:%Y-%m-%d %H:%M} UTC from {html.escape(summary['log']['path'])}:
{summary['log']['records']} records, {summary['log']['malformed_lines']} malformed lines skipped.</p>
<h2>Active alerts</h2><table id="alerts"><tr><th>severity</th><th>type</th><th>message</th></tr>{alert_rows}</table>
<h2>Job health</h2><table><tr><th>job</th><th>runs</th><th>success</th><th>failed</th><th>skipped</th></tr>{health}</table>
<h2>Database</h2>{database}
<h2>Run duration by stage (failed runs marked)</h2>{box("durations", durations, "No stage runs yet.")}
<h2>New messages and photos analysed per run</h2>{box("volume", volume, "No scrape runs yet.")}
<h2>Hours since each channel's last post</h2>{box("freshness", freshness,
    "Warehouse not reachable or empty: no per-channel freshness.", 80 + 32 * n_fresh)}
<script type="application/json" id="report-data">{payload}</script>
<!-- Apache ECharts {ECHARTS_VERSION} (Apache-2.0; medical_etl/static/echarts.LICENSE, echarts.NOTICE) -->
<script>{_echarts_source()}</script>
<script>{script}</script>
</body></html>
"""

