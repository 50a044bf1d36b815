// Ostium flows UI: service map (SVG) and flow table, polling the agent's JSON API. No build step.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const state = { filters: new URLSearchParams(), selected: null, map: null, timer: null };

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVGNS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// "--from-label app=x --http-status 5+" → [["from-label", "app=x"], ["http-status", "5+"]]
function parseFlags(text) {
  const words = text.match(/"[^"]*"|'[^']*'|\S+/g) || [];
  const out = [];
  for (let i = 0; i < words.length; i++) {
    let w = words[i];
    if (!w.startsWith("--")) throw new Error(`more filters: expected a --flag, got ${w}`);
    w = w.slice(2);
    let value;
    if (w.includes("=")) {            // --flag=value (flag names have no "=")
      [w, value] = [w.slice(0, w.indexOf("=")), w.slice(w.indexOf("=") + 1)];
    } else {
      value = words[++i];
      if (value === undefined) throw new Error(`more filters: --${w} needs a value`);
    }
    out.push([w, value.replace(/^["']|["']$/g, "")]);
  }
  return out;
}

function readFilters() {
  const p = new URLSearchParams();
  for (const input of document.querySelectorAll("#filters input, #filters select")) {
    const v = input.value.trim();
    if (!v) continue;
    if (input.name === "flags") for (const [k, val] of parseFlags(v)) p.append(k, val);
    else p.append(input.name, v);
  }
  return p;
}

async function getJSON(path, params) {
  const r = await fetch(path + "?" + params.toString(), { cache: "no-store" });
  const body = await r.json();
  if (!r.ok) throw new Error(body && body.error ? body.error.message : "HTTP " + r.status);
  return body;
}

function edgeState(e) {
  if (e.denied > 0 && e.allowed === 0) return "denied";
  if (e.denied > 0) return "mixed";
  return "allowed";
}

// Layered layout: a node's column is its longest distance from a node nobody calls.
function layout(nodes, edges, width, height) {
  const incoming = new Map(nodes.map(n => [n.id, []]));
  for (const e of edges) if (e.source !== e.target) incoming.get(e.target).push(e.source);
  const depth = new Map();
  const visiting = new Set();
  function d(id) {
    if (depth.has(id)) return depth.get(id);
    if (visiting.has(id)) return 0;          // a cycle: cut it here
    visiting.add(id);
    let best = 0;
    for (const s of incoming.get(id) || []) best = Math.max(best, d(s) + 1);
    visiting.delete(id);
    depth.set(id, best);
    return best;
  }
  nodes.forEach(n => d(n.id));
  const cols = [];
  for (const n of nodes) (cols[depth.get(n.id)] = cols[depth.get(n.id)] || []).push(n);
  // Barycentre sweeps: order each column by the mean row of its neighbours to cut crossings.
  const row = new Map();
  cols.forEach(col => col.forEach((n, j) => row.set(n.id, j)));
  const nbrs = new Map(nodes.map(n => [n.id, []]));
  for (const e of edges) if (e.source !== e.target) { nbrs.get(e.source).push(e.target); nbrs.get(e.target).push(e.source); }
  for (let sweep = 0; sweep < 4; sweep++) {
    for (const col of cols) {
      if (!col) continue;
      const bary = n => { const ns = nbrs.get(n.id); return ns.length ? ns.reduce((a, m) => a + row.get(m), 0) / ns.length : row.get(n.id); };
      const keyed = col.map(n => [bary(n), n.id, n]);
      keyed.sort((a, b) => a[0] - b[0] || (a[1] < b[1] ? -1 : 1));
      keyed.forEach(([, , n], j) => { col[j] = n; row.set(n.id, j); });
    }
  }
  const pos = new Map();
  const ncol = cols.length || 1;
  state.ncol = ncol;
  cols.forEach((col, i) => {
    if (!col) return;
    const x = (width / (ncol + 1)) * (i + 1);
    col.forEach((n, j) => pos.set(n.id, { x, y: (height / (col.length + 1)) * (j + 1) }));
  });
  return pos;
}

const NODE_W = 150, NODE_H = 44;

function boxEdgePoint(from, to) {
  // where the segment from the centre `from` towards `to` leaves the node's box
  const dx = to.x - from.x, dy = to.y - from.y;
  if (dx === 0 && dy === 0) return { x: from.x, y: from.y };
  const sx = (NODE_W / 2) / Math.abs(dx || 1e-9), sy = (NODE_H / 2) / Math.abs(dy || 1e-9);
  const s = Math.min(sx, sy);
  return { x: from.x + dx * s, y: from.y + dy * s };
}

function drawMap(map) {
  const svg = document.getElementById("servicemap");
  const width = svg.clientWidth || 800, height = svg.clientHeight || 380;
  const gN = document.getElementById("nodes"), gE = document.getElementById("edges");
  gN.replaceChildren(); gE.replaceChildren();
  const pos = layout(map.nodes, map.edges, width, height);
  const pairs = new Set(map.edges.map(e => e.source + "\u0000" + e.target));
  for (const e of map.edges) {
    const a = pos.get(e.source), b = pos.get(e.target);
    const st = edgeState(e);
    const g = el("svg:g", { class: "edge " + st, "data-id": e.id, "data-source": e.source, "data-target": e.target,
                             "data-allowed": e.allowed, "data-denied": e.denied, "data-requests": e.requests });
    const parts = st === "mixed" ? [["allowed", -14, `${e.allowed} allowed`], ["denied", 14, `${e.denied} denied`]]
                                 : [[st, 0, (st === "denied" ? `${e.denied} denied` : `${e.allowed} allowed`)]];
    const reverse = pairs.has(e.target + "\u0000" + e.source) ? 34 : 0;
    for (const [part, offset, text] of parts) {
      let d, lx, ly;
      if (e.source === e.target) {
        const h = 90 + offset;
        d = `M${a.x - 20},${a.y - NODE_H / 2} C${a.x - 40},${a.y - h} ${a.x + 40},${a.y - h} ${a.x + 20},${a.y - NODE_H / 2}`;
        lx = a.x; ly = a.y - h + 14;
      } else {
        // bend both directions of a pair apart, and the two parts of a mixed edge
        // an edge that skips a column would run through the nodes in between: arc it
        const colW = width / ((state.ncol || 1) + 1);
        const skip = Math.abs(b.x - a.x) > colW * 1.5 ? -70 : 0;
        const bend = reverse + offset + skip;
        const p = boxEdgePoint(a, b), q = boxEdgePoint(b, a);
        const mx = (p.x + q.x) / 2, my = (p.y + q.y) / 2;
        const len = Math.hypot(q.x - p.x, q.y - p.y) || 1;
        const cx = mx - ((q.y - p.y) / len) * bend, cy = my + ((q.x - p.x) / len) * bend;
        d = `M${p.x},${p.y} Q${cx},${cy} ${q.x},${q.y}`;
        lx = (p.x + 2 * cx + q.x) / 4; ly = (p.y + 2 * cy + q.y) / 4 + (offset > 0 ? 14 : offset < 0 ? -6 : -6);
      }
      g.appendChild(el("svg:path", { d, class: "part " + part, "marker-end": `url(#arrow-${part})` }));
      g.appendChild(el("svg:text", { x: lx, y: ly, class: "edge-label " + part },
                       text + (e.requests && part !== "denied" ? ` · ${e.requests} req` : "")));
    }
    g.appendChild(el("svg:title", {}, `${e.source} → ${e.target}: ${e.allowed} allowed, ${e.denied} denied`));
    g.addEventListener("click", () => { state.selected = e.id; showDetails(e); markSelected(); });
    gE.appendChild(g);
  }
  for (const n of map.nodes) {
    const p = pos.get(n.id);
    const g = el("svg:g", { class: "node " + n.kind, "data-id": n.id, transform: `translate(${p.x},${p.y})` });
    g.appendChild(el("svg:rect", { x: -NODE_W / 2, y: -NODE_H / 2, width: NODE_W, height: NODE_H, rx: 8 }));
    g.appendChild(el("svg:text", { y: n.namespace ? -7 : 0, class: "name" }, n.label));
    if (n.namespace) g.appendChild(el("svg:text", { y: 10, class: "sub" },
                                      `${n.namespace}${n.identity ? " · ID " + n.identity : ""}`));
    g.appendChild(el("svg:title", {}, [n.id, ...(n.labels || [])].join("\n")));
    gN.appendChild(g);
  }
  markSelected();
  const sel = map.edges.find(e => e.id === state.selected);
  if (sel) showDetails(sel);
}

function markSelected() {
  for (const g of document.querySelectorAll("#edges .edge"))
    g.classList.toggle("selected", g.dataset.id === state.selected);
}

function showDetails(e) {
  const box = document.getElementById("details");
  box.replaceChildren(el("h2", {}, "Details"));
  box.appendChild(el("p", { class: "kv" }, `${e.source} → ${e.target}`));
  const t = el("table", { class: "summary" });
  for (const [k, v] of [["flows", e.flows], ["allowed", e.allowed], ["denied", e.denied], ["requests", e.requests],
                        ["ports", e.ports.join(", ")], ["protocols", e.protocols.join(", ")]]) {
    const tr = el("tr"); tr.append(el("th", {}, k), el("td", {}, String(v))); t.appendChild(tr);
  }
  box.appendChild(t);
  if (e.http.length) {
    box.appendChild(el("h2", {}, "HTTP"));
    const h = el("table", { id: "detail-http" });
    h.appendChild(rowOf("th", ["method", "path", "code", "verdict", "n"]));
    for (const r of e.http) {
      const tr = rowOf("td", [r.method, r.path, r.code, r.verdict, r.count]);
      tr.children[3].className = "verdict " + r.verdict;
      h.appendChild(tr);
    }
    box.appendChild(h);
  }
  if (e.kafka.length) {
    box.appendChild(el("h2", {}, "Kafka"));
    const k = el("table", { id: "detail-kafka" });
    k.appendChild(rowOf("th", ["api", "topic", "verdict", "n"]));
    for (const r of e.kafka) {
      const tr = rowOf("td", [r.api_key, r.topic, r.verdict, r.count]);
      tr.children[2].className = "verdict " + r.verdict;
      k.appendChild(tr);
    }
    box.appendChild(k);
  }
}

function rowOf(cell, values) {
  const tr = el("tr");
  for (const v of values) tr.appendChild(el(cell, {}, String(v)));
  return tr;
}

function sideName(s) {
  if (s.pod_name) return (s.namespace ? s.namespace + "/" : "") + s.pod_name;
  const reserved = (s.labels || []).find(l => l.startsWith("reserved:"));
  return reserved ? reserved.split("=")[0] : "";
}

function addr(f, side) {
  const s = f[side], ip = f.IP ? f.IP[side] : "";
  const l4 = f.l4 ? Object.values(f.l4)[0] : null;
  const port = l4 && l4[side + "_port"] ? ":" + l4[side + "_port"] : "";
  const name = sideName(s);
  return (name ? name : ip) + port + (s.identity ? ` (ID:${s.identity})` : "");
}

function drawFlows(flows) {
  const tb = document.getElementById("flow-rows");
  const rows = [];
  for (const f of flows.slice().reverse()) {     // newest first
    const tr = el("tr", { class: "v-" + f.verdict, "data-uuid": f.uuid });
    const t = new Date(f.time);
    tr.append(el("td", { class: "time" }, t.toLocaleTimeString([], { hour12: false }) + "." + String(t.getMilliseconds()).padStart(3, "0")),
              el("td", { class: "src" }, addr(f, "source")),
              el("td", { class: "dst" }, addr(f, "destination")),
              el("td", { class: "type" }, f.event_type.sub_type),
              el("td", { class: "verdict " + f.verdict }, f.verdict),
              el("td", { class: "summary", title: f.Summary }, f.Summary));
    rows.push(tr);
  }
  tb.replaceChildren(...rows);
}

async function refresh() {
  const status = document.getElementById("status");
  const p = new URLSearchParams(state.filters);
  try {
    const fp = new URLSearchParams(p); if (!fp.has("last")) fp.set("last", "200");
    const [map, flows] = await Promise.all([getJSON("/v1/servicemap", p), getJSON("/v1/flows", fp)]);
    document.getElementById("filter-error").textContent = "";
    state.map = map;
    drawMap(map);
    drawFlows(flows);
    document.getElementById("map-summary").textContent =
      `${map.nodes.length} workloads, ${map.edges.length} edges over ${map.flows} flows`;
    document.getElementById("flow-summary").textContent = `newest ${flows.length}`;
    status.textContent = "updated " + new Date().toLocaleTimeString([], { hour12: false }) +
      (map.lost ? ` · ${map.lost} older flows overwritten in the ring` : "");
    document.body.dataset.loaded = "1";
  } catch (err) {
    document.getElementById("filter-error").textContent = err.message;
    status.textContent = "error";
  }
}

function schedule() {
  clearInterval(state.timer);
  if (document.getElementById("live").checked) state.timer = setInterval(refresh, 2000);
}

document.getElementById("filters").addEventListener("submit", ev => {
  ev.preventDefault();
  try {
    state.filters = readFilters();
  } catch (err) {
    document.getElementById("filter-error").textContent = err.message;
    return;
  }
  refresh();
});
document.getElementById("live").addEventListener("change", schedule);
window.addEventListener("resize", () => state.map && drawMap(state.map));
state.filters = readFilters();
refresh();
schedule();
