/* Fleet page: every device from /api/fleet, sorted and filtered in the browser, polled.
   Rows are built with DOM calls into one fragment and swapped in at once (1,000 rows in a
   few tens of ms); every device-sent value goes in as text. */
"use strict";
(function () {
  const E = window.edgeml;
  const tbody = document.getElementById("device-rows");
  const shown = document.getElementById("shown");
  const inputs = { fleet: document.getElementById("f-fleet"), state: document.getElementById("f-state"),
    model: document.getElementById("f-model"), text: document.getElementById("f-text"),
    drifting: document.getElementById("f-drifting") };
  const heads = Array.prototype.slice.call(document.querySelectorAll("table.devices th[data-key]"));
  let rows = null;
  let sortKey = null;
  let sortDir = 1;

  function matches(r, f) {
    if (f.fleet && r.fleet !== f.fleet) { return false; }
    if (f.state && r.state !== f.state) { return false; }
    if (f.model && r.model !== f.model) { return false; }
    if (f.drifting && !r.drifting) { return false; }
    if (f.text) {
      const hay = [r.device, r.fleet, r.model, r.state, r.drift_feature].join(" ").toLowerCase();
      if (hay.indexOf(f.text) < 0) { return false; }
    }
    return true;
  }

  function compare(a, b) {
    const x = a[sortKey];
    const y = b[sortKey];
    if (x === y) { return 0; }
    if (x === null || x === undefined) { return 1; }
    if (y === null || y === undefined) { return -1; }
    if (typeof x === "number" && typeof y === "number") { return sortDir * (x - y); }
    return sortDir * String(x).localeCompare(String(y), undefined, { numeric: true });
  }

  function td(text, cls) { return E.el("td", cls, text); }

  function rowOf(r) {
    const tr = document.createElement("tr");
    tr.className = "state-" + (r.state || "unknown") + (r.drifting ? " drifting" : "") +
      (r.alerting ? " alerting" : "");
    const first = document.createElement("td");
    const a = E.el("a", null, r.device);
    a.href = "/device?" + E.query({ fleet: r.fleet, device: r.device });
    first.appendChild(a);
    tr.appendChild(first);
    tr.appendChild(td(r.fleet));
    const st = document.createElement("td");
    st.appendChild(E.el("span", "state", r.state || "?"));
    tr.appendChild(st);
    tr.appendChild(td(r.model || "–"));
    tr.appendChild(td(r.last_seen || "–", "time"));
    tr.appendChild(td(E.num(r.requests_per_s), "num"));
    tr.appendChild(td(E.num(r.p95_ms), "num"));
    tr.appendChild(td(E.pct(r.error_rate), "num"));
    tr.appendChild(td(r.drift_feature || "–"));
    tr.appendChild(td(r.drift_score === null ? "–" : r.drift_statistic + " " + E.num(r.drift_score), "num"));
    tr.appendChild(td(E.pct(r.accuracy_labelled), "num"));
    tr.appendChild(td(E.pct(r.accuracy_estimated), "num"));
    tr.appendChild(td(String(r.open_alerts), "num"));
    return tr;
  }

  function filters() {
    return { fleet: inputs.fleet.value, state: inputs.state.value, model: inputs.model.value,
      text: inputs.text.value.trim().toLowerCase(), drifting: inputs.drifting.checked };
  }

  function render() {
    if (rows === null) { return; }
    const f = filters();
    let list = rows.filter(function (r) { return matches(r, f); });
    if (sortKey) { list = list.slice().sort(compare); }
    const frag = document.createDocumentFragment();
    for (let i = 0; i < list.length; i++) { frag.appendChild(rowOf(list[i])); }
    tbody.replaceChildren(frag);
    shown.textContent = String(list.length);
  }

  function options(select, values) {
    const keep = select.value;
    const frag = document.createDocumentFragment();
    frag.appendChild(E.el("option", null, "all"));
    frag.firstChild.value = "";
    values.forEach(function (v) {
      const o = E.el("option", null, v);
      o.value = v;
      frag.appendChild(o);
    });
    select.replaceChildren(frag);
    select.value = values.indexOf(keep) >= 0 ? keep : "";
  }

  function update(data) {
    rows = data.devices;
    Object.keys(data.counts).forEach(function (k) {
      const n = document.getElementById("count-" + k);
      if (n) { n.textContent = String(data.counts[k]); }
    });
    options(inputs.fleet, data.fleets);
    options(inputs.state, data.states);
    options(inputs.model, data.models);
    const t0 = performance.now();
    render();
    if (!document.body.dataset.ready) {  // for bench/bench_dashboard.py: when rows first showed
      document.body.dataset.renderMs = String(Math.round(performance.now() - t0));
      document.body.dataset.readyMs = String(Math.round(performance.now()));
    }
    document.body.dataset.ready = "1";
  }

  ["fleet", "state", "model", "drifting"].forEach(function (k) {
    inputs[k].addEventListener("change", render);
  });
  inputs.text.addEventListener("input", render);
  document.getElementById("filters").addEventListener("submit", function (e) { e.preventDefault(); });
  heads.forEach(function (th) {
    th.addEventListener("click", function () {
      const key = th.dataset.key;
      sortDir = sortKey === key ? -sortDir : 1;
      sortKey = key;
      heads.forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(sortDir > 0 ? "asc" : "desc");
      render();
    });
  });
  E.poll(function () { return E.fetchJSON(E.main.dataset.api).then(update); });
})();
