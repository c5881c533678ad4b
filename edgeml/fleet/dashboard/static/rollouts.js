/* Rollouts pages: the list (/rollouts) and one rollout (/rollouts/{id}), polled from their
   JSON twins and rebuilt with DOM calls (the same markup as templates/_rollout.html); every
   value a device or the controller wrote goes in as text. */
"use strict";
(function () {
  const E = window.edgeml;
  const SVG = "http://www.w3.org/2000/svg";
  const m = E.main.dataset;
  const STOPPED = ["halted", "rolled_back", "cancelled"];

  function label(s) { return String(s === null || s === undefined ? "?" : s).replace(/_/g, " "); }
  function dash(v) { return v === null || v === undefined || v === "" ? "–" : String(v); }
  function rolloutLink(id) { return "/rollouts/" + encodeURIComponent(id); }
  function deviceLink(fleet, device) { return "/device?" + E.query({ fleet: fleet, device: device }); }

  function td(content, cls) {
    const cell = E.el("td", cls);
    (Array.isArray(content) ? content : [content]).forEach(function (c) {
      cell.append(c instanceof Node ? c : document.createTextNode(String(c)));
    });
    return cell;
  }
  function a(text, href) { const x = E.el("a", null, text); x.href = href; return x; }
  function badge(prefix, state) { return E.el("span", "badge " + prefix + "-" + state, label(state)); }

  function bar(counts, total) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "bar");
    svg.setAttribute("viewBox", "0 0 1000 14");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    const shown = Object.keys(counts).filter(function (s) { return counts[s]; });
    svg.setAttribute("aria-label", shown.map(function (s) { return s + " " + counts[s]; }).join(", "));
    let x = 0;
    shown.forEach(function (s) {
      if (!total) { return; }
      const w = 1000 * counts[s] / total;
      const r = document.createElementNS(SVG, "rect");
      r.setAttribute("class", "st-" + s);
      r.setAttribute("x", x.toFixed(1));
      r.setAttribute("y", "0");
      r.setAttribute("width", w.toFixed(1));
      r.setAttribute("height", "14");
      const t = document.createElementNS(SVG, "title");
      t.textContent = s + ": " + counts[s];
      r.appendChild(t);
      svg.appendChild(r);
      x += w;
    });
    return svg;
  }

  function legend(counts) {
    const span = E.el("span", "legend-states");
    Object.keys(counts).forEach(function (s) {
      if (!counts[s]) { return; }
      const item = E.el("span", "ls");
      item.append(E.el("span", "dot st-" + s), s + " " + counts[s]);
      span.append(item, " ");
    });
    return span;
  }

  function stages(r) {
    const span = E.el("span", "stages");
    r.stages.forEach(function (st, i) {
      let cls = "stg";
      if (i + 1 === r.stage_number && r.state === "running") { cls += " current"; }
      else if (i + 1 === r.stage_number && STOPPED.indexOf(r.state) >= 0) { cls += " stopped"; }
      else if (i + 1 < r.stage_number || r.state === "completed") { cls += " past"; }
      span.appendChild(E.el("span", cls, E.pct(st.fraction)));
    });
    return span;
  }

  function stageOf(r) {
    return [E.el("span", "stage-of", r.stage_number + " of " + r.stage_count), " ", stages(r)];
  }

  function gates(g) {
    const keys = Object.keys(g || {}).sort();
    if (!keys.length) { return ["–"]; }
    const out = [];
    keys.forEach(function (k) {
      const kv = E.el("span", "kv", k + "=");
      kv.appendChild(E.el("span", "v", typeof g[k] === "object" ? JSON.stringify(g[k]) : String(g[k])));
      out.push(kv, " ");
    });
    return out;
  }

  function empty(tbody, cols, text) {
    const tr = E.el("tr", "none");
    const cell = E.el("td", "muted", text);
    cell.colSpan = cols;
    tr.appendChild(cell);
    tbody.replaceChildren(tr);
  }

  function fill(tbody, rows, build, cols, none) {
    if (!rows.length) { empty(tbody, cols, none); return; }
    const frag = document.createDocumentFragment();
    rows.forEach(function (r) { frag.appendChild(build(r)); });
    tbody.replaceChildren(frag);
  }

  function progress(have, count) {
    if (!count) { return "–"; }
    const p = document.createElement("progress");
    p.max = count;
    p.value = have || 0;
    return [p, " " + (have || 0) + "/" + count];
  }

  /* the list */
  function listRow(r) {
    const tr = E.el("tr", "rollout rs-" + r.state);
    tr.dataset.id = r.id;
    tr.append(td(a(r.id, rolloutLink(r.id))), td(r.model), td(r.fleet), td(badge("rs", r.state)),
      td(stageOf(r)),
      td([bar(r.devices, r.device_count), " ", E.el("span", "done", r.devices.committed + "/" + r.device_count + " committed"),
        " ", legend(r.devices)], "progress-cell"),
      td(gates(r.gates), "gates"), td(dash(r.reason), "reason"), td(dash(r.created_at), "time"),
      td(dash(r.updated_at), "time"));
    return tr;
  }

  function renderList(data) {
    Object.keys(data.counts).forEach(function (k) {
      const n = document.getElementById("count-" + k);
      if (n) { n.textContent = String(data.counts[k]); }
    });
    fill(document.getElementById("rollout-rows"), data.rollouts, listRow, 10,
      "No rollout yet: edgeml deploy BUNDLE --fleet F starts one.");
    fill(document.getElementById("retrain-rows"), data.retrains || [], retrainRow, 9,
      "No retraining yet: edgeml retrain RECIPE --db URL, or the monitor's retrain: trigger.");
  }

  function retrainRow(x) {
    const tr = E.el("tr", "retrain rr-" + x.state);
    tr.dataset.id = String(x.id);
    tr.append(td(String(x.id), "num"), td(dash(x.model)), td(badge("rr", x.state)),
      td(dash(x.trigger)), td(dash(x.version), "num"),
      td(x.deployment_id ? a(x.deployment_id, rolloutLink(x.deployment_id)) : "–"),
      td(dash(x.reason), "reason"), td(dash(x.started_at), "time"),
      td(dash(x.finished_at), "time"));
    return tr;
  }

  /* one rollout */
  function deviceRow(x) {
    const tr = E.el("tr", "ds-" + x.state);
    tr.dataset.device = x.device;
    tr.append(td(a(x.device, deviceLink(x.fleet, x.device))), td(String(x.stage_number), "num"),
      td(badge("st", x.state)), td(progress(x.have, x.count)),
      td(dash(x.from_version) + " → " + dash(x.serving_version)), td(dash(x.reason), "reason"),
      td(dash(x.last_report), "time"), td(dash(x.updated_at), "time"));
    return tr;
  }

  function eventRow(ev) {
    const tr = E.el("tr", "ev-" + ev.event);
    tr.append(td(dash(ev.received_at), "time"), td(a(ev.device, deviceLink(ev.fleet, ev.device))),
      td(ev.event), td(dash(ev.state)), td(dash(ev.serving_version)),
      td(ev.count ? (ev.have || 0) + "/" + ev.count : "–"), td(dash(ev.reason), "reason"),
      td(dash(ev.seq), "num"));
    return tr;
  }

  function stageRow(d) {
    return function (st) {
      const tr = E.el("tr", st.number === d.stage_number && d.state === "running" ? "chosen" : null);
      tr.append(td(String(st.number)), td(E.pct(st.fraction), "num"), td(String(st.devices), "num"),
        td(String(st.committed), "num"));
      return tr;
    };
  }

  function text(id, value) { document.getElementById(id).textContent = dash(value); }

  function renderDetail(d) {
    const state = document.getElementById("rollout-state");
    state.className = "badge rs-" + d.state;
    state.textContent = label(d.state);
    const stage = document.getElementById("rollout-stage");
    stage.replaceChildren.apply(stage, stageOf(d));
    text("rollout-stage-started", d.stage_started_at);
    text("rollout-soak-until", d.soak_until);
    text("rollout-updated", d.updated_at);
    text("rollout-reason", d.reason);
    text("rollout-done", "(" + d.devices.committed + "/" + d.device_count + " committed)");
    document.getElementById("rollout-progress").replaceChildren(
      bar(d.devices, d.device_count), " ", legend(d.devices));
    fill(document.getElementById("stage-rows"), d.stages, stageRow(d), 4, "No stage.");
    fill(document.getElementById("device-rows"), d.device_rows, deviceRow, 8,
      "No device in this rollout yet.");
    fill(document.getElementById("event-rows"), d.events, eventRow, 8, "No report yet.");
  }

  const render = m.page === "rollout" ? renderDetail : renderList;
  E.poll(function () {
    return E.fetchJSON(m.api).then(render).then(function () { document.body.dataset.ready = "1"; });
  });
})();
