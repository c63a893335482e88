/* medical_etl dashboard: reads the API, draws with Apache ECharts (served by the package, SVG renderer). */
(function () {
  "use strict";
  var charts = {};
  var DAY = 86400000;
  window.__dashboard = { charts: charts, errors: [], loaded: {} };
  var COLORS = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#4b5563", "#db2777"];
  var CATEGORY_COLORS = { promotional: "#dc2626", product_display: "#2563eb", lifestyle: "#16a34a", other: "#9ca3af" };

  function key() { return sessionStorage.getItem("medical_etl_api_key") || ""; }

  function api(path) {
    var headers = {};
    if (key()) headers.Authorization = "Bearer " + key();
    return fetch(path, { headers: headers }).then(function (r) {
      if (r.status === 401) { document.getElementById("auth").style.display = "flex"; }
      return r.json().then(function (body) {
        if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
        return body;
      });
    });
  }

  function chart(id) {
    if (!charts[id]) {
      charts[id] = echarts.init(document.getElementById(id), null, { renderer: "svg" });
      window.addEventListener("resize", function () { charts[id].resize(); });
    }
    return charts[id];
  }

  function showError(id, err) {
    window.__dashboard.errors.push(id + ": " + err.message);
    var el = document.getElementById(id);
    var p = document.createElement("p");
    p.className = "error";
    p.textContent = "Could not load: " + err.message;
    el.parentNode.insertBefore(p, el);
  }

  function birr(v) { return v == null ? "–" : Number(v).toLocaleString("en-US", { maximumFractionDigits: 2 }) + " ETB"; }
  function esc(s) { var d = document.createElement("div"); d.textContent = s == null ? "" : String(s); return d.innerHTML; }
  function ago(hours) {
    if (hours == null) return "";
    if (hours < 1) return Math.round(hours * 60) + " min ago";
    if (hours < 48) return hours.toFixed(1) + " h ago";
    return (hours / 24).toFixed(1) + " days ago";
  }
  function fill(select, values, labels) {
    select.innerHTML = "";
    values.forEach(function (v, i) {
      var o = document.createElement("option");
      o.value = v; o.textContent = labels ? labels[i] : v;
      select.appendChild(o);
    });
  }

  // --- pipeline health -------------------------------------------------------------------------------
  function health() {
    return api("/api/pipeline/status").then(function (s) {
      var rows = s.assets.map(function (a) {
        var state = a.last_failure ? "failed" : a.stale ? "stale" : a.last_success ? "ok" : "never";
        var label = { failed: "failed", stale: "stale", ok: "fresh", never: "never run" }[state];
        var ok = a.last_success;
        var m = a.metadata || {};
        var meta = {
          telegram_data: m.messages != null ? m.channels + " channels, " + m.messages + " messages, " + m.photos + " photos" : "",
          raw_database: m.rows != null ? m.rows + " rows, " + m.rejects + " rejected" : "database unreachable",
          data_warehouse: m.rows_per_mart ? (m.rows_per_mart.fct_messages || 0) + " messages, " +
            (m.rows_per_mart.fct_product_prices || 0) + " prices; " + (m.tests_passed == null ? "?" : m.tests_passed) + " tests passed" : "",
          image_enrichment: m.photos_analysed != null ? m.photos_analysed + " photos analysed" +
            (m.model ? " (" + m.model + ")" : "") : ""
        }[a.asset];
        return "<tr data-asset='" + esc(a.asset) + "'><td>" + esc(a.asset) + "</td><td><span class='badge " + state + "'>" +
          label + "</span></td><td>" + (ok ? esc((ok.at || "time unknown").slice(0, 16).replace("T", " ")) + " UTC <span class='note'>" +
          esc(ago(a.age_hours)) + ", job " + esc(ok.job) + "</span>" : "–") + "</td><td>" +
          (a.last_failure ? "<span class='error'>" + esc((a.last_failure.at || "time unknown").slice(0, 16).replace("T", " ")) + ": " +
            esc(String(a.last_failure.error).slice(0, 160)) + "</span>" : "–") + "</td><td>" + esc(meta) +
          (a.stale_reasons.length ? "<br><span class='note'>" + esc(a.stale_reasons.join("; ")) + "</span>" : "") + "</td></tr>";
      }).join("");
      document.getElementById("health").innerHTML =
        (s.database.reachable ? "" : "<p class='error'>Database unreachable: " + esc(s.database.error) + "</p>") +
        "<table id='health-table'><tr><th>asset</th><th>state</th><th>last success</th><th>last failure</th><th>what it holds</th></tr>" +
        rows + "</table>";
    }).catch(function (e) { showError("health", e); });
  }

  // --- top products: range bars with the median ---------------------------------------------------------
  function topProducts() {
    var channel = document.getElementById("top-channel").value;
    var group = document.getElementById("top-group").value;
    var kindBox = document.getElementById("top-kind");
    if (group === "generic") kindBox.value = "";  // generics are medicines
    kindBox.disabled = group === "generic";
    var kind = kindBox.value;
    var q = "/api/reports/top-products?limit=15&group=" + group + (channel ? "&channel=" + encodeURIComponent(channel) : "") +
      (kind ? "&kind=" + encodeURIComponent(kind) : "");
    return api(q).then(function (r) {
      var items = r.items.slice().reverse();  // largest at the top of a category y axis
      var names = items.map(function (p) { return p.display_name; });
      chart("chart-top").setOption({
        animation: false,
        grid: { left: 8, right: 40, top: 36, bottom: 46, containLabel: true },
        legend: { top: 0, data: ["price range (min – max)", "median price"] },
        tooltip: { trigger: "axis", axisPointer: { type: "shadow" }, formatter: function (ps) {
          var p = items[ps[0].dataIndex];
          var what = p.generic_name && group === "product" ? "<br>generic: " + esc(p.generic_name) : "";
          var many = group === "generic" ? "<br>" + p.products + " products" : "";
          return "<b>" + esc(p.display_name) + "</b> <i>(" + esc(p.product_kind.replace("_", " ")) + ")</i>" + what + many +
            "<br>" + p.mentions + " mentions in " + esc(p.channels.join(", ")) +
            "<br>min " + birr(p.min_price_birr) + "<br>median " + birr(p.median_price_birr) + "<br>max " + birr(p.max_price_birr);
        } },
        xAxis: { type: "value", name: "Price (ETB)", nameLocation: "middle", nameGap: 28,
                 axisLabel: { formatter: function (v) { return v.toLocaleString("en-US"); } } },
        yAxis: { type: "category", data: names, axisLabel: { width: 170, overflow: "truncate" } },
        series: [
          { name: "base", type: "bar", stack: "range", silent: true, itemStyle: { color: "transparent" },
            data: items.map(function (p) { return p.min_price_birr; }), tooltip: { show: false } },
          { name: "price range (min – max)", type: "bar", stack: "range", barWidth: 10, itemStyle: { color: "#93c5fd" },
            data: items.map(function (p) { return Math.max(p.max_price_birr - p.min_price_birr, 0.0001 * p.max_price_birr + 0.5); }) },
          { name: "median price", type: "scatter", symbolSize: 10, itemStyle: { color: "#1d4ed8" },
            data: items.map(function (p) { return p.median_price_birr; }) }
        ]
      }, true);
      chart("chart-top").off("click");
      chart("chart-top").on("click", function (e) {
        var p = items[e.dataIndex];
        if (p) { choose(document.getElementById("product"), p.product, p.display_name); priceHistory(); }
      });
      return r;
    }).catch(function (e) { showError("chart-top", e); });
  }

  // select value in a <select>, adding it when the list lacks it (a generic, or a product past the first 50)
  function choose(select, value, label) {
    var found = Array.prototype.some.call(select.options, function (o) { return o.value === value; });
    if (!found) { var o = document.createElement("option"); o.value = value; o.textContent = label; select.appendChild(o); }
    select.value = value;
  }

  // --- a product's (or a generic's) price history -----------------------------------------------------
  function priceHistory() {
    var product = document.getElementById("product").value;
    if (!product) return Promise.resolve();
    return api("/api/products/" + encodeURIComponent(product) + "/prices").then(function (r) {
      var byChannel = {};
      r.points.forEach(function (pt) { (byChannel[pt.channel] = byChannel[pt.channel] || []).push(pt); });
      var series = Object.keys(byChannel).sort().map(function (ch, i) {
        return { name: ch, type: "line", showSymbol: true, symbolSize: 7, color: COLORS[i % COLORS.length],
                 data: byChannel[ch].map(function (pt) { return { value: [pt.date, pt.median_price_birr], pt: pt }; }) };
      });
      chart("chart-prices").setOption({
        animation: false,
        title: { text: r.display_name, left: "center", top: 0, textStyle: { fontSize: 13 } },
        legend: { top: 22, type: "scroll" },
        grid: { left: 8, right: 44, top: 60, bottom: 46, containLabel: true },
        tooltip: { trigger: "item", formatter: function (p) {
          var pt = p.data.pt;
          return "<b>" + esc(p.seriesName) + "</b>, " + esc(pt.date) + "<br>" + pt.mentions + " mention(s)<br>median " +
            birr(pt.median_price_birr) + "<br>range " + birr(pt.min_price_birr) + " – " + birr(pt.max_price_birr);
        } },
        xAxis: { type: "time", name: "Date (UTC)", nameLocation: "middle", nameGap: 28, minInterval: DAY,
                 axisLabel: { formatter: "{yyyy}-{MM}-{dd}", hideOverlap: true } },
        yAxis: { type: "value", name: "Median price (ETB)", scale: true, nameTextStyle: { align: "left" },
                 axisLabel: { formatter: function (v) { return v.toLocaleString("en-US"); } } },
        series: series
      }, true);
    }).catch(function (e) { showError("chart-prices", e); });
  }

  // --- channel activity ---------------------------------------------------------------------------------
  function activity() {
    var ch = document.getElementById("activity-channel").value;
    var g = document.getElementById("granularity").value;
    if (!ch) return Promise.resolve();
    return api("/api/channels/" + encodeURIComponent(ch) + "/activity?granularity=" + g).then(function (r) {
      var ps = r.periods;
      chart("chart-activity").setOption({
        animation: false,
        legend: { top: 0, data: ["posts", "prices posted", "photo share (%)"] },
        grid: { left: 8, right: 8, top: 40, bottom: 46, containLabel: true },
        tooltip: { trigger: "axis" },
        xAxis: { type: "time", name: (g === "week" ? "Week starting (UTC)" : "Day (UTC)"), nameLocation: "middle", nameGap: 28,
                 minInterval: g === "week" ? 7 * DAY : DAY, axisLabel: { formatter: "{yyyy}-{MM}-{dd}", hideOverlap: true } },
        yAxis: [{ type: "value", name: "Posts / prices (count)", minInterval: 1, nameTextStyle: { align: "left" } },
                { type: "value", name: "Photo share (%)", min: 0, max: 100, splitLine: { show: false }, nameTextStyle: { align: "right" } }],
        series: [
          { name: "posts", type: "bar", barMaxWidth: 28, color: "#2563eb", data: ps.map(function (p) { return [p.period_start, p.posts]; }) },
          { name: "prices posted", type: "bar", barMaxWidth: 28, color: "#f59e0b", data: ps.map(function (p) { return [p.period_start, p.prices_posted]; }) },
          { name: "photo share (%)", type: "line", yAxisIndex: 1, color: "#16a34a", showSymbol: ps.length < 60,
            data: ps.map(function (p) { return [p.period_start, Math.round(p.photo_share * 1000) / 10]; }) }
        ]
      }, true);
    }).catch(function (e) { showError("chart-activity", e); });
  }

  // --- visual content --------------------------------------------------------------------------------
  function visual() {
    return api("/api/reports/visual-content").then(function (r) {
      var chans = r.channels.slice().reverse();
      chart("chart-visual").setOption({
        animation: false,
        legend: { top: 0 },
        grid: { left: 8, right: 24, top: 36, bottom: 46, containLabel: true },
        tooltip: { trigger: "axis", axisPointer: { type: "shadow" }, formatter: function (ps) {
          var c = chans[ps[0].dataIndex];
          return "<b>" + esc(c.channel) + "</b><br>" + c.photos_analysed + " photos analysed, " +
            Math.round(c.photo_share * 100) + "% of posts have a photo<br>" + r.categories.map(function (k) {
              return esc(k) + ": " + c.categories[k] + " (" + Math.round(c.category_share[k] * 100) + "%)"; }).join("<br>");
        } },
        xAxis: { type: "value", name: "Share of analysed photos (%)", nameLocation: "middle", nameGap: 28, max: 100 },
        yAxis: { type: "category", data: chans.map(function (c) { return c.channel; }) },
        series: r.categories.map(function (k) {
          return { name: k, type: "bar", stack: "share", color: CATEGORY_COLORS[k],
                   data: chans.map(function (c) { return Math.round(c.category_share[k] * 1000) / 10; }) };
        })
      }, true);
    }).catch(function (e) { showError("chart-visual", e); });
  }

  function start() {
    var jobs = [health(), visual()];
    jobs.push(api("/api/channels?limit=500").then(function (r) {
      var names = r.items.map(function (c) { return c.channel; });
      fill(document.getElementById("activity-channel"), names);
      var first = r.items[0];  // weeks for a long history, days for a short one
      if (first) {
        var span = (new Date(first.last_post_at) - new Date(first.first_post_at)) / DAY;
        document.getElementById("granularity").value = span > 90 ? "week" : "day";
      }
      var top = document.getElementById("top-channel");
      names.forEach(function (n) { var o = document.createElement("option"); o.value = n; o.textContent = n; top.appendChild(o); });
      return activity();
    }).catch(function (e) { showError("chart-activity", e); }));
    jobs.push(api("/api/reports/top-products?limit=50").then(function (r) {
      fill(document.getElementById("product"), r.items.map(function (p) { return p.product; }),
           r.items.map(function (p) { return p.display_name + " (" + p.mentions + ")"; }));
      return Promise.all([topProducts(), priceHistory()]);
    }).catch(function (e) { showError("chart-top", e); }));
    Promise.all(jobs).then(function () {
      document.body.setAttribute("data-state", window.__dashboard.errors.length ? "error" : "ready");
    });
  }

  document.getElementById("top-channel").addEventListener("change", topProducts);
  document.getElementById("top-group").addEventListener("change", topProducts);
  document.getElementById("top-kind").addEventListener("change", topProducts);
  document.getElementById("product").addEventListener("change", priceHistory);
  document.getElementById("activity-channel").addEventListener("change", activity);
  document.getElementById("granularity").addEventListener("change", activity);
  document.getElementById("api-key-save").addEventListener("click", function () {
    sessionStorage.setItem("medical_etl_api_key", document.getElementById("api-key").value.trim());
    location.reload();
  });
  start();
})();
