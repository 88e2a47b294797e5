"""The observer's page: one HTML document with its script, no external resources (it works
on a machine with no internet access). It listens to ``/events`` (Server-Sent Events) and
redraws: per node a summary, the process table (sortable: click a column), the supervision
trees (expandable, with restart counts), tensor memory and device workers; clicking a
process shows its ``process_info``. A kill button appears only when the node allows
actions (``observer_control=True``)."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>numbeam observer</title>
<style>
body { font: 13px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #f6f7f9; }
header { background: #24324a; color: #fff; padding: 8px 16px; display: flex; gap: 16px;
         align-items: baseline; }
header h1 { font-size: 16px; margin: 0; }
#status { opacity: .8; }
main { display: flex; gap: 12px; padding: 12px; align-items: flex-start; }
#nodes { flex: 1; min-width: 0; }
#details { width: 380px; position: sticky; top: 12px; background: #fff; border: 1px solid #ccd;
           border-radius: 6px; padding: 8px; display: none; }
#details pre { white-space: pre-wrap; word-break: break-all; font-size: 12px; }
section.node { background: #fff; border: 1px solid #ccd; border-radius: 6px; padding: 8px 12px;
               margin-bottom: 12px; }
section.node h2 { font-size: 15px; margin: 4px 0 8px; }
.summary span { margin-right: 14px; }
.summary b { font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 10px; }
th, td { text-align: left; padding: 2px 6px; border-bottom: 1px solid #eef; white-space: nowrap;
         font-variant-numeric: tabular-nums; }
th { cursor: pointer; background: #eef1f6; user-select: none; }
th.sorted::after { content: " \\25BE"; }
th.sorted.asc::after { content: " \\25B4"; }
tr.proc:hover { background: #fff6d8; cursor: pointer; }
td.num { text-align: right; }
.error { color: #b00; }
details { margin-left: 14px; }
summary { cursor: pointer; }
.tabs button { margin-right: 4px; }
h3 { font-size: 13px; margin: 10px 0 2px; }
.kill { background: #b00; color: #fff; border: 0; padding: 4px 10px; border-radius: 4px; }
</style>
</head>
<body>
<header><h1>numbeam observer</h1><span id="observer"></span><span id="status">connecting</span>
</header>
<main><div id="nodes"></div><aside id="details"><div id="detail-title"></div>
<pre id="detail-body"></pre><div id="detail-actions"></div></aside></main>
<script>
"use strict";
let snapshot = null;
let sortKey = "message_queue_len", sortAsc = false, selected = null;
const columns = [
  ["pid", "pid"], ["name", "name"], ["function", "function"],
  ["current_function", "current function"], ["status", "status"],
  ["message_queue_len", "mailbox"], ["messages_in", "in"], ["messages_out", "out"],
  ["links", "links"]];
function esc(v) {
  return String(v === null || v === undefined ? "" : v).replace(/[&<>"']/g,
    c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
function fmtBytes(n) {
  if (n === null || n === undefined) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
function sortRows(rows) {
  const k = sortKey, dir = sortAsc ? 1 : -1;
  return rows.slice().sort((a, b) => {
    let x = a[k], y = b[k];
    if (x === null || x === undefined) x = typeof y === "number" ? -1 : "";
    if (y === null || y === undefined) y = typeof x === "number" ? -1 : "";
    if (x < y) return -dir; if (x > y) return dir; return a.id - b.id;
  });
}
function processTable(node) {
  let h = '<table class="processes" data-node="' + esc(node.node) + '"><thead><tr>';
  for (const [k, label] of columns) {
    const cls = k === sortKey ? ' class="sorted' + (sortAsc ? ' asc"' : '"') : "";
    h += '<th data-key="' + k + '"' + cls + '>' + esc(label) + '</th>';
  }
  h += "</tr></thead><tbody>";
  for (const p of sortRows(node.processes)) {
    h += '<tr class="proc" data-node="' + esc(node.node) + '" data-id="' + p.id +
         '" data-creation="' + p.creation + '">';
    for (const [k] of columns) {
      const num = typeof p[k] === "number";
      h += "<td" + (num ? ' class="num"' : "") + ">" + esc(p[k]) + "</td>";
    }
    h += "</tr>";
  }
  h += "</tbody></table>";
  if (node.process_count > node.processes.length)
    h += "<div>showing " + node.processes.length + " of " + node.process_count +
         " processes (longest mailboxes first)</div>";
  return h;
}
function treeHtml(node) {
  const sups = {};
  for (const s of node.supervisors) sups[s.pid] = s;
  const nested = new Set();
  for (const s of node.supervisors)
    for (const c of (s.children || [])) if (c.pid && sups[c.pid]) nested.add(c.pid);
  const names = {};
  for (const p of node.processes) names[p.pid] = p.name;
  function one(s) {
    let h = '<details open class="tree" data-pid="' + esc(s.pid) + '"><summary>' +
      esc(s.name || s.pid) + " <small>" + esc(s.function) + " " + esc(s.pid) +
      "</small> &middot; restarts: <b class=\\"restarts\\">" + s.restarts + "</b></summary>";
    if (s.error) h += '<div class="error">' + esc(s.error) + "</div>";
    for (const c of (s.children || [])) {
      if (c.pid && sups[c.pid]) { h += one(sups[c.pid]); continue; }
      h += '<div class="child">' + esc(c.id) + " &rarr; " +
           (c.pid ? esc(c.pid) + (names[c.pid] ? " (" + esc(names[c.pid]) + ")" : "")
                  : "<i>not running</i>") + " <small>" + esc(c.type) + "</small></div>";
    }
    return h + "</details>";
  }
  const roots = node.supervisors.filter(s => !nested.has(s.pid));
  return roots.length ? roots.map(one).join("") : "<div><i>no supervisors</i></div>";
}
function tensorsHtml(t) {
  if (!t) return "";
  let h = "<table><tr><th>device</th><th>buffers</th><th>bytes</th><th>reserved</th>" +
          "<th>segments</th></tr>";
  h += "<tr><td>cpu (shared memory)</td><td class=num>" + t.buffers + "</td><td class=num>" +
       fmtBytes(t.bytes) + "</td><td class=num>" + fmtBytes(t.reserved) +
       "</td><td class=num>" + t.segments + "</td></tr>";
  for (const [d, v] of Object.entries(t.devices || {}))
    h += "<tr><td>" + esc(d) + "</td><td class=num>" + esc(v.buffers) +
         "</td><td class=num>" + fmtBytes(v.bytes) + "</td><td></td><td></td></tr>";
  return h + "</table>";
}
function workersHtml(w) {
  const rows = Object.entries(w || {});
  if (!rows.length) return "<div><i>no device workers</i></div>";
  let h = "<table><tr><th>device</th><th>status</th><th>node</th><th>os pid</th>" +
          "<th>restarts</th></tr>";
  for (const [d, v] of rows)
    h += "<tr><td>" + esc(d) + "</td><td>" + esc(v.status) + "</td><td>" + esc(v.node) +
         "</td><td class=num>" + esc(v.os_pid) + "</td><td class=num>" + esc(v.restarts) +
         "</td></tr>";
  return h + "</table>";
}
function render() {
  if (!snapshot) return;
  document.getElementById("observer").textContent = "via " + snapshot.observer;
  let h = "";
  for (const n of snapshot.nodes) {
    h += '<section class="node" data-node="' + esc(n.node) + '"><h2>' + esc(n.node) +
         (n.device && n.device !== "cpu" ? " <small>(worker of " + esc(n.device) + ")</small>"
                                         : "") + "</h2>";
    if (n.error) { h += '<div class="error">' + esc(n.error) + "</div></section>"; continue; }
    h += '<div class="summary">' +
      "<span>processes <b class=\\"process-count\\">" + n.process_count + "</b></span>" +
      "<span>run queue <b>" + n.run_queue + "</b></span>" +
      "<span>queued messages <b>" + n.message_queue_total + "</b></span>" +
      "<span>messages in/out <b>" + n.messages_in + " / " + n.messages_out + "</b></span>" +
      "<span>connected nodes <b>" + n.nodes.length + "</b></span>" +
      "<span>tensor bytes <b>" + fmtBytes(n.tensors && n.tensors.bytes) + "</b></span></div>";
    h += "<h3>Processes</h3>" + processTable(n);
    h += "<h3>Supervision trees</h3>" + treeHtml(n);
    h += "<h3>Tensor memory</h3>" + tensorsHtml(n.tensors);
    h += "<h3>Device workers</h3>" + workersHtml(n.workers);
    h += "</section>";
  }
  const open = new Set([...document.querySelectorAll("details.tree:not([open])")]
                       .map(d => d.dataset.pid));
  document.getElementById("nodes").innerHTML = h;
  for (const d of document.querySelectorAll("details.tree"))
    if (open.has(d.dataset.pid)) d.open = false;
}
async function showProcess(node, id, creation) {
  selected = {node, id, creation};
  const box = document.getElementById("details");
  box.style.display = "block";
  document.getElementById("detail-title").textContent = "process " + id + " on " + node;
  const q = new URLSearchParams({node, id, creation});
  const r = await fetch("/api/process?" + q);
  document.getElementById("detail-body").textContent =
    r.ok ? JSON.stringify(await r.json(), null, 2) : await r.text();
  const actions = document.getElementById("detail-actions");
  actions.innerHTML = snapshot && snapshot.control && r.ok ?
    '<button class="kill" id="kill">kill</button>' : "";
  const k = document.getElementById("kill");
  if (k) k.onclick = async () => {
    const res = await fetch("/api/kill", {method: "POST",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify(selected)});
    document.getElementById("detail-body").textContent = await res.text();
  };
}
document.addEventListener("click", ev => {
  const th = ev.target.closest("th[data-key]");
  if (th) {
    const k = th.dataset.key;
    if (k === sortKey) sortAsc = !sortAsc; else { sortKey = k; sortAsc = k === "name" ||
      k === "pid" || k === "function"; }
    render(); return;
  }
  const tr = ev.target.closest("tr.proc");
  if (tr) showProcess(tr.dataset.node, tr.dataset.id, tr.dataset.creation);
});
const es = new EventSource("/events" + location.search);
es.addEventListener("snapshot", ev => {
  snapshot = JSON.parse(ev.data);
  document.getElementById("status").textContent =
    "live, updated " + new Date().toLocaleTimeString();
  render();
});
es.onerror = () => { document.getElementById("status").textContent = "disconnected"; };
</script>
</body>
</html>
"""
