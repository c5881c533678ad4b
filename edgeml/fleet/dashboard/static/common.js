/* edgeml dashboard: helpers shared by the pages (fetch, polling, formatting, charts).
   Data comes from the JSON API or from data-* attributes; text goes in with textContent. */
"use strict";
window.edgeml = (function () {
  const main = document.getElementById("main");
  const liveDot = document.getElementById("live");
  const POLL = Number(main.dataset.poll) || 5000;
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
    "#17becf", "#7f7f7f", "#bcbd22"];

  function fetchJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } })
      .then(function (r) {
        return r.json().then(function (body) {
          if (!r.ok) { throw new Error((body.error && body.error.message) || String(r.status)); }
          return body;
        });
      });
  }

  function setLive(ok) {
    if (!liveDot) { return; }
    liveDot.classList.toggle("on", ok);
    liveDot.classList.toggle("err", !ok);
  }

  /* Call fn (returning a promise) now and every POLL ms; pauses while the tab is hidden. */
  function poll(fn, ms) {
    const every = ms || POLL;
    function tick() {
      if (document.hidden) { setTimeout(tick, every); return; }
      fn().then(function () { setLive(true); }, function (err) {
        setLive(false);
        console.warn("edgeml dashboard: " + err.message);
      }).finally(function () { setTimeout(tick, every); });
    }
    tick();
  }

  function num(v) {
    if (v === null || v === undefined || !isFinite(v)) { return "–"; }
    if (Math.abs(v) >= 1000) { return v.toFixed(0); }
    return String(Number(v.toPrecision(3)));
  }
  function pct(v) { return v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%"; }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = text; }
    return e;
  }

  function query(params) { return new URLSearchParams(params).toString(); }

  /* A uPlot time-series chart in div: names of the series after t. */
  function timeChart(div, names, opts) {
    const o = opts || {};
    const series = [{}].concat(names.map(function (n, i) {
      // points: uPlot's default, drawn while they fit (a lone window is a dot, not nothing)
      return { label: n, stroke: (o.colors || COLORS)[i % COLORS.length], width: 1.5,
        spanGaps: true };
    }));
    const empty = [[]].concat(names.map(function () { return []; }));
    return new uPlot({ width: Math.max(div.clientWidth - 8, 300), height: o.height || 200,
      series: series, scales: { x: { time: true } },
      axes: [{}, { size: 56 }], legend: { live: true } }, empty, div);
  }

  function resizeAll(charts) {
    window.addEventListener("resize", function () {
      charts.forEach(function (c) {
        if (c && c.root && c.root.parentElement) {
          c.setSize({ width: Math.max(c.root.parentElement.clientWidth - 8, 300), height: c.height });
        }
      });
    });
  }

  return { main: main, POLL: POLL, COLORS: COLORS, fetchJSON: fetchJSON, poll: poll, num: num,
    pct: pct, el: el, query: query, timeChart: timeChart, resizeAll: resizeAll };
})();
