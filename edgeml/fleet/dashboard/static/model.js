/* Model page: labelled accuracy (or MAE) over time beside the holdout's, polled. */
"use strict";
(function () {
  const E = window.edgeml;
  const m = E.main.dataset;
  const div = document.getElementById("chart-accuracy");
  const chart = E.timeChart(div, ["labelled", "holdout"], { colors: ["#1f77b4", "#7f7f7f"] });
  function draw(data) {
    const a = data.accuracy;
    chart.setData([a.t, a.value, a.t.map(function () { return a.holdout; })]);
    div.dataset.points = String(a.t.length);
    document.body.dataset.ready = "1";
  }
  E.resizeAll([chart]);
  // the heat map comes with the data: on a large fleet it costs a pass over the window,
  // so this page polls every 30 s
  E.poll(function () {
    return E.fetchJSON("/api/model?" + E.query({ name: m.name, version: m.version })).then(draw);
  }, 30000);
})();
