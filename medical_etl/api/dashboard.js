/* medical_etl dashboard: reads the API, draws with Apache ECharts (served by the package, SVG renderer).
   The view (channel, dates, product, grouping, search) lives in the address, so a copied link opens the
   same view; the API key lives in sessionStorage only, never in the address. */
(function () {
  "use strict";
  var charts = {};
  var DAY = 86400000;
  // urls: the API request behind each chart as drawn (its download asks the same with format=csv)
  window.__dashboard = { charts: charts, errors: [], loaded: {}, urls: {}, downloads: [] };
  var COLORS = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#4b5563", "#db2777"];
  var CATEGORY_COLORS = { promotional: "#dc2626", product_display: "#2563eb", lifestyle: "#16a34a", other: "#9ca3af" };
  var GROUP_LABELS = { with_photo: "with a photo", without_photo: "without a photo", promotional: "promotional",
                       product_display: "product display", lifestyle: "lifestyle", other: "other photo" };
  var STATE_KEYS = ["channel", "range", "from", "to", "product", "group", "kind", "granularity", "q"];
  var $ = function (id) { return document.getElementById(id); };
  var newestDay = null;  // the newest post's UTC day: where the presets end
  var searchCursor = null;

  function key() { return sessionStorage.getItem("medical_etl_api_key") || ""; }

  function request(path, accept) {
    var headers = {};
    if (key()) headers.Authorization = "Bearer " + key();
    if (accept) headers.Accept = accept;
    return fetch(path, { headers: headers }).then(function (r) {
      if (r.status === 401) { $("auth").style.display = "flex"; }
      return r;
    });
  }

  function api(path) {
    return request(path).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
        return body;
      });
    });
  }

  function query(params) {
    var parts = [];
    Object.keys(params).forEach(function (k) {
      var v = params[k];
      if (v !== null && v !== undefined && v !== "") parts.push(k + "=" + encodeURIComponent(v));
    });
    return parts.length ? "?" + parts.join("&") : "";
  }

  function chart(id) {
    if (!charts[id]) {
      charts[id] = echarts.init($(id), null, { renderer: "svg" });
      window.addEventListener("resize", function () { charts[id].resize(); });
    }
    return charts[id];
  }
  function narrow() { return document.documentElement.clientWidth < 640; }

  function clearError(id) {
    var el = $(id), prev = el.previousElementSibling;
    if (prev && prev.className === "error") prev.parentNode.removeChild(prev);
  }
  function showError(id, err) {
    window.__dashboard.errors.push(id + ": " + err.message);
    clearError(id);
    var el = $(id);
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
  // select value in a <select>, adding it when the list lacks it (a generic, or a product past the first 50)
  function choose(select, value, label) {
    var found = Array.prototype.some.call(select.options, function (o) { return o.value === value; });
    if (!found) { var o = document.createElement("option"); o.value = value; o.textContent = label || value; select.appendChild(o); }
    select.value = value;
  }

  // --- the view's state: the address <-> the controls --------------------------------------------------
  function readState() {
    var p = new URLSearchParams(location.search), s = {};
    STATE_KEYS.forEach(function (k) { s[k] = p.get(k) || ""; });
    if (p.get("from") || p.get("to")) s.range = s.range || "custom";
    return s;
  }
  function writeState() {
    var s = {
      channel: $("channel").value, range: $("range").value === "all" ? "" : $("range").value,
      from: $("range").value === "custom" ? $("from").value : "", to: $("range").value === "custom" ? $("to").value : "",
      product: $("product").value, group: $("top-group").value === "product" ? "" : $("top-group").value,
      kind: $("top-kind").value, granularity: $("granularity").value === "day" ? "" : $("granularity").value,
      q: $("search-q").value.trim()
    };
    history.replaceState(null, "", location.pathname + query(s));
  }

  function isoDay(ms) { return new Date(ms).toISOString().slice(0, 10); }
  // the window every chart reads: a preset ends on the newest post; custom is the two date inputs
  function dates() {
    var r = $("range").value;
    if (r === "custom") return { since: $("from").value || null, until: $("to").value || null };
    if (r === "all" || !newestDay) return { since: null, until: null };
    var end = Date.parse(newestDay + "T00:00:00Z");
    return { since: isoDay(end - (Number(r) - 1) * DAY), until: newestDay };
  }
  function showDates() {
    var d = dates(), custom = $("range").value === "custom";
    if (!custom) { $("from").value = d.since || ""; $("to").value = d.until || ""; }
    $("range-note").textContent = "Days are UTC" + (newestDay ? "; the presets end on the newest post (" + newestDay + ")." : ".");
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
        return "<tr data-asset='" + esc(a.asset) + "'><td data-label='asset'>" + esc(a.asset) + "</td><td data-label='state'><span class='badge " + state + "'>" +
          label + "</span></td><td data-label='last success'>" + (ok ? esc((ok.at || "time unknown").slice(0, 16).replace("T", " ")) + " UTC <span class='note'>" +
          esc(ago(a.age_hours)) + ", job " + esc(ok.job) + "</span>" : "–") + "</td><td data-label='last failure'>" +
          (a.last_failure ? "<span class='error'>" + esc((a.last_failure.at || "time unknown").slice(0, 16).replace("T", " ")) + ": " +
            esc(String(a.last_failure.error).slice(0, 160)) + "</span>" : "–") + "</td><td data-label='holds'>" + esc(meta) +
          (a.stale_reasons.length ? "<br><span class='note'>" + esc(a.stale_reasons.join("; ")) + "</span>" : "") + "</td></tr>";
      }).join("");
      var h = s.database_health;
      var db = h ? "<p class='note' id='db-health'>Database " + esc((h.database_size_bytes / 1e6).toFixed(1)) + " MB, " +
        esc(h.connections) + " of " + esc(h.max_connections) + " connections (recorded by job " + esc(h.job) + " at " +
        esc(String(h.recorded_at || "").slice(0, 16).replace("T", " ")) + " UTC)</p>" : "";
      $("health").innerHTML =
        (s.database.reachable ? "" : "<p class='error'>Database unreachable: " + esc(s.database.error) + "</p>") +
        "<table id='health-table'><tr class='header'><th>asset</th><th>state</th><th>last success</th><th>last failure</th><th>what it holds</th></tr>" +
        rows + "</table>" + db;
    }).catch(function (e) { showError("health", e); });
  }

  // --- top products: range bars with the median ---------------------------------------------------------
  function topProducts() {
    var group = $("top-group").value;
    var kindBox = $("top-kind");
    if (group === "generic") kindBox.value = "";  // generics are medicines
    kindBox.disabled = group === "generic";
    var d = dates();
    var url = "/api/reports/top-products" + query({ limit: 15, group: group, channel: $("channel").value,
                                                     kind: kindBox.value, since: d.since, until: d.until });
    return api(url).then(function (r) {
      clearError("chart-top");
      window.__dashboard.urls["chart-top"] = url;
      var items = r.items.slice().reverse();  // largest at the top of a category y axis
      var names = items.map(function (p) { return p.display_name; });
      chart("chart-top").setOption({
        animation: false,
        grid: { left: 8, right: narrow() ? 16 : 40, top: 36, bottom: 46, containLabel: true },
        legend: { top: 0, type: "scroll", data: ["price range (min – max)", "median price"] },
        tooltip: { trigger: "axis", axisPointer: { type: "shadow" }, confine: true, formatter: function (ps) {
          var p = items[ps[0].dataIndex];
          var what = p.generic_name && group === "product" ? "<br>generic: " + esc(p.generic_name) : "";
          var many = group === "generic" ? "<br>" + p.products + " products" : "";
          return "<b>" + esc(p.display_name) + "</b> <i>(" + esc(p.product_kind.replace("_", " ")) + ")</i>" + what + many +
            "<br>" + p.mentions + " mentions in " + esc(p.channels.join(", ")) +
            "<br>min " + birr(p.min_price_birr) + "<br>median " + birr(p.median_price_birr) + "<br>max " + birr(p.max_price_birr);
        } },
        xAxis: { type: "value", name: "Price (ETB)", nameLocation: "middle", nameGap: 28,
                 axisLabel: { hideOverlap: true, formatter: function (v) { return v.toLocaleString("en-US"); } } },
        yAxis: { type: "category", data: names, axisLabel: { width: narrow() ? 96 : 170, overflow: "truncate" } },
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
        if (p) { choose($("product"), p.product, p.display_name); writeState(); priceHistory(); }
      });
      return r;
    }).catch(function (e) { showError("chart-top", e); });
  }

  // --- a product's (or a generic's) price history -----------------------------------------------------
  function priceHistory() {
    var product = $("product").value;
    if (!product) return Promise.resolve();
    var d = dates();
    var url = "/api/products/" + encodeURIComponent(product) + "/prices" +
      query({ channel: $("channel").value, since: d.since, until: d.until });
    return api(url).then(function (r) {
      clearError("chart-prices");
      window.__dashboard.urls["chart-prices"] = url;
      var byChannel = {};
      r.points.forEach(function (pt) { (byChannel[pt.channel] = byChannel[pt.channel] || []).push(pt); });
      var series = Object.keys(byChannel).sort().map(function (ch, i) {
        return { name: ch, type: "line", showSymbol: true, symbolSize: 7, color: COLORS[i % COLORS.length],
                 data: byChannel[ch].map(function (pt) { return { value: [pt.date, pt.median_price_birr], pt: pt }; }) };
      });
      chart("chart-prices").setOption({
        animation: false,
        title: { text: r.display_name + (r.points.length ? "" : " (no prices in these days)"), left: "center", top: 0,
                 textStyle: { fontSize: 13, width: narrow() ? 300 : 520, overflow: "truncate" } },
        legend: { top: 22, type: "scroll" },
        grid: { left: 8, right: narrow() ? 16 : 44, top: 78, bottom: 46, containLabel: true },
        tooltip: { trigger: "item", confine: true, formatter: function (p) {
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

  // --- channel activity: the chosen channel, or the most active one -----------------------------------
  var channelNames = [];
  function activity() {
    var ch = $("channel").value || channelNames[0];
    var g = $("granularity").value;
    if (!ch) return Promise.resolve();
    $("activity-title").textContent = "Channel activity: " + ch;
    $("activity-note").textContent = $("channel").value ? "" : "the most active channel (choose one above)";
    var d = dates();
    var url = "/api/channels/" + encodeURIComponent(ch) + "/activity" + query({ granularity: g, since: d.since, until: d.until });
    return api(url).then(function (r) {
      clearError("chart-activity");
      window.__dashboard.urls["chart-activity"] = url;
      var ps = r.periods;
      chart("chart-activity").setOption({
        animation: false,
        legend: { top: 0, type: "scroll", data: ["posts", "prices posted", "photo share (%)"] },
        grid: { left: 8, right: 8, top: 58, bottom: 46, containLabel: true },
        tooltip: { trigger: "axis", confine: true },
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

  // --- visual content: categories per channel, and the views by kind of image ---------------------------
  function visual() {
    var d = dates();
    var url = "/api/reports/visual-content" + query({ since: d.since, until: d.until });
    return api(url).then(function (r) {
      clearError("chart-visual");
      window.__dashboard.urls["chart-visual"] = url;
      window.__dashboard.urls["chart-engagement"] = url;
      var chans = r.channels.slice().reverse();
      chart("chart-visual").setOption({
        animation: false,
        legend: { top: 0, type: "scroll" },
        grid: { left: 8, right: 24, top: 36, bottom: 46, containLabel: true },
        tooltip: { trigger: "axis", axisPointer: { type: "shadow" }, confine: true, formatter: function (ps) {
          var c = chans[ps[0].dataIndex];
          return "<b>" + esc(c.channel) + "</b><br>" + c.photos_analysed + " photos analysed, " +
            Math.round(c.photo_share * 100) + "% of posts have a photo<br>" + r.categories.map(function (k) {
              return esc(k) + ": " + c.categories[k] + " (" + Math.round(c.category_share[k] * 100) + "%)"; }).join("<br>");
        } },
        xAxis: { type: "value", name: "Share of analysed photos (%)", nameLocation: "middle", nameGap: 28, max: 100 },
        yAxis: { type: "category", data: chans.map(function (c) { return c.channel; }),
                 axisLabel: { width: narrow() ? 96 : 170, overflow: "truncate" } },
        series: r.categories.map(function (k) {
          return { name: k, type: "bar", stack: "share", color: CATEGORY_COLORS[k],
                   data: chans.map(function (c) { return Math.round(c.category_share[k] * 1000) / 10; }) };
        })
      }, true);
      engagement(r);
    }).catch(function (e) { showError("chart-visual", e); });
  }

  function engagement(r) {
    var ch = $("channel").value;
    var own = ch ? r.channels.filter(function (c) { return c.channel === ch; })[0] : null;
    var e = own ? own.engagement : r.engagement;
    var groups = Object.keys(GROUP_LABELS);
    $("engagement-title").textContent = "Which images draw views: " + (ch || "all channels");
    chart("chart-engagement").setOption({
      animation: false,
      legend: { top: 0, type: "scroll", data: ["median views", "average views"] },
      grid: { left: 8, right: 16, top: 58, bottom: narrow() ? 24 : 46, containLabel: true },
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" }, confine: true, formatter: function (ps) {
        var g = groups[ps[0].dataIndex], x = e[g];
        return "<b>posts " + esc(GROUP_LABELS[g]) + "</b><br>" + x.posts + " posts<br>median " +
          (x.median_views == null ? "–" : x.median_views.toLocaleString("en-US")) + " views<br>average " +
          (x.avg_views == null ? "–" : x.avg_views.toLocaleString("en-US")) + " views";
      } },
      xAxis: { type: "category", data: groups.map(function (g) { return GROUP_LABELS[g]; }), name: "Posts by image",
               nameLocation: "middle", nameGap: narrow() ? 70 : 28,
               axisLabel: { interval: 0, rotate: narrow() ? 35 : 0, hideOverlap: false } },
      yAxis: { type: "value", name: "Views per post", nameTextStyle: { align: "left" },
               axisLabel: { formatter: function (v) { return v.toLocaleString("en-US"); } } },
      series: [
        { name: "median views", type: "bar", color: "#1d4ed8", data: groups.map(function (g) { return e[g].median_views; }) },
        { name: "average views", type: "bar", color: "#93c5fd", data: groups.map(function (g) { return e[g].avg_views; }) }
      ]
    }, true);
  }

  // --- search ----------------------------------------------------------------------------------------
  function snippet(text) {  // the API marks matches with « »: marks, built as nodes (the text stays text)
    var out = document.createDocumentFragment();
    String(text).split(/(«[^«»]*»)/).forEach(function (part) {
      if (part.charAt(0) === "«" && part.charAt(part.length - 1) === "»") {
        var m = document.createElement("mark"); m.textContent = part.slice(1, -1); out.appendChild(m);
      } else if (part) {
        out.appendChild(document.createTextNode(part));
      }
    });
    return out;
  }
  function search(more) {
    var q = $("search-q").value.trim();
    var list = $("search-results");
    if (!more) { list.innerHTML = ""; searchCursor = null; }
    $("search-more").hidden = true;
    if (!q) { $("search-summary").textContent = ""; $("download-search").disabled = true; return Promise.resolve(); }
    var url = "/api/search/messages" + query({ query: q, channel: $("channel").value, limit: 20, cursor: more ? searchCursor : null });
    return api(url).then(function (r) {
      window.__dashboard.urls.search = url;
      $("download-search").disabled = !r.items.length;
      r.items.forEach(function (h) {
        var li = document.createElement("li"), meta = document.createElement("div"), body = document.createElement("div");
        meta.className = "meta";
        meta.textContent = h.channel + " · post " + h.message_id + " · " + String(h.message_date).slice(0, 16).replace("T", " ") +
          " UTC · " + h.views + " views";
        body.appendChild(snippet(h.snippet));
        li.appendChild(meta); li.appendChild(body); list.appendChild(li);
      });
      searchCursor = r.next_cursor;
      $("search-more").hidden = !r.next_cursor;
      $("search-summary").textContent = r.total === 0 ? "No post matches." :
        (r.total_exact ? r.total : "over " + r.total) + " posts match" + (r.total_exact ? "" : " (the newest " + r.ranked + " ranked)") +
        "; showing " + list.children.length + ", best match first.";
    }).catch(function (e) { showError("search-results", e); });
  }

  // --- downloads: the CSV of what a chart shows (fetched with the key, saved by the browser) -----------
  function download(chartId) {
    var url = window.__dashboard.urls[chartId];
    if (!url) return Promise.resolve();
    var csv = url + (url.indexOf("?") < 0 ? "?" : "&") + "format=csv";
    return request(csv).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      var name = (/filename="([^"]+)"/.exec(r.headers.get("Content-Disposition") || "") || [])[1] || "medical_etl.csv";
      return r.blob().then(function (blob) {
        window.__dashboard.downloads.push({ chart: chartId, url: csv, filename: name, bytes: blob.size });
        var a = document.createElement("a");
        a.href = URL.createObjectURL(blob); a.download = name;
        document.body.appendChild(a); a.click(); document.body.removeChild(a);
        setTimeout(function () { URL.revokeObjectURL(a.href); }, 10000);
      });
    }).catch(function (e) { showError(chartId === "search" ? "search-results" : chartId, e); });
  }

  // --- wiring ----------------------------------------------------------------------------------------
  function redrawAll() {
    writeState();
    showDates();
    return Promise.all([topProducts(), priceHistory(), activity(), visual()]);
  }

  function start() {
    var s = readState();
    if (s.range) $("range").value = ["7", "30", "90", "custom"].indexOf(s.range) >= 0 ? s.range : "all";
    if (s.range === "custom") { $("from").value = s.from; $("to").value = s.to; }
    if (s.group) $("top-group").value = s.group;
    if (s.kind) $("top-kind").value = s.kind;
    if (s.granularity) $("granularity").value = s.granularity;
    if (s.q) $("search-q").value = s.q;
    var jobs = [health()];
    var channelsReady = api("/api/channels?limit=500").then(function (r) {
      channelNames = r.items.map(function (c) { return c.channel; });
      channelNames.forEach(function (n) { var o = document.createElement("option"); o.value = n; o.textContent = n; $("channel").appendChild(o); });
      if (s.channel) choose($("channel"), s.channel);
      var last = r.items.map(function (c) { return c.last_post_at; }).sort().pop();
      newestDay = last ? String(last).slice(0, 10) : null;
      var first = r.items[0];  // weeks for a long history, days for a short one
      if (first && !s.granularity) {
        var span = (new Date(first.last_post_at) - new Date(first.first_post_at)) / DAY;
        $("granularity").value = span > 90 ? "week" : "day";
      }
      showDates();
    }).catch(function (e) { showError("chart-activity", e); });
    var productsReady = api("/api/reports/top-products?limit=50").then(function (r) {
      fill($("product"), r.items.map(function (p) { return p.product; }),
           r.items.map(function (p) { return p.display_name + " (" + p.mentions + ")"; }));
      if (s.product) choose($("product"), s.product);
    }).catch(function (e) { showError("chart-top", e); });
    var ready = Promise.all([channelsReady, productsReady]);
    jobs.push(ready.then(redrawAll));
    if (s.q) jobs.push(ready.then(function () { return search(false); }));  // within the link's channel
    Promise.all(jobs).then(function () {
      document.body.setAttribute("data-state", window.__dashboard.errors.length ? "error" : "ready");
    });
  }

  $("channel").addEventListener("change", function () { redrawAll(); if ($("search-q").value.trim()) search(false); });
  $("range").addEventListener("change", redrawAll);
  ["from", "to"].forEach(function (id) {
    $(id).addEventListener("change", function () { $("range").value = "custom"; redrawAll(); });
  });
  $("top-group").addEventListener("change", function () { writeState(); topProducts(); });
  $("top-kind").addEventListener("change", function () { writeState(); topProducts(); });
  $("product").addEventListener("change", function () { writeState(); priceHistory(); });
  $("granularity").addEventListener("change", function () { writeState(); activity(); });
  $("search-form").addEventListener("submit", function (e) { e.preventDefault(); writeState(); search(false); });
  $("search-more").addEventListener("click", function () { search(true); });
  Array.prototype.forEach.call(document.querySelectorAll("button.download"), function (b) {
    b.addEventListener("click", function () { download(b.getAttribute("data-chart")); });
  });
  $("api-key-save").addEventListener("click", function () {
    sessionStorage.setItem("medical_etl_api_key", $("api-key").value.trim());
    location.reload();
  });
  start();
})();
