// sisas dashboard: the runs list and a run page, kept live by server-sent events.
// Read-only: it only ever GETs. No framework, no CDN.
"use strict";

const $ = (sel) => document.querySelector(sel);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const when = (t) => (t ? t.replace("T", " ").replace(/\..*$/, "").replace("Z", "") : "-");
const secs = (v) => (v == null ? "-" : v < 1 ? `${(v * 1000).toFixed(0)} ms` : `${v.toFixed(2)} s`);
const NS = "http://www.w3.org/2000/svg";
window.sisas = {events: 0, loads: 0};

async function getJSON(url) {
  const r = await fetch(url, {cache: "no-store"});
  if (!r.ok) throw new Error(`${url}: ${r.status} ${(await r.text()).slice(0, 200)}`);
  return r.json();
}

function debounce(fn, ms) {
  let t = null;
  return () => { if (t) return; t = setTimeout(() => { t = null; fn(); }, ms); };
}

// Reload at most once per `ms`, and never while a load is in flight; when a load takes
// long (a big run's page), wait twice as long as it took before the next one, so an
// open page costs the server a bounded share of its time however fast signals come.
function paced(load, ms) {
  let timer = null, busy = false, again = false, took = 0;
  const run = async () => {
    timer = null; busy = true;
    const t0 = performance.now();
    try { await load(); } finally {
      took = performance.now() - t0; busy = false;
      if (again) { again = false; schedule(); }
    }
  };
  const schedule = () => {
    if (busy) { again = true; return; }
    if (!timer) timer = setTimeout(run, Math.max(ms, 2 * took));
  };
  return schedule;
}

// The live stream: on every (re)connection the page refetches its state, so a restart
// of the server or a dropped connection never leaves it stale.
function connect(onSignal, refetch) {
  const live = $("#live");
  const es = new EventSource("/events");
  es.addEventListener("hello", () => { live.textContent = "live"; live.className = "live on"; refetch(); });
  es.addEventListener("resync", refetch);
  es.addEventListener("signal", (e) => { window.sisas.events++; onSignal(JSON.parse(e.data)); });
  es.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
  return es;
}

// ---- runs list ------------------------------------------------------------------------

const ENDS = {run_started: "running", run_completed: "completed", run_failed: "failed", run_cancelled: "cancelled"};

async function loadRuns() {
  const params = new URLSearchParams({limit: "200"});
  if ($("#pipeline").value) params.set("pipeline", $("#pipeline").value);
  if ($("#status").value) params.set("status", $("#status").value);
  const data = await getJSON(`/api/runs?${params}`);
  window.sisas.loads++;
  const body = $("#runs tbody");
  body.innerHTML = data.runs.map((r) => `
    <tr class="run-row${r.tampered ? " tampered" : ""}" data-run-id="${esc(r.run_id)}" data-status="${esc(r.status)}" data-tampered="${r.tampered ? "true" : "false"}">
      <td><a href="/runs/${esc(r.run_id)}">${esc(r.run_id)}</a></td><td>${esc(r.pipeline)}</td>
      <td><span class="status st-${esc(r.status)}">${esc(r.status)}</span>${r.tampered ? ` <span class="status st-tampered" title="stream seq ${esc(r.tampered_stream_seq)} (${esc(r.tampered_problem)}): ${esc(r.tampered_message)}">TAMPERED</span>` : ""}</td>
      <td>${esc(when(r.started_at || r.requested_at))}</td><td>${esc(secs(r.duration))}</td>
      <td>${esc(r.phases_done)}/${esc(r.phases)}</td><td class="signals">${esc(r.signals)}</td><td>${esc(r.failed_phase)}</td>
    </tr>`).join("");
  $("#empty").hidden = data.runs.length > 0;
  $("#count").textContent = `${data.runs.length} runs` + (data.lag ? ` (projection ${data.lag} behind)` : "");
  const select = $("#pipeline");
  for (const name of new Set(data.runs.map((r) => r.pipeline))) {
    if (![...select.options].some((o) => o.value === name)) select.add(new Option(name, name));
  }
}

function runsPage() {
  const reload = debounce(() => loadRuns().catch(console.error), 250);
  $("#pipeline").onchange = reload;
  $("#status").onchange = reload;
  document.body.addEventListener("click", (e) => {
    const row = e.target.closest("tr.run-row");
    if (row && !e.target.closest("a")) location.href = `/runs/${row.dataset.runId}`;
  });
  connect((ev) => {
    const row = document.querySelector(`tr[data-run-id="${CSS.escape(ev.run_id)}"]`);
    if (!row || ev.kind === "run_requested" || ENDS[ev.kind]) { reload(); return; }
    const cell = row.querySelector(".signals");
    cell.textContent = String(Number(cell.textContent) + 1);
  }, reload);
}

// ---- run page -------------------------------------------------------------------------

function svg(tag, attrs, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text != null) el.textContent = text;
  return el;
}

function drawDag(phases) {
  const box = $("#dag");
  box.innerHTML = '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#999"/></marker></defs>';
  const W = 150, H = 34, GX = 50, GY = 14;
  const at = {};
  for (const p of phases) at[p.name] = {x: 10 + p.col * (W + GX), y: 10 + p.row * (H + GY)};
  const rows = Math.max(1, ...phases.map((p) => p.row + 1));
  const cols = Math.max(1, ...phases.map((p) => p.col + 1));
  box.setAttribute("viewBox", `0 0 ${20 + cols * (W + GX)} ${20 + rows * (H + GY)}`);
  box.style.height = `${20 + rows * (H + GY)}px`;
  for (const p of phases) for (const d of p.depends_on) {
    const a = at[d], b = at[p.name];
    box.append(svg("path", {class: "edge", d: `M${a.x + W},${a.y + H / 2} C${a.x + W + GX / 2},${a.y + H / 2} ${b.x - GX / 2},${b.y + H / 2} ${b.x},${b.y + H / 2}`}));
  }
  for (const p of phases) {
    const g = svg("g", {class: "node", "data-phase": p.name, "data-status": p.status});
    g.append(svg("rect", {x: at[p.name].x, y: at[p.name].y, width: W, height: H, class: `fill-${p.status}`}));
    const items = p.items != null ? ` ${p.items_done}/${p.items}` : "";
    g.append(svg("text", {x: at[p.name].x + 8, y: at[p.name].y + 15}, p.name));
    g.append(svg("text", {x: at[p.name].x + 8, y: at[p.name].y + 29, fill: "#444"}, p.status + items));
    g.append(svg("title", {}, `${p.name}: ${p.status}${p.error ? " — " + p.error : ""}`));
    box.append(g);
  }
}

function drawGantt(bars, ended) {
  const box = $("#gantt");
  box.innerHTML = "";
  const t = (s) => (s ? Date.parse(s) : null);
  const starts = bars.map((b) => t(b.scheduled)).filter((v) => v != null);
  if (!starts.length) { box.style.height = "0"; return; }
  const t0 = Math.min(...starts);
  const now = ended ? Math.max(...bars.map((b) => t(b.ended) || t(b.started) || t(b.scheduled))) : Date.now();
  const span = Math.max(now - t0, 1);
  const LEFT = 170, W = 900, ROW = 16;
  box.setAttribute("viewBox", `0 0 ${LEFT + W + 20} ${bars.length * ROW + 24}`);
  box.style.height = `${Math.min(bars.length * ROW + 24, 600)}px`;
  bars.forEach((b, i) => {
    const y = 4 + i * ROW;
    const label = `${b.phase}${b.item != null ? "[" + b.item + "]" : ""}${b.attempt ? " #" + (b.attempt + 1) : ""}`;
    box.append(svg("text", {x: 4, y: y + 11}, label));
    const s = t(b.started) ?? t(b.scheduled), e = t(b.ended) ?? now;
    const x = LEFT + ((s - t0) / span) * W, w = Math.max(((e - s) / span) * W, 2);
    const r = svg("rect", {x, y, width: w, height: ROW - 4, class: `fill-${b.status}`, "data-status": b.status});
    r.append(svg("title", {}, `${label}: ${b.status} on ${b.worker || "-"}${b.error ? " — " + b.error : ""}`));
    box.append(r);
  });
  box.append(svg("text", {x: LEFT, y: bars.length * ROW + 20, fill: "#777"}, `0 → ${secs(span / 1000)}`));
}

function renderRun(v) {
  document.title = `sisas · ${v.run_id}`;
  $("#run-id").textContent = v.run_id;
  const badge = $("#run-status");
  badge.textContent = v.status; badge.className = `badge st-${v.status}`; badge.dataset.status = v.status;
  $("#run-meta").textContent = `${v.pipeline} ${v.version} · seed ${v.seed} · started ${when(v.started_at || v.requested_at)} · ${v.signals} signals` + (v.fingerprint ? ` · fingerprint ${v.fingerprint.slice(0, 23)}…` : "");
  const tampered = $("#run-tampered");
  tampered.hidden = !v.tampered;
  tampered.textContent = v.tampered ? `TAMPERED at stream seq ${v.tampered.stream_seq} (${v.tampered.problem}): ${v.tampered.message}. Not shown here: the signals verify flags in this run's log. Check the whole run: sisas replay verify ${v.run_id}` : "";
  $("#run-error").hidden = !v.error;
  $("#run-error").textContent = v.error ? `${v.error} (phase ${v.failed_phase || "-"})` : "";
  $("#report-link").href = `/runs/${encodeURIComponent(v.run_id)}/report`;
  $("#verify-cmd").textContent = `sisas replay verify ${v.run_id}`;
  drawDag(v.phases);
  drawGantt(v.timeline, ["completed", "failed", "cancelled"].includes(v.status));
  $("#phases tbody").innerHTML = v.phases.map((p) => `
    <tr data-phase="${esc(p.name)}" data-status="${esc(p.status)}">
      <td>${esc(p.name)}</td><td><span class="status st-${esc(p.status)}">${esc(p.status)}</span></td>
      <td>${esc(p.attempts)}</td>
      <td>${p.items != null ? `<progress max="${p.items}" value="${p.items_done}"></progress> ${p.items_done}/${p.items}` : ""}</td>
      <td class="error">${esc(p.error || (p.skip_reason ? "skipped: " + p.skip_reason : ""))}${p.quarantined ? ` <span class="muted">(output quarantined: ${esc(p.quarantined.slice(0, 19))}…)</span>` : ""}</td>
    </tr>`).join("");
  $("#incidents").innerHTML = v.incidents.map((i) => `<li data-kind="${esc(i.kind)}">${esc(when(i.at))} <b>${esc(i.kind)}</b> ${esc(i.phase)}${i.item != null ? "[" + i.item + "]" : ""} attempt ${i.attempt + 1}: ${esc(i.summary)}</li>`).join("") || '<li class="muted">none</li>';
  const failed = v.checks.filter((c) => !c.passed).length;
  $("#checks-summary").textContent = `${v.checks.length} checks, ${failed} failed`;
  $("#checks tbody").innerHTML = v.checks.map((c) => `
    <tr class="${c.passed ? "" : "error"}"><td>${c.seq}</td><td>${esc(c.phase)}${c.item != null ? "[" + c.item + "]" : ""}</td>
    <td>${esc(c.type)} ${esc(c.name)}</td><td>${c.passed ? "passed" : "FAILED"}</td><td>${esc(c.detail)}</td></tr>`).join("");
}

function runPage() {
  const runId = decodeURIComponent(location.pathname.split("/")[2] || "");
  const load = async () => {
    try { renderRun(await getJSON(`/api/runs/${encodeURIComponent(runId)}`)); window.sisas.loads++; }
    catch (err) { $("#run-error").hidden = false; $("#run-error").textContent = String(err.message); }
  };
  const reload = paced(load, 100);
  connect((ev) => { if (ev.run_id === runId) reload(); }, reload);
}

if (document.body.dataset.page === "run") runPage(); else runsPage();
