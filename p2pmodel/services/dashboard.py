"""The dashboard: one page served by the agent's HTTP server at ``/`` that shows this agent, its
peers, the models in its store, the transfers in flight and, over the last hour, the bytes per
second that came from mirrors and from the LAN. It updates itself: its script asks
``/api/p2pmodel/status`` every second and redraws. The page is self-contained (no script or
font from anywhere else) and builds every piece of text with ``textContent``, so a model or
peer name cannot inject markup.
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
 svg { border: 1px solid var(--line); border-radius: 8px; width: 100%; height: 180px; }
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
<h2>Bytes per second, last hour</h2>
<div class="legend"><span><i style="background:var(--mirror)"></i>mirrors</span>
 <span><i style="background:var(--lan)"></i>LAN</span><span id="peak" class="sub"></span></div>
<svg id="plot" viewBox="0 0 1000 180" preserveAspectRatio="none">
 <polyline id="l-mirror" fill="none" stroke="#e8772e" stroke-width="2"/>
 <polyline id="l-lan" fill="none" stroke="#2f7fd8" stroke-width="2"/>
</svg>
<h2>Transfers in flight</h2>
<table><thead><tr><th>file</th><th>progress</th><th></th><th>state</th><th>source</th></tr></thead>
<tbody id="transfers"></tbody></table>
<h2>Peers</h2>
<table><thead><tr><th>agent</th><th>addresses</th><th>state</th><th>last heard</th>
<th>holds</th></tr></thead><tbody id="peers"></tbody></table>
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
function plot(points, now) {
  // The last hour, or less while the agent is younger: at least five minutes across.
  const w = 1000, h = 170, first = points.length ? points[0].t : now;
  const span = Math.min(3600, Math.max(300, now - first));
  let peak = 1; for (const p of points) peak = Math.max(peak, p.mirror || 0, p.lan || 0);
  for (const src of ["mirror", "lan"]) {
    const pts = points.map(p => {
      const x = Math.max(0, w - (now - p.t) / span * w), y = h - (p[src] || 0) / peak * (h - 10);
      return x.toFixed(1) + "," + y.toFixed(1);
    });
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
  plot(s.timeline, s.now);
  fill("transfers", s.transfers.map(t => {
    const tr = document.createElement("tr");
    tr.className = (t.source && !t.source.startsWith("LAN")) ? "mirror" : "";
    cell(tr, t.label); cell(tr, "").appendChild(bar(t.size ? t.have / t.size : 1));
    cell(tr, human(t.have) + " / " + human(t.size)); cell(tr, t.state);
    cell(tr, t.source || "-"); return tr;
  }), 5, "nothing in flight");
  fill("peers", s.peers.map(p => {
    const tr = document.createElement("tr");
    cell(tr, p.agent); cell(tr, p.addresses.join(", "));
    cell(tr, p.alive ? "alive" : "gone", p.alive ? "alive" : "gone");
    cell(tr, p.last_heard_age.toFixed(1) + " s ago");
    cell(tr, p.holds + " blobs" + (p.partial ? ", " + p.partial + " partial" : ""));
    return tr;
  }), 5, "no peer seen yet");
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
