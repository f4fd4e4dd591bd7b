"""The dashboard: one page served by the agent's HTTP server at ``/`` that shows this agent, its
peers, the models in its store, the transfers in flight and, over the last hour, the bytes per
second that came from mirrors and from the LAN (a time axis in minutes ago with the browser's
clock times under it, a rate axis in MB/s). It updates itself: its script asks
``/api/p2pmodel/status`` every second and redraws. Peers are shown by host name where the
agent knows one (a static peer's configured name; mDNS announcements carry none today) and
by agent id. A line says how much each hub's file URLs (and their mirrors) gave, and each
transfer's source names the hubs it came from (with ``[[same_files]]``, one file may come from
two). The page is self-contained (no script or font from anywhere else) and builds every
piece of text with ``textContent``, so a model or peer name cannot inject markup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from .agent import Agent


async def data(agent: Agent) -> dict[str, Any]:
    """What the page shows, as one JSON object."""
    status = agent.status()
    status["models"], _ = await trio.to_thread.run_sync(agent.store.listing)
    status["timeline"] = agent.timeline.series()
    status["now"] = trio.current_time()
    return status


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>p2pmodel agent</title>
<style>
 :root { --fg:#1c2330; --muted:#6a7385; --line:#e3e7ee; --mirror:#e8772e; --lan:#2f7fd8;
         --ok:#2a9d5b; --bad:#c0392b; font-family: system-ui, sans-serif; color: var(--fg); }
 body { margin: 24px auto; max-width: 1100px; padding: 0 16px; }
 h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 24px 0 8px; }
 .sub { color: var(--muted); font-size: 13px; }
 .cards { display: grid; grid-template-columns: repeat(6, 1fr); gap: 10px; margin-top: 16px; }
 .card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
 .card .v { font-size: 20px; font-weight: 600; } .card .k { color: var(--muted); font-size: 12px; }
 table { width: 100%; border-collapse: collapse; font-size: 13px; }
 th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); }
 th { color: var(--muted); font-weight: 500; }
 .bar { background: var(--line); border-radius: 4px; height: 8px; width: 180px; }
 .bar > div { background: var(--lan); height: 8px; border-radius: 4px; }
 .mirror .bar > div { background: var(--mirror); }
 .alive { color: var(--ok); } .gone { color: var(--bad); }
 .empty { color: var(--muted); font-style: italic; }
 svg { border: 1px solid var(--line); border-radius: 8px; width: 100%; height: auto; }
 svg text { font-size: 12px; fill: var(--muted); }
 svg .grid { stroke: var(--line); stroke-width: 1; }
 svg .axis { stroke: var(--muted); stroke-width: 1; }
 .agent-id { color: var(--muted); font-family: ui-monospace, monospace; font-size: 12px; }
 .legend span { display: inline-block; margin-right: 14px; font-size: 12px; }
 .legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
</style></head>
<body>
<h1>p2pmodel agent <span id="agent"></span></h1>
<div class="sub" id="where"></div>
<div class="cards">
 <div class="card"><div class="v" id="saved">-</div><div class="k">internet bytes saved</div></div>
 <div class="card"><div class="v" id="mirrors">-</div><div class="k">from mirrors</div></div>
 <div class="card"><div class="v" id="lan">-</div><div class="k">from the LAN</div></div>
 <div class="card"><div class="v" id="up">-</div><div class="k">served to peers</div></div>
 <div class="card"><div class="v" id="npeers">-</div><div class="k">peers alive</div></div>
 <div class="card"><div class="v" id="seeding">-</div><div class="k">blobs seeded</div></div>
</div>
<div class="sub" id="hubs"></div>
<h2>Bytes per second, last hour</h2>
<div class="legend"><span><i style="background:var(--mirror)"></i>mirrors</span>
 <span><i style="background:var(--lan)"></i>LAN</span><span id="peak" class="sub"></span></div>
<svg id="plot" viewBox="0 0 1000 240" role="img" aria-label="bytes per second, last hour">
 <g id="grid"></g>
 <line class="axis" x1="70" y1="190" x2="960" y2="190"/>
 <line class="axis" x1="70" y1="14" x2="70" y2="190"/>
 <polyline id="l-mirror" fill="none" stroke="#e8772e" stroke-width="2"/>
 <polyline id="l-lan" fill="none" stroke="#2f7fd8" stroke-width="2"/>
 <text id="y-title" x="18" y="102" text-anchor="middle"
  transform="rotate(-90 18 102)">rate (MB/s)</text>
 <text id="x-title" x="515" y="236" text-anchor="middle">time: minutes ago (local time)</text>
</svg>
<h2>Transfers in flight</h2>
<table><thead><tr><th>file</th><th>progress</th><th></th><th>state</th><th>source</th></tr></thead>
<tbody id="transfers"></tbody></table>
<h2>Peers</h2>
<table><thead><tr><th>host</th><th>agent</th><th>addresses</th><th>where</th><th>rate</th><th>state</th>
<th>last heard</th><th>holds</th></tr></thead><tbody id="peers"></tbody></table>
<h2>Models in the store</h2>
<table><thead><tr><th>model</th><th>source</th><th>files</th><th>size</th><th>state</th>
</tr></thead><tbody id="models"></tbody></table>
<script>
"use strict";
function human(n) {
  const units = ["B", "KB", "MB", "GB", "TB"]; let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : n.toFixed(0)) + " " + units[i];
}
const HUBS = {hf: "Hugging Face", ms: "ModelScope"};
function hubs(by, lead) {
  // Bytes by hub ("hf", "ms"): "" when none (nothing fetched from a hub yet).
  const parts = Object.keys(by || {}).sort().map(h => (HUBS[h] || h) + " " + human(by[h]));
  return parts.length ? lead + parts.join(", ") : "";
}
function cell(tr, text, cls) {
  const td = document.createElement("td"); td.textContent = text;
  if (cls) td.className = cls; tr.appendChild(td); return td;
}
function fill(id, rows, cols, emptyText) {
  const body = document.getElementById(id); body.replaceChildren();
  if (!rows.length) {
    const tr = document.createElement("tr"); const td = cell(tr, emptyText, "empty");
    td.colSpan = cols; body.appendChild(tr); return;
  }
  for (const r of rows) body.appendChild(r);
}
function bar(frac) {
  const outer = document.createElement("div"); outer.className = "bar";
  const inner = document.createElement("div");
  inner.style.width = Math.round(100 * Math.min(1, Math.max(0, frac))) + "%";
  outer.appendChild(inner); return outer;
}
// The plot's frame in viewBox units: the rate axis on the left, the time axis at the bottom.
const PLOT = {left: 70, right: 960, top: 14, bottom: 190};
const SVG_NS = "http://www.w3.org/2000/svg";
function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const k in attrs) el.setAttribute(k, attrs[k]);
  if (text !== undefined) el.textContent = text;
  return el;
}
function niceStep(rough) {
  // 1, 2 or 5 times a power of ten, at least ``rough``.
  const p = Math.pow(10, Math.floor(Math.log10(rough)));
  for (const m of [1, 2, 5, 10]) if (m * p >= rough) return m * p;
  return 10 * p;
}
function clock(ms) {
  const d = new Date(ms);
  return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
}
function plot(points, now) {
  // The last hour, or less while the agent is younger: at least five minutes across.
  const first = points.length ? points[0].t : now;
  const span = Math.min(3600, Math.max(300, now - first));
  let peak = 0; for (const p of points) peak = Math.max(peak, p.mirror || 0, p.lan || 0);
  // The rate axis: MB/s (GB/s from 1000 MB/s), at least 0-1 MB/s, four or five ticks.
  const unit = peak >= 1e9 ? 1e9 : 1e6, unitName = unit === 1e9 ? "GB/s" : "MB/s";
  const step = niceStep(Math.max(peak / unit, 1) / 4);
  const top = Math.max(1, Math.ceil(peak / unit / step) * step);
  const w = PLOT.right - PLOT.left, h = PLOT.bottom - PLOT.top;
  const x = age => PLOT.right - Math.min(span, Math.max(0, age)) / span * w;
  const y = rate => PLOT.bottom - rate / unit / top * h;
  const grid = document.getElementById("grid"); grid.replaceChildren();
  for (let i = 0; i <= Math.round(top / step); i++) {
    const v = i * step, yy = y(v * unit).toFixed(1), label = Number(v.toFixed(3)).toString();
    if (i) grid.appendChild(svgEl("line", {class: "grid", x1: PLOT.left, x2: PLOT.right,
      y1: yy, y2: yy}));
    grid.appendChild(svgEl("text", {class: "y-tick", x: PLOT.left - 6, y: Number(yy) + 4,
      "text-anchor": "end"}, label));
  }
  // The time axis: "N min ago" ticks, each with the clock time it was (the browser's clock).
  const minutes = span / 60, every = [1, 2, 5, 10, 15, 20, 30].find(m => minutes / m <= 6) || 30;
  const wall = Date.now();
  for (let m = 0; m <= minutes + 1e-9; m += every) {
    const xx = x(m * 60).toFixed(1);
    grid.appendChild(svgEl("line", {class: "grid", x1: xx, x2: xx, y1: PLOT.top, y2: PLOT.bottom}));
    grid.appendChild(svgEl("text", {class: "x-tick", x: xx, y: PLOT.bottom + 16,
      "text-anchor": "middle"}, m === 0 ? "now" : m + " min ago"));
    grid.appendChild(svgEl("text", {class: "x-clock", x: xx, y: PLOT.bottom + 30,
      "text-anchor": "middle"}, clock(wall - m * 60000)));
  }
  document.getElementById("y-title").textContent = "rate (" + unitName + ")";
  // Each point is the rate over the bucket that ends at it: the first one starts a bucket
  // earlier, so a lone point (a young agent) is a short line, not nothing.
  const bucket = points.length > 1 ? points[1].t - points[0].t : 5;
  for (const src of ["mirror", "lan"]) {
    const at = (t, v) => x(now - t).toFixed(1) + "," + y(v || 0).toFixed(1);
    const pts = points.map(p => at(p.t, p[src]));
    if (points.length) pts.unshift(at(points[0].t - bucket, points[0][src]));
    document.getElementById("l-" + src).setAttribute("points", pts.join(" "));
  }
  document.getElementById("peak").textContent =
    "peak " + human(peak) + "/s over the last " + Math.round(span / 60) + " min";
}
function render(s) {
  document.getElementById("agent").textContent = s.agent;
  const hf = s.hf_endpoint ? " \\u00b7 HF endpoint " + s.hf_endpoint : "";
  document.getElementById("where").textContent = "on " + s.interfaces.join(", ") +
    " \\u00b7 peer port " + s.rpc_port + hf;
  document.getElementById("saved").textContent = human(s.internet_bytes_saved);
  document.getElementById("mirrors").textContent = human(s.from_mirrors);
  document.getElementById("lan").textContent = human(s.from_peers);
  document.getElementById("up").textContent = human(s.uploaded);
  document.getElementById("npeers").textContent = s.peers.filter(p => p.alive).length;
  document.getElementById("seeding").textContent = s.seeding;
  document.getElementById("hubs").textContent = hubs(s.from_hubs, "from the hubs: ");
  plot(s.timeline, s.now);
  fill("transfers", s.transfers.map(t => {
    const tr = document.createElement("tr");
    tr.className = (t.source && !t.source.startsWith("LAN")) ? "mirror" : "";
    cell(tr, t.label); cell(tr, "").appendChild(bar(t.size ? t.have / t.size : 1));
    cell(tr, human(t.have) + " / " + human(t.size)); cell(tr, t.state);
    cell(tr, (t.source || "-") + hubs(t.hubs, " \u00b7 ")); return tr;
  }), 5, "nothing in flight");
  fill("peers", s.peers.map(p => {
    const tr = document.createElement("tr");
    cell(tr, p.host || "-", p.host ? "" : "empty"); cell(tr, p.agent, "agent-id");
    cell(tr, p.addresses.join(", "));
    cell(tr, p.where || "-"); cell(tr, p.rate ? human(p.rate) + "/s" : "-");
    cell(tr, p.alive ? "alive" : "gone", p.alive ? "alive" : "gone");
    cell(tr, p.last_heard_age.toFixed(1) + " s ago");
    cell(tr, p.holds + " blobs" + (p.partial ? ", " + p.partial + " partial" : ""));
    return tr;
  }), 8, "no peer seen yet");
  fill("models", s.models.map(m => {
    const tr = document.createElement("tr");
    cell(tr, m.ref); cell(tr, m.source); cell(tr, m.files); cell(tr, human(m.size));
    cell(tr, (m.complete ? "complete" : human(m.missing_bytes) + " missing") +
      (m.pinned ? ", pinned" : ""));
    return tr;
  }), 5, "no model yet");
}
async function refresh() {
  try {
    const r = await fetch("/api/p2pmodel/status", {cache: "no-store"});
    if (r.ok) render(await r.json());
  } catch (e) { document.getElementById("where").textContent = "agent not answering"; }
}
refresh(); setInterval(refresh, 1000);
</script>
</body></html>
"""
