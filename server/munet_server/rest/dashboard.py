"""The dashboard: one page served by the HTTP server, every asset inline (it works offline).

The system graph (the same SVG as `munet graph`), a table of tasks, live operations with progress, and
a task's detail: its path, hyperparameters and every candidate the search tried (accuracy against
parameters added). It reads the /munet/v1 routes; on a server with a predict token it asks for the
token once and keeps it for the browser tab."""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>munet-server</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font-family: system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
 header { background: #1f3a5f; color: white; padding: 10px 20px; display: flex; gap: 24px; align-items: baseline; }
 header h1 { font-size: 18px; margin: 0; } header span { opacity: .85; font-size: 13px; }
 main { padding: 12px 20px; display: grid; gap: 16px; }
 section { background: white; border: 1px solid #ddd; border-radius: 6px; padding: 10px 14px; overflow-x: auto; }
 h2 { font-size: 15px; margin: 4px 0 8px; }
 table { border-collapse: collapse; font-size: 13px; } th, td { padding: 4px 10px; border-bottom: 1px solid #eee; text-align: left; }
 tr.task { cursor: pointer; } tr.task:hover { background: #f0f5ff; }
 .bar { background: #e6e6e6; width: 160px; height: 10px; border-radius: 5px; display: inline-block; }
 .bar > i { background: #2c7be5; height: 10px; border-radius: 5px; display: block; }
 .muted { color: #777; } .err { color: #b00020; } code { font-size: 12px; }
 .improving { background: #e3f1ff; color: #1f5fa8; border-radius: 4px; padding: 0 5px; font-size: 11px; } .tick { fill: #555; }
</style></head>
<body>
<header><h1>munet-server</h1><span id="system">connecting…</span></header>
<main>
 <section><h2>System: the root's layers, each task's path, the layers tasks share</h2><div id="graph" class="muted">loading…</div></section>
 <section><h2>Tasks</h2><table id="tasks"><thead><tr><th>task</th><th>serving</th><th>state</th><th>validation acc.</th><th>linear probe</th><th>gain</th>
  <th>params added</th><th>params accounted</th><th>image size</th><th>examples</th><th>created</th></tr></thead><tbody></tbody></table></section>
 <section><h2>Operations</h2><table id="ops"><thead><tr><th>operation</th><th>kind</th><th>task</th><th>state</th><th>phase</th><th>progress</th>
  <th>serving</th><th>result</th></tr></thead><tbody></tbody></table>
  <p id="queue" class="muted"></p></section>
 <section id="detail" hidden><h2 id="detail-title"></h2><div id="detail-body"></div></section>
</main>
<script>
"use strict";
let token = sessionStorage.getItem("munet-token") || "";
async function get(path, as = "json") {
  const r = await fetch(path, {headers: token ? {"Authorization": "Bearer " + token} : {}});
  if (r.status === 401 || r.status === 403) {
    token = prompt("This server needs a token (predict or admin):") || "";
    sessionStorage.setItem("munet-token", token);
    return get(path, as);
  }
  if (!r.ok) throw new Error(path + ": " + r.status);
  return as === "json" ? r.json() : r.text();
}
const esc = s => String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const pct = x => (x === undefined || x === null) ? "" : (100 * x).toFixed(1) + " %";
const num = n => n >= 1e6 ? (n / 1e6).toFixed(2) + "M" : n >= 1e3 ? (n / 1e3).toFixed(1) + "k" : String(Math.round(n || 0));
async function refresh() {
  try {
    const s = await get("/munet/v1/system");
    document.getElementById("system").textContent =
      `root ${s.root_model} on ${s.device} · ${s.tasks} tasks · ${s.components} components · ${num(s.params)} params · v${s.version}`;
    document.getElementById("graph").innerHTML = await get("/munet/v1/graph.svg", "text");
    const tasks = (await get("/munet/v1/tasks")).tasks;
    document.querySelector("#tasks tbody").innerHTML = tasks.map(t => `<tr class="task" data-task="${esc(t.name)}">
      <td><b>${esc(t.name)}</b></td><td>${t.served_version ? "v" + t.served_version + " " + esc(t.kind || "") : ""}${t.improving ? ' <span class="improving">improving</span>' : ""}</td>
      <td>${esc(t.state || "")}</td><td>${pct(t.validation_accuracy)}</td>
      <td>${pct(t.probe_validation_accuracy)}</td><td>${t.state === "DAMAGED" ? "" : ((t.gain_over_probe || 0) >= 0 ? "+" : "") + (100 * (t.gain_over_probe || 0)).toFixed(1) + " pt"}</td>
      <td>${num(t.params_added)}</td><td>${num(t.params_accounted)}</td><td>${t.image_size || ""}</td>
      <td>${t.num_examples || ""}</td><td>${t.created_at ? new Date(t.created_at * 1000).toLocaleString() : ""}</td></tr>`).join("");
    document.querySelectorAll("tr.task").forEach(r => r.onclick = () => detail(r.dataset.task));
    const ops = (await get("/munet/v1/operations")).operations.slice(-20).reverse();
    document.querySelector("#ops tbody").innerHTML = ops.map(o => {
      const p = o.progress || {}, frac = o.done ? 1 : p.budget_seconds ? Math.min(1, (p.elapsed_seconds || 0) / p.budget_seconds) : 0;
      const kind = (o.kind === "improve_task" ? "improve" : "add") + (o.origin === "idle" ? " (idle)" : "");
      const serving = p.serving_version ? `v${p.serving_version} ${esc(p.serving_kind || "")} ${pct(p.serving_accuracy)}` : "";
      const result = o.error ? `<span class="err">${esc(o.error.code + ": " + o.error.message)}</span>` : esc(o.result || "");
      return `<tr class="op"><td><code>${esc(o.name)}</code></td><td>${kind}</td><td>${esc(o.task || "")}</td><td>${esc(o.state)}</td>
        <td>${esc(p.phase || "")}</td><td><span class="bar"><i style="width:${(100 * frac).toFixed(0)}%"></i></span></td>
        <td>${serving}</td><td>${result}</td></tr>`;
    }).join("");
    const q = await get("/munet/v1/improvement");
    document.getElementById("queue").textContent = !q.enabled ? "Idle improvement is off." :
      "Idle improvement: " + (q.running.length ? `improving ${q.running.join(", ")} now; ` : "") +
      (q.next.length ? "next: " + q.next.join(", ") : "nothing waiting") + ` (rounds of ${q.round_seconds} s, when Predict has been quiet ${q.quiet_seconds} s)`;
  } catch (e) { document.getElementById("system").textContent = "error: " + e.message; }
}
async function detail(name) {
  const t = await get("/munet/v1/tasks/" + encodeURIComponent(name));
  const cands = (await get("/munet/v1/tasks/" + encodeURIComponent(name) + "/candidates")).candidates;
  document.getElementById("detail").hidden = false;
  document.getElementById("detail-title").textContent = "Task " + name;
  const path = (t.path || []).map(c => `<tr><td>${esc(c.name)}</td><td>${esc(c.kind)}</td><td>${num(c.num_params)}</td>
    <td>${c.created_by_task ? "<b>its own</b>" : "reused from " + esc(c.owner || "root")}</td><td>${esc((c.shared_with || []).join(", "))}</td></tr>`).join("");
  const versions = (t.versions || []).map(v => `<tr class="version"><td>${v.version}${v.served ? " <b>(served)</b>" : ""}</td>
    <td>${pct(v.validation_accuracy)}</td><td>${esc(v.kind || "")}</td><td>${num(v.params_added)}</td>
    <td>${v.improved_from ? "beat " + v.improved_from : ""}</td><td>${new Date(v.created_at * 1000).toLocaleString()}</td></tr>`).join("");
  const hp = Object.entries(t.hparams || {}).map(([k, v]) => `<tr><td>${esc(k)}</td><td><code>${esc(JSON.stringify(v))}</code></td></tr>`).join("");
  document.getElementById("detail-body").innerHTML = `<div style="display:flex;gap:24px;flex-wrap:wrap">
    <div><h2>Path</h2><table><tr><th>layer</th><th>kind</th><th>params</th><th>origin</th><th>shared with</th></tr>${path}</table></div>
    <div><h2>Versions over time: validation accuracy</h2>${timeline(t.versions || [])}</div>
    <div><h2>Candidates: validation accuracy vs parameters added</h2>${scatter(cands)}</div>
    <div><h2>Versions</h2><table><tr><th>version</th><th>validation acc.</th><th>kind</th><th>params added</th><th></th><th>published</th></tr>${versions}</table></div>
    <div><h2>Hyperparameters</h2><table>${hp}</table></div></div>`;
}
function axes(W, H, L, B, xTicks, yTicks, xLabel) {
  const xs = xTicks.map(([x, label]) => `<line x1="${x}" y1="${H - B}" x2="${x}" y2="${H - B + 4}" stroke="#999"/>
    <text class="tick" x="${x}" y="${H - B + 14}" text-anchor="middle">${label}</text>`).join("");
  const ys = yTicks.map(([y, label]) => `<line x1="${L - 4}" y1="${y}" x2="${L}" y2="${y}" stroke="#999"/>
    <text class="tick" x="${L - 6}" y="${y + 3}" text-anchor="end">${label}</text>`).join("");
  return `<line x1="${L}" y1="${H - B}" x2="${W}" y2="${H - B}" stroke="#999"/><line x1="${L}" y1="0" x2="${L}" y2="${H - B}" stroke="#999"/>
    ${xs}${ys}<text x="${(L + W) / 2}" y="${H - 2}" text-anchor="middle">${xLabel}</text>`;
}
function accTicks(lo, hi, Y) {
  const step = hi - lo > 0.3 ? 0.1 : hi - lo > 0.1 ? 0.05 : 0.01, out = [];
  for (let a = Math.ceil(lo / step) * step; a <= hi + 1e-9; a += step) out.push([Y(a), (100 * a).toFixed(0) + " %"]);
  return out;
}
function scatter(c) {
  const W = 440, H = 270, L = 50, B = 34;
  if (!c.length) return '<p class="muted">no candidates recorded</p>';
  const maxP = Math.max(1, ...c.map(x => x.params_added)), hi = Math.max(...c.map(x => x.validation_accuracy));
  const lo = Math.min(hi - 0.05, ...c.map(x => x.validation_accuracy));
  const X = p => L + (W - L - 10) * Math.log10(1 + p) / Math.log10(1 + maxP), Y = a => H - B - (H - B - 10) * (a - lo) / Math.max(1e-9, hi - lo);
  const xTicks = [0, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7].filter(p => p <= maxP).map(p => [X(p), num(p)]);
  const dots = c.map(x => `<circle class="candidate" cx="${X(x.params_added).toFixed(1)}" cy="${Y(x.validation_accuracy).toFixed(1)}" r="4"
    fill="${x.kind === "probe" ? "#999" : x.accepted ? "#2c7be5" : "none"}" stroke="#2c7be5"><title>generation ${x.generation}, ${x.kind},
    ${pct(x.validation_accuracy)}, +${num(x.params_added)} params${x.accepted ? ", joined the population" : ""}</title></circle>`).join("");
  return `<svg width="${W}" height="${H}" font-size="10">${axes(W, H, L, B, xTicks, accTicks(lo, hi, Y), "params added (log scale)")}${dots}</svg>
    <p class="muted">holdout accuracy · grey: converged probes · filled: joined the population · open: rejected</p>`;
}
function timeline(v) {
  const W = 440, H = 220, L = 50, B = 34;
  if (!v.length) return '<p class="muted">no versions</p>';
  const t0 = v[0].created_at, now = Date.now() / 1000, end = Math.max(now, t0 + 1);
  const accs = v.map(x => x.validation_accuracy || 0), hi = Math.max(...accs), lo = Math.min(hi - 0.05, ...accs);
  const X = t => L + (W - L - 10) * Math.log10(1 + t - t0) / Math.log10(1 + end - t0), Y = a => H - B - (H - B - 10) * (a - lo) / Math.max(1e-9, hi - lo);
  const xTicks = [0, 10, 60, 600, 3600, 86400].filter(s => s <= end - t0).map(s => [X(t0 + s), s < 60 ? s + " s" : s < 3600 ? s / 60 + " min" : s / 3600 + " h"]);
  let d = "";
  v.forEach((x, i) => { const y = Y(x.validation_accuracy || 0).toFixed(1);
    d += (i ? ` H ${X(x.created_at).toFixed(1)} V ${y}` : `M ${X(x.created_at).toFixed(1)} ${y}`); });
  d += ` H ${X(end).toFixed(1)}`;
  const dots = v.map(x => `<circle class="published" cx="${X(x.created_at).toFixed(1)}" cy="${Y(x.validation_accuracy || 0).toFixed(1)}" r="4"
    fill="${x.kind === "trained" ? "#2c7be5" : "#999"}"><title>version ${x.version} (${esc(x.kind || "")}): ${pct(x.validation_accuracy)}, +${num(x.params_added)} params</title></circle>`).join("");
  return `<svg width="${W}" height="${H}" font-size="10">${axes(W, H, L, B, xTicks, accTicks(lo, hi, Y), "time since version 1 (log scale)")}
    <path d="${d}" fill="none" stroke="#2c7be5"/>${dots}</svg><p class="muted">each step a published version · grey: probe · blue: trained</p>`;
}
refresh();
setInterval(refresh, 3000);
</script>
</body></html>
"""
