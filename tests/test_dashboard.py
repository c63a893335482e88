"""The dashboard (served by the API) and the monitor's report.html in Debian's headless Chromium, with
no network beyond loopback: no console errors, every chart drawn with its axes and the API's data.
Screenshots are kept under TEST_ARTIFACTS_DIR (default test-artifacts/)."""
from __future__ import annotations

import os
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import REPO
from helpers.browser import Browser

from medical_etl.api.app import create_app
from medical_etl.api.settings import ApiSettings

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR") or REPO / "test-artifacts")
KEY = "dashboard-test-key-0123456789"


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


class Server:
    """uvicorn in a thread on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def wh(sample_warehouse):
    return sample_warehouse


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path / "profile", offline=True)
    yield b
    b.close()


CHART_INFO = """(function () {
  var out = {};
  Object.keys(window.__dashboard.charts).forEach(function (id) {
    var c = window.__dashboard.charts[id], o = c.getOption(), el = document.getElementById(id);
    out[id] = {
      xAxis: o.xAxis.map(function (a) { return {type: a.type, name: a.name, data: a.data || null}; }),
      yAxis: o.yAxis.map(function (a) { return {type: a.type, name: a.name, data: a.data || null}; }),
      legend: (o.legend && o.legend[0] && c.getModel().getComponent('legend')) ?
              c.getModel().getComponent('legend').getData().map(function (d) { return d.get('name'); }) : [],
      series: o.series.map(function (s) { return {name: s.name, n: s.data.length, data: s.data}; }),
      svgTexts: Array.prototype.map.call(el.querySelectorAll('svg text'), function (t) { return t.textContent; }),
      marks: el.querySelectorAll('svg path, svg rect').length,
      tooltip: !!(o.tooltip && o.tooltip.length && o.tooltip[0].show !== false)
    };
  });
  return out;
})()"""


def test_dashboard_draws_every_chart_offline(wh, browser):
    app = create_app(wh.params, logs_path=wh.settings.logs_path, lake_path=wh.settings.raw_data_path)
    server = Server(app)
    try:
        from fastapi.testclient import TestClient

        api = TestClient(app)
        top = api.get("/api/reports/top-products?limit=15").json()["items"]
        visual = api.get("/api/reports/visual-content").json()
        seconds = browser.open(server.url + "/", "document.body.dataset.state !== 'loading'")
        state = browser.evaluate("document.body.dataset.state")
        shot = browser.screenshot(artifact("dashboard.png"))
        info = browser.evaluate(CHART_INFO)
        health = browser.evaluate("document.getElementById('health-table').innerText")
    finally:
        server.stop()
    assert state == "ready", browser.evaluate("JSON.stringify(window.__dashboard.errors)")
    assert browser.errors() == []
    # everything came from the app itself (the browser had no route elsewhere)
    assert browser.requests and all(u.startswith((server.url + "/", "data:")) for u in browser.requests), \
        browser.requests
    assert any(u.endswith("/static/echarts.min.js") for u in browser.requests)
    assert seconds < 20 and shot.stat().st_size > 50_000

    assert set(info) == {"chart-top", "chart-prices", "chart-activity", "chart-visual", "chart-engagement"}
    for chart_id, c in info.items():
        assert c["xAxis"][0]["name"] and c["yAxis"][0]["name"] or c["yAxis"][0]["data"], chart_id
        assert c["tooltip"] and c["legend"], chart_id
        assert all(s["n"] > 0 for s in c["series"]), chart_id
        assert c["marks"] > 10, chart_id

    t = info["chart-top"]
    assert t["xAxis"][0]["name"] == "Price (ETB)"
    assert t["yAxis"][0]["data"] == [p["display_name"] for p in reversed(top)]
    medians = next(s for s in t["series"] if s["name"] == "median price")["data"]
    assert medians == [p["median_price_birr"] for p in reversed(top)]
    assert "Price (ETB)" in t["svgTexts"] and "median price" in t["svgTexts"]

    p = info["chart-prices"]
    assert p["xAxis"][0]["type"] == "time" and p["yAxis"][0]["name"] == "Median price (ETB)"
    history = api.get(f"/api/products/{top[0]['product']}/prices").json()["points"]
    assert sum(s["n"] for s in p["series"]) == len(history)
    assert any(x.startswith("2026-01-") for x in p["svgTexts"])  # dated axis labels

    a = info["chart-activity"]
    assert a["xAxis"][0]["type"] == "time" and [y["name"] for y in a["yAxis"]] == \
        ["Posts / prices (count)", "Photo share (%)"]
    assert set(a["legend"]) == {"posts", "prices posted", "photo share (%)"}

    v = info["chart-visual"]
    assert v["yAxis"][0]["data"] == [c["channel"] for c in reversed(visual["channels"])]
    assert set(v["legend"]) == {"promotional", "product_display", "lifestyle", "other"}
    assert "Share of analysed photos (%)" in v["svgTexts"]

    e = info["chart-engagement"]
    groups = ["with_photo", "without_photo", "promotional", "product_display", "lifestyle", "other"]
    series = {s["name"]: s["data"] for s in e["series"]}
    assert series["median views"] == [visual["engagement"][g]["median_views"] for g in groups]
    assert series["average views"] == [visual["engagement"][g]["avg_views"] for g in groups]
    assert e["yAxis"][0]["name"] == "Views per post" and "with a photo" in e["svgTexts"]

    for asset in ("telegram_data", "raw_database", "data_warehouse", "image_enrichment"):
        assert asset in health
    assert "276 messages" in health and "fresh" in health


def _switch(browser, select_id: str, value: str, expect_first: str) -> dict:
    """Choose ``value`` in a control and wait until the top chart shows ``expect_first`` at its top."""
    browser.evaluate(f"""(function () {{ var s = document.getElementById({select_id!r}); s.value = {value!r};
                         s.dispatchEvent(new Event('change')); }})()""")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        names = browser.evaluate("window.__dashboard.charts['chart-top'].getOption().yAxis[0].data")
        if names and names[-1] == expect_first:
            return browser.evaluate(CHART_INFO)["chart-top"]
        time.sleep(0.1)
    raise AssertionError(f"{select_id}={value}: the chart still shows {names[-3:]}")


def test_dashboard_top_products_switch_to_generics_and_kinds(wh, browser):
    app = create_app(wh.params, logs_path=wh.settings.logs_path, lake_path=wh.settings.raw_data_path)
    server = Server(app)
    try:
        from fastapi.testclient import TestClient

        api = TestClient(app)
        generics = api.get("/api/reports/top-products?limit=15&group=generic").json()["items"]
        devices = api.get("/api/reports/top-products?limit=15&kind=device").json()["items"]
        browser.open(server.url + "/", "document.body.dataset.state !== 'loading'")
        by_generic = _switch(browser, "top-group", "generic", generics[0]["display_name"])
        browser.screenshot(artifact("dashboard-generics.png"))
        tooltip = browser.evaluate("""window.__dashboard.charts['chart-top'].getOption().tooltip[0]
                                      .formatter([{dataIndex: 14}])""")
        _switch(browser, "top-group", "product", api.get("/api/reports/top-products?limit=1").json()["items"][0]["display_name"])
        by_kind = _switch(browser, "top-kind", "device", devices[0]["display_name"])
        browser.screenshot(artifact("dashboard-devices.png"))
    finally:
        server.stop()
    assert browser.errors() == []
    assert by_generic["yAxis"][0]["data"] == [p["display_name"] for p in reversed(generics)]
    assert all(p["product_kind"] == "medicine" and p["generic_name"] for p in generics)
    assert f"{generics[0]['products']} products" in tooltip and "(medicine)" in tooltip
    assert by_kind["yAxis"][0]["data"] == [p["display_name"] for p in reversed(devices)]
    assert all(p["product_kind"] == "device" for p in devices)


def _wait(browser, expression: str, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.evaluate(expression)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not true after {timeout} s: {expression}")


CHART_DATA = """(function () {
  var c = window.__dashboard.charts, out = {};
  Object.keys(c).forEach(function (id) { out[id] = JSON.stringify(c[id].getOption().series.map(function (s) {
    return s.data; })); });
  out.urls = window.__dashboard.urls;
  return out;
})()"""


def test_a_shared_link_restores_the_view_and_the_dates_change_every_chart(wh, browser):
    app = create_app(wh.params, logs_path=wh.settings.logs_path, lake_path=wh.settings.raw_data_path)
    server = Server(app)
    try:
        from fastapi.testclient import TestClient

        api = TestClient(app)
        browser.open(server.url + "/", "document.body.dataset.state !== 'loading'")
        everything = browser.evaluate(CHART_DATA)
        # the same view as a link: channel, a custom range, generics, a product, a search
        link = (server.url + "/?channel=tikvahpharma&range=custom&from=2026-01-13&to=2026-01-14&group=generic"
                "&product=amoxicillin&q=vitamin")
        browser.open(link, "document.body.dataset.state !== 'loading'")
        controls = browser.evaluate("""[document.getElementById('channel').value, document.getElementById('range').value,
            document.getElementById('from').value, document.getElementById('to').value,
            document.getElementById('top-group').value, document.getElementById('product').value,
            document.getElementById('search-q').value, location.search]""")
        restored = browser.evaluate(CHART_DATA)
        names = browser.evaluate("window.__dashboard.charts['chart-top'].getOption().yAxis[0].data")
        hits = _wait(browser, "document.querySelectorAll('#search-results li').length")
        browser.screenshot(artifact("dashboard-shared-link.png"))
    finally:
        server.stop()
    assert browser.errors() == []
    assert controls[:7] == ["tikvahpharma", "custom", "2026-01-13", "2026-01-14", "generic", "amoxicillin", "vitamin"]
    assert "from=2026-01-13" in controls[7] and "channel=tikvahpharma" in controls[7]
    window = "since=2026-01-13&until=2026-01-14"
    for chart_id in ("chart-top", "chart-prices", "chart-activity", "chart-visual", "chart-engagement"):
        assert window in restored["urls"][chart_id], chart_id  # every chart reads the range
        assert restored[chart_id] != everything[chart_id], chart_id  # and shows other data than all days
    top = api.get("/api/reports/top-products?limit=15&group=generic&channel=tikvahpharma&" + window).json()["items"]
    assert names == [p["display_name"] for p in reversed(top)]
    assert hits == len(api.get("/api/search/messages?query=vitamin&channel=tikvahpharma&limit=20").json()["items"])


@pytest.mark.parametrize("word", ["amoxicillin", "ዋጋ"])
def test_the_search_box_finds_posts_and_marks_the_words(wh, browser, word):
    app = create_app(wh.params, logs_path=wh.settings.logs_path, lake_path=wh.settings.raw_data_path)
    server = Server(app)
    try:
        from fastapi.testclient import TestClient

        expected = TestClient(app).get(f"/api/search/messages?query={word}&limit=100").json()
        browser.open(server.url + "/", "document.body.dataset.state !== 'loading'")
        browser.evaluate(f"""(function () {{ document.getElementById('search-q').value = {word!r};
            document.getElementById('search-form').requestSubmit(); }})()""")
        n = _wait(browser, "document.querySelectorAll('#search-results li').length")
        while browser.evaluate("!document.getElementById('search-more').hidden"):
            before = n
            browser.evaluate("document.getElementById('search-more').click()")
            n = _wait(browser, f"document.querySelectorAll('#search-results li').length > {before} && "
                               "document.querySelectorAll('#search-results li').length")
        marks = browser.evaluate("Array.from(document.querySelectorAll('#search-results mark')).map(m => m.textContent)")
        shown = browser.evaluate("Array.from(document.querySelectorAll('#search-results .meta')).map(m => m.textContent)")
        address = browser.evaluate("location.search")
    finally:
        server.stop()
    assert browser.errors() == []
    assert n == len(expected["items"]) == expected["total"] >= 2  # every match, over the pages
    assert marks and all(m.lower() == word for m in marks)
    assert [s.split(" · ")[0] for s in shown] == [h["channel"] for h in expected["items"]]
    assert "q=" in address


def test_a_download_gives_the_rows_of_its_chart(wh, browser, tmp_path):
    import csv

    app = create_app(wh.params, logs_path=wh.settings.logs_path, lake_path=wh.settings.raw_data_path)
    server = Server(app)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    try:
        browser.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
        browser.open(server.url + "/?range=custom&from=2026-01-12&to=2026-01-15&kind=medicine",
                     "document.body.dataset.state !== 'loading'")
        names = browser.evaluate("window.__dashboard.charts['chart-top'].getOption().yAxis[0].data")
        medians = browser.evaluate("window.__dashboard.charts['chart-top'].getOption().series[2].data")
        browser.evaluate("document.querySelector('button.download[data-chart=\"chart-top\"]').click()")
        deadline = time.monotonic() + 15
        while not [p for p in downloads.iterdir() if p.suffix == ".csv"] and time.monotonic() < deadline:
            time.sleep(0.1)
        files = [p for p in downloads.iterdir() if p.suffix == ".csv"]
    finally:
        server.stop()
    assert browser.errors() == []
    assert len(files) == 1 and files[0].name.startswith("top-products-")
    rows = list(csv.DictReader(files[0].read_text(encoding="utf-8-sig").splitlines()))
    assert [r["display_name"] for r in reversed(rows)] == names  # the chart's rows, in its order
    assert [float(r["median_price_birr"]) for r in reversed(rows)] == medians
    assert all(r["product_kind"] == "medicine" for r in rows)


@pytest.mark.parametrize("width", [390, 1400])
def test_readable_on_a_phone_and_a_desktop(wh, tmp_path, width):
    b = Browser(tmp_path / "profile", offline=True, size=(width, 2400))
    app = create_app(wh.params, logs_path=wh.settings.logs_path, lake_path=wh.settings.raw_data_path)
    server = Server(app)
    try:
        b.call("Emulation.setDeviceMetricsOverride", width=width, height=2400, deviceScaleFactor=1, mobile=width < 600)
        b.open(server.url + "/", "document.body.dataset.state !== 'loading'")
        overflow = b.evaluate("""(function () {
          var w = document.documentElement.clientWidth, wide = [];
          document.querySelectorAll('body *').forEach(function (el) {
            var r = el.getBoundingClientRect();
            if (r.width && r.right > w + 1 && !el.closest('.chart')) wide.push(el.tagName + '#' + el.id + '.' + el.className);
          });
          return {scroll: document.documentElement.scrollWidth, client: w, wide: wide.slice(0, 5),
                  charts: Array.from(document.querySelectorAll('.chart')).map(function (c) {
                    var r = c.getBoundingClientRect(), svg = c.querySelector('svg');
                    return [r.right <= w + 1, svg ? svg.getBoundingClientRect().right <= r.right + 1 : false]; })};
        })()""")
        labels = b.evaluate("""Array.from(document.querySelectorAll('select, input')).every(function (el) {
          return el.labels && el.labels.length > 0; })""")
        b.screenshot(artifact(f"dashboard-{'phone' if width < 600 else 'desktop'}-{width}.png"))
        errors = b.errors()
    finally:
        server.stop()
        b.close()
    assert errors == []
    assert overflow["scroll"] <= overflow["client"] and overflow["wide"] == [], overflow
    assert all(inside and svg for inside, svg in overflow["charts"]), overflow["charts"]
    assert labels  # every control has a label (screen readers, tapping the label)


def test_dashboard_asks_for_a_key_when_the_api_needs_one(wh, browser):
    app = create_app(wh.params, logs_path=wh.settings.logs_path, lake_path=wh.settings.raw_data_path,
                     api=ApiSettings(keys=(KEY,)))
    server = Server(app)
    try:
        browser.open(server.url + "/", "document.body.dataset.state !== 'loading'")
        assert browser.evaluate("getComputedStyle(document.getElementById('auth')).display") == "flex"
        assert browser.evaluate("document.body.dataset.state") == "error"
        browser.evaluate(f"sessionStorage.setItem('medical_etl_api_key', '{KEY}')")
        browser.open(server.url + "/", "document.body.dataset.state !== 'loading'")
        assert browser.evaluate("document.body.dataset.state") == "ready"
        assert browser.evaluate("getComputedStyle(document.getElementById('auth')).display") == "none"
        browser.evaluate("document.getElementById('channel').value = 'tikvahpharma';"
                         "document.getElementById('channel').dispatchEvent(new Event('change'))")
        assert "channel=tikvahpharma" in browser.evaluate("location.href")
        assert KEY not in browser.evaluate("location.href")  # the key never goes into a link
    finally:
        server.stop()


# --- the monitor's report.html ---------------------------------------------------------------------

REPORT_INFO = """(function () {
  var out = {};
  Object.keys(window.__reportCharts).forEach(function (id) {
    var c = window.__reportCharts[id], o = c.getOption(), el = document.getElementById(id);
    out[id] = {
      xAxis: o.xAxis.map(function (a) { return {type: a.type, name: a.name, data: a.data || null}; }),
      yAxis: o.yAxis.map(function (a) { return {type: a.type, name: a.name, data: a.data || null}; }),
      series: o.series.map(function (s) { return {name: s.name, data: s.data.map(function (d) {
        return d && d.value !== undefined ? d.value : d; })}; }),
      svgTexts: Array.prototype.map.call(el.querySelectorAll('svg text'), function (t) { return t.textContent; }),
      tooltip: !!(o.tooltip && o.tooltip.length)
    };
  });
  return out;
})()"""


def test_monitor_report_renders_offline_with_axes_units_and_the_logs_numbers(tmp_path, browser):
    from test_monitor import NOW, rec, rule, rules_file, run

    records = []
    for i in range(6):
        at = NOW - timedelta(days=6 - i)
        rid = f"run{i}"
        status = "failed" if i == 5 else "success"
        records += [rec(stage="scrape", at=at, duration=10 + i, run_id=rid, metrics={"new_messages": 100 + i}),
                    rec(stage="load", at=at, duration=5 + i, run_id=rid, status=status),
                    rec(stage="enrich", at=at, duration=30.5 + i, run_id=rid, metrics={"photos_analysed": 20 + i}),
                    rec(at=at, duration=50 + i, run_id=rid, status=status)]
    html_path = tmp_path / "report.html"
    run(tmp_path, records, rules_file(tmp_path, rule()), html_path=html_path)
    text = html_path.read_text()
    assert "<script src" not in text and "<link" not in text  # self-contained: ECharts is inlined
    browser.open(html_path.as_uri(), "document.body.dataset.state === 'ready'")
    info = browser.evaluate(REPORT_INFO)
    browser.screenshot(artifact("monitor-report.png"))
    assert browser.errors() == []
    assert all(u.startswith("file://") for u in browser.requests), browser.requests

    d = info["durations"]
    assert d["xAxis"][0] == {"type": "time", "name": "Run finished (UTC)", "data": None}
    assert d["yAxis"][0]["name"] == "Duration (s)"
    series = {s["name"]: s["data"] for s in d["series"]}
    assert [v[1] for v in series["load"]] == [5, 6, 7, 8, 9, 10]
    assert [v[1] for v in series["enrich"]] == [30.5, 31.5, 32.5, 33.5, 34.5, 35.5]
    assert [v[1] for v in series["failed run"]] == [10]  # load's failed run5
    assert "Duration (s)" in d["svgTexts"] and any(t in d["svgTexts"] for t in ("10", "20", "30"))

    v = info["volume"]
    assert v["yAxis"][0]["name"] == "Count per run" and len(v["xAxis"][0]["data"]) == 6
    vol = {s["name"]: s["data"] for s in v["series"]}
    assert vol["new messages"] == [100, 101, 102, 103, 104, 105] and vol["photos analysed"] == [20, 21, 22, 23, 24, 25]
    assert "Count per run" in v["svgTexts"] and "new messages" in v["svgTexts"]
    assert 'class="alert critical"' in browser.evaluate("document.body.innerHTML")


def test_monitor_report_freshness_chart_has_its_unit(tmp_path, browser):
    from datetime import datetime, timezone

    from medical_etl.monitor.html import render
    from medical_etl.monitor.stats import read_log, summarize

    log = tmp_path / "runs.jsonl"
    log.write_text("")
    stats = read_log(log)
    now = datetime(2026, 11, 26, tzinfo=timezone.utc)
    html_path = tmp_path / "report.html"
    html_path.write_text(render(stats, summarize(stats), [], {"CheMed123": 12.5, "tikvahpharma": 130.25}, now))
    browser.open(html_path.as_uri(), "document.body.dataset.state === 'ready'")
    info = browser.evaluate(REPORT_INFO)
    browser.screenshot(artifact("monitor-report-freshness.png"))
    assert browser.errors() == []
    f = info["freshness"]
    assert f["xAxis"][0]["name"] == "Hours since the channel's last post (h)"
    assert f["yAxis"][0]["data"] == ["CheMed123", "tikvahpharma"] and f["series"][0]["data"] == [12.5, 130.25]
    assert "12.5 h" in f["svgTexts"] and "130.3 h" in f["svgTexts"]
    assert set(info) == {"freshness"}  # no runs: the other two say so in words


SHOW_DURATION_TIP = """new Promise(function (done) {
  window.__reportCharts.durations.dispatchAction({type: "showTip", seriesIndex: 0, dataIndex: 0});
  var t0 = Date.now();
  (function look() {
    var br = document.querySelector("#durations div > br"), tip = br && br.parentNode;  // the tooltip's box
    if (!tip && Date.now() - t0 < 5000) return setTimeout(look, 50);
    setTimeout(function () {  // time for an injected image's onerror to run
      done(tip ? {text: tip.textContent, tags: Array.prototype.map.call(tip.querySelectorAll("*"),
                  function (e) { return e.tagName; }), pwned: window.__pwned || null} : null); }, 300);
  })();
})"""


def test_monitor_report_tooltip_shows_a_hostile_run_id_as_text(tmp_path, browser):
    from test_monitor import rec, rule, rules_file, run

    evil = '<img src=x onerror="window.__pwned=1">'
    html_path = tmp_path / "report.html"
    run(tmp_path, [rec(stage="load", run_id=evil, status="<b>failed</b>", duration=5)], rules_file(tmp_path, rule()),
        html_path=html_path, send=False)
    browser.open(html_path.as_uri(), "document.body.dataset.state === 'ready'")
    tip = browser.evaluate(SHOW_DURATION_TIP)
    assert browser.errors() == []
    assert tip["text"].startswith(f"load 5.0 s (<b>failed</b>)run {evil}2026-11-26 12:00 UTC")  # shown as text
    assert "IMG" not in tip["tags"] and tip["tags"].count("B") == 1 and tip["pwned"] is None


def test_openapi_docs_render_offline(wh, browser):
    app = create_app(wh.params, logs_path=wh.settings.logs_path, lake_path=wh.settings.raw_data_path)
    server = Server(app)
    try:
        browser.open(server.url + "/docs", "document.querySelectorAll('.opblock').length >= 8")
        paths = browser.evaluate("Array.from(document.querySelectorAll('.opblock-summary-path')).map(e => e.textContent)")
        browser.screenshot(artifact("openapi-docs.png"))
    finally:
        server.stop()
    assert browser.errors() == []
    assert all(u.startswith(server.url + "/") or u.startswith("data:") for u in browser.requests), browser.requests
    assert "/api/search/messages" in "".join(paths) and "/api/reports/top-products" in "".join(paths)
