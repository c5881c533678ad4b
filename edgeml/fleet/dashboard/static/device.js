/* Device page: time series, drift per feature and a feature's histogram over its
   reference, from /api/device/series and /api/device/histogram, polled. */
"use strict";
(function () {
  const E = window.edgeml;
  const m = E.main.dataset;
  const who = { fleet: m.fleet, device: m.device };
  const features = JSON.parse(m.features || "[]");
  const select = document.getElementById("hist-feature");
  const caption = document.getElementById("hist-caption");
  const histDiv = document.getElementById("chart-hist");
  const charts = {};
  const CHARTS = [
    ["requests", ["requests/s", "errors"], function (d) { return [d.requests_per_s, d.errors]; }],
    ["latency", ["p50", "p95", "p99"], function (d) { return [d.p50_ms, d.p95_ms, d.p99_ms]; }],
    ["rows", ["rows"], function (d) { return [d.rows]; }],
    ["rss", ["RSS MiB"], function (d) { return [d.rss_mb]; }],
    ["cpu", ["CPU %"], function (d) { return [d.cpu_percent]; }],
    ["temp", ["°C"], function (d) { return [d.temperature_c]; }],
  ];
  const driftNames = features.map(function (f) { return f.name; });
  CHARTS.forEach(function (c) {
    charts[c[0]] = E.timeChart(document.getElementById("chart-" + c[0]), c[1]);
  });
  if (driftNames.length) {
    charts.drift = E.timeChart(document.getElementById("chart-drift"), driftNames, { height: 240 });
  }
  let hist = null;
  let histFeature = null;

  function drawSeries(d) {
    CHARTS.forEach(function (c) {
      const cols = c[2](d);
      const div = document.getElementById("chart-" + c[0]);
      charts[c[0]].setData([d.t].concat(cols));
      div.dataset.points = String(d.t.length);
      const none = cols.every(function (col) { return col.every(function (v) { return v === null; }); });
      let note = div.parentElement.querySelector(".nodata");
      if (none && !note) {
        note = E.el("span", "nodata muted", " · not reported by this device");
        div.parentElement.querySelector("figcaption").appendChild(note);
      } else if (!none && note) {
        note.remove();
      }
    });
    if (charts.drift) {
      charts.drift.setData([d.t].concat(driftNames.map(function (n) {
        return d.drift[n] || d.t.map(function () { return null; });
      })));
      document.getElementById("chart-drift").dataset.points = String(d.t.length);
    }
  }

  function histChart(h) {
    const n = h.labels.length;
    const idx = h.labels.map(function (_, i) { return i; });
    const bars = function (align) { return uPlot.paths.bars({ size: [0.42, Infinity], align: align }); };
    return new uPlot({
      width: Math.max(histDiv.clientWidth - 8, 300), height: 240,
      scales: { x: { time: false, range: function () { return [-0.6, n - 0.4]; } },
        y: { range: function (u, lo, hi) { return [0, Math.max(hi, 0.05) * 1.1]; } } },
      series: [{ label: "bin", value: function (u, i) { return i === null ? "" : h.labels[i]; } },
        { label: "reference", stroke: "#7f7f7f", fill: "rgba(127,127,127,0.45)", paths: bars(-1),
          points: { show: false }, value: function (u, v) { return E.pct(v); } },
        { label: "live", stroke: "#1f77b4", fill: "rgba(31,119,180,0.75)", paths: bars(1),
          points: { show: false }, value: function (u, v) { return E.pct(v); } }],
      axes: [{ splits: function () { return idx; },
        values: function (u, splits) { return splits.map(function (i) { return h.labels[i] || ""; }); } },
      { size: 56, values: function (u, splits) { return splits.map(function (v) { return (100 * v).toFixed(0) + "%"; }); } }],
    }, [idx, h.reference, h.live], histDiv);
  }

  function drawHist(h) {
    if (!hist || histFeature !== h.feature || hist.data[0].length !== h.labels.length) {
      if (hist) { hist.destroy(); }
      hist = histChart(h);
      histFeature = h.feature;
    } else {
      hist.setData([hist.data[0], h.reference, h.live]);
    }
    histDiv.dataset.feature = h.feature;
    histDiv.dataset.bins = String(h.labels.length);
    histDiv.dataset.score = h.score === null ? "" : String(h.score);
    caption.textContent = h.statistic.toUpperCase() + " " + E.num(h.score) + " over " + h.rows +
      " rows (" + h.windows + " windows, " + h.model + ")";
  }

  function loadHist() {
    if (!select.value) { return Promise.resolve(); }
    return E.fetchJSON("/api/device/histogram?" + E.query(Object.assign({ feature: select.value }, who)))
      .then(drawHist);
  }

  function refresh() {
    return Promise.all([
      E.fetchJSON("/api/device/series?" + E.query(who)).then(drawSeries),
      loadHist(),
    ]).then(function () { document.body.dataset.ready = "1"; });
  }

  select.addEventListener("change", function () {
    loadHist().catch(function (err) { console.warn("edgeml dashboard: " + err.message); });
  });
  E.resizeAll(Object.keys(charts).map(function (k) { return charts[k]; }));
  E.poll(refresh);
})();
