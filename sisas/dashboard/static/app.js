// sisas dashboard: the runs list and a run page, kept live by server-sent events.
// Read-only: it only ever GETs. No framework, no CDN.
"use strict";

const $ = (sel) => document.querySelector(sel);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const when = (t) => (t ? t.replace("T", " ").replace(/\..*$/, "").replace("Z", "") : "-");
const secs = (v) => (v == null ? "-" : v < 1 ? `${(v * 1000).toFixed(0)} ms` : `${v.toFixed(2)} s`);
const NS = "http://www.w3.org/2000/svg";
window.sisas = {events: 0, loads: 0, bytes: 0};

async function getJSON(url) {
  const r = await fetch(url, {cache: "no-store"});
  if (!r.ok) throw new Error(`${url}: ${r.status} ${(await r.text()).slice(0, 200)}`);
  const text = await r.text();
  window.sisas.bytes += text.length;  // what the page downloaded (bench/pages.py reads it)
  return JSON.parse(text);
}

function debounce(fn, ms) {
  let t = null;
  return () => { if (t) return; t = setTimeout(() => { t = null; fn(); }, ms); };
}

// Reload at most once per `every` ms (a number, or a function saying it now), and never
// while a load is in flight; when a load takes long (a big run's page), wait twice as
// long as it took before the next one, so an open page costs the server a bounded share
// of its time however fast signals come. A hidden tab (another tab in front, a
// minimised window) loads nothing: it loads once when it is seen again.
function paced(load, every) {
  const ms = () => (typeof every === "function" ? every() : every);
  let timer = null, busy = false, again = false, took = 0;
  let missed = false;  // a change came while the tab was hidden: load when it is seen
  const run = async () => {
    timer = null;
    if (document.hidden) { missed = true; return; }
    busy = true;
    const t0 = performance.now();
    try { await load(); } finally {
      took = performance.now() - t0; busy = false;
      if (again) { again = false; schedule(); }
    }
  };
  const schedule = () => {
    if (document.hidden) { missed = true; return; }
    if (busy) { again = true; return; }
    if (!timer) timer = setTimeout(run, Math.max(ms(), 2 * took));
  };
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && missed) { missed = false; schedule(); }
  });
  return schedule;
}

// The live stream: on every (re)connection the page refetches its state, so a restart
// of the server or a dropped connection never leaves it stale.
// A run page asks for its run's changes only (`/events?run=RUN`): at most one
// `changed` event every quarter second, however fast the run's signals come.
function connect(onSignal, refetch, runId) {
  const live = $("#live");
  const es = new EventSource(runId ? `/events?run=${encodeURIComponent(runId)}` : "/events?runs=1");
  es.addEventListener("hello", () => { live.textContent = "live"; live.className = "live on"; refetch(); });
  es.addEventListener("resync", refetch);
  es.addEventListener("signal", (e) => { window.sisas.events++; onSignal(JSON.parse(e.data)); });
  es.addEventListener("changed", () => { window.sisas.events++; refetch(); });
  es.addEventListener("runs", (e) => { window.sisas.events++; onSignal(JSON.parse(e.data)); });
  es.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
  return es;
}

// ---- runs list ------------------------------------------------------------------------

const ENDS = {run_started: "running", run_completed: "completed", run_failed: "failed", run_cancelled: "cancelled"};

async function loadRuns() {
  const params = new URLSearchParams({limit: "200"});
  if ($("#pipeline").value) params.set("pipeline", $("#pipeline").value);
  if ($("#status").value) params.set("status", $("#status").value);
  for (const tag of $("#tag").value.split(/[\s,]+/).filter(Boolean)) params.append("tag", tag);
  let data;
  try {
    data = await getJSON(`/api/runs?${params}`);
    $("#tag").setCustomValidity("");
  } catch (e) {
    if (!params.has("tag") || !String(e.message).includes(": 400 ")) throw e;
    let why = String(e.message).replace(/^.*?: 400 /, "");
    try { why = JSON.parse(why).error || why; } catch (_) { /* not JSON: as it came */ }
    $("#tag").setCustomValidity(why);
    $("#count").textContent = why;
    return;
  }
  window.sisas.loads++;
  const body = $("#runs tbody");
  body.innerHTML = data.runs.map((r) => `
    <tr class="run-row${r.tampered ? " tampered" : ""}" data-run-id="${esc(r.run_id)}" data-status="${esc(r.status)}" data-tampered="${r.tampered ? "true" : "false"}">
      <td><a href="/runs/${esc(r.run_id)}">${esc(r.run_id)}</a></td><td>${esc(r.pipeline)}</td>
      <td><span class="status st-${esc(r.status)}">${esc(r.status)}</span>${r.tampered ? ` <span class="status st-tampered" title="stream seq ${esc(r.tampered_stream_seq)} (${esc(r.tampered_problem)}): ${esc(r.tampered_message)}">TAMPERED</span>` : ""}</td>
      <td>${esc(when(r.started_at || r.requested_at))}</td><td>${esc(secs(r.duration))}</td>
      <td>${esc(r.phases_done)}/${esc(r.phases)}</td><td class="signals">${esc(r.signals)}</td><td>${esc(r.failed_phase)}</td>
      <td class="tags">${Object.entries(r.tags || {}).sort().map(([k, v]) => `<span class="tag">${esc(k)}=${esc(v)}</span>`).join(" ")}</td>
    </tr>`).join("");
  $("#empty").hidden = data.runs.length > 0;
  const n = data.runs.length;
  $("#count").textContent = `${n} run${n === 1 ? "" : "s"}` + (data.lag ? ` (projection ${data.lag} behind)` : "");
  const select = $("#pipeline");
  for (const name of new Set(data.runs.map((r) => r.pipeline))) {
    if (![...select.options].some((o) => o.value === name)) select.add(new Option(name, name));
  }
}

function runsPage() {
  const reload = debounce(() => loadRuns().catch(console.error), 250);
  $("#pipeline").onchange = reload;
  $("#status").onchange = reload;
  $("#tag").oninput = reload;
  document.body.addEventListener("click", (e) => {
    const row = e.target.closest("tr.run-row");
    if (row && !e.target.closest("a")) location.href = `/runs/${row.dataset.runId}`;
  });
  // The runs list hears, at most 4 times a second, how many signals each busy run
  // has so far, and whether one started or ended (then the list is fetched again).
  connect((runs) => {
    for (const [runId, [signals, startedOrEnded]] of Object.entries(runs)) {
      const row = document.querySelector(`tr[data-run-id="${CSS.escape(runId)}"]`);
      if (!row || startedOrEnded) { reload(); continue; }
      row.querySelector(".signals").textContent = String(signals);
    }
  }, reload);
}

// ---- run page -------------------------------------------------------------------------
// The run's JSON is a bounded summary: a fan-out is one phase row, one timeline lane and
// one group per check; its items and the checks one by one are paged from the server.
// Attempts are numbered from 0, as ctx.attempt.

const BAD = new Set(["failed", "timed_out", "cancelled"]);
const FAILED = new Set(["failed", "timed_out"]);
// An item's error: red when it ended with it; otherwise what made it retry, greyed.
const itemError = (status, error) => (!error ? "" : FAILED.has(status)
  ? `<span class="error">${esc(error)}</span>` : `<span class="muted">retried after: ${esc(error)}</span>`);
const NUMBER = new Intl.NumberFormat("en-US");  // made once: toLocaleString makes one a call
const num = (n) => NUMBER.format(Number(n));
const itemLabel = (item) => (item != null ? `[${item}]` : "");

function svg(tag, attrs, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text != null) el.textContent = text;
  return el;
}

// Boxes in columns by depth. An edge to the next column is a curve; an edge that skips
// columns runs in the free gap under its source's row, so it never hides behind a box.
function drawDag(phases) {
  const box = $("#dag");
  box.innerHTML = '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>';
  const W = 190, H = 38, GX = 56, GY = 26;
  const at = {};
  for (const p of phases) at[p.name] = {x: 10 + p.col * (W + GX), y: 10 + p.row * (H + GY), col: p.col};
  const rows = Math.max(1, ...phases.map((p) => p.row + 1));
  const cols = Math.max(1, ...phases.map((p) => p.col + 1));
  const height = 20 + rows * (H + GY);
  box.setAttribute("viewBox", `0 0 ${20 + cols * (W + GX)} ${height}`);
  box.style.height = `${height}px`;
  box.style.maxWidth = `${20 + cols * (W + GX)}px`;
  for (const p of phases) for (const d of p.depends_on) {
    const a = at[d], b = at[p.name];
    if (!a || !b) continue;
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
    let path;
    if (b.col - a.col <= 1) {
      path = `M${x1},${y1} C${x1 + GX / 2},${y1} ${x2 - GX / 2},${y2} ${x2},${y2}`;
    } else {
      const gy = a.y + H + GY / 2;  // the gap under the source's row: no box there
      path = `M${x1},${y1} C${x1 + GX / 2},${y1} ${x1},${gy} ${x1 + GX / 2},${gy} L${x2 - GX / 2},${gy} C${x2},${gy} ${x2 - GX / 2},${y2} ${x2},${y2}`;
    }
    box.append(svg("path", {class: "edge", d: path, "data-from": d, "data-to": p.name}));
  }
  for (const p of phases) {
    const g = svg("g", {class: "node", "data-phase": p.name, "data-status": p.status});
    g.append(svg("rect", {x: at[p.name].x, y: at[p.name].y, width: W, height: H, class: `fill-${p.status}`}));
    const items = p.items != null ? ` ${num(p.items_done)}/${num(p.items)}` : "";
    g.append(svg("text", {x: at[p.name].x + 8, y: at[p.name].y + 16, "font-weight": "600"}, p.name));
    g.append(svg("text", {x: at[p.name].x + 8, y: at[p.name].y + 31, fill: "#444"}, p.status.replace("_", " ") + items));
    g.append(svg("title", {}, `${p.name}: ${p.status}${p.error ? " — " + p.error : ""}${p.skip_reason ? " — " + p.skip_reason : ""}`));
    box.append(g);
  }
}

// One lane per attempt of a plain phase; one lane per fan-out, its items' density over
// its span (how many ran in each slice; red marks where attempts ended badly), so
// 10,000 items read as one band, not 10,000 bars.
function drawGantt(tl, ended) {
  const box = $("#gantt");
  box.innerHTML = "";
  const t = (s) => (s ? Date.parse(s) : null);
  if (!tl.start || !tl.lanes.length) { box.style.height = "0"; return; }
  const t0 = t(tl.start);
  const now = ended ? t(tl.end) : Math.max(Date.now(), t(tl.end));
  const span = Math.max(now - t0, 1);
  const LEFT = 200, W = 880, ROW = 20, BAND = 44;
  const x = (ms) => LEFT + ((ms - t0) / span) * W;
  let y = 6;
  for (const lane of tl.lanes) {
    const s = t(lane.start) ?? t0, e = t(lane.end) ?? now;
    if (lane.kind === "items") {
      const g = svg("g", {class: "lane lane-items", "data-phase": lane.phase, "data-status": lane.status});
      g.append(svg("text", {x: 4, y: y + 15, "font-weight": "600"}, lane.phase));
      g.append(svg("text", {x: 4, y: y + 31, fill: "#555"}, `${num(lane.items)} items · ${num(lane.attempts)} attempts`));
      const x0 = x(s), w = Math.max(x(e) - x0, 2), peak = Math.max(1, ...lane.density);
      g.append(svg("rect", {x: x0, y, width: w, height: BAND - 6, class: "band"}));
      const step = w / lane.density.length;
      let d = `M${x0},${y + BAND - 6}`;
      lane.density.forEach((n, k) => {
        const h = ((BAND - 8) * n) / peak;
        d += ` L${x0 + k * step},${y + BAND - 6 - h} L${x0 + (k + 1) * step},${y + BAND - 6 - h}`;
      });
      d += ` L${x0 + w},${y + BAND - 6} Z`;
      g.append(svg("path", {d, class: `density fill-${lane.status}`}));
      lane.bad.forEach((n, k) => {
        if (n) g.append(svg("rect", {x: x0 + k * step, y: y + BAND - 5, width: Math.max(step, 2), height: 4, class: "bad-tick"}));
      });
      g.append(svg("title", {}, `${lane.phase}: ${num(lane.items)} items, ${num(lane.attempts)} attempts, at most ${num(peak)} at once; ${secs((e - s) / 1000)}`));
      box.append(g);
      y += BAND + 4;
    } else {
      const label = `${lane.phase}${itemLabel(lane.item)}${lane.attempt ? " · attempt " + lane.attempt : ""}`;
      box.append(svg("text", {x: 4, y: y + 13}, label));
      const r = svg("rect", {x: x(s), y, width: Math.max(x(e) - x(s), 2), height: ROW - 6, class: `fill-${lane.status}`, "data-status": lane.status, "data-phase": lane.phase});
      r.append(svg("title", {}, `${lane.phase} attempt ${lane.attempt}: ${lane.status} on ${lane.worker || "-"}${lane.error ? " — " + lane.error : ""}`));
      box.append(r);
      y += ROW;
    }
  }
  if (tl.hidden) { box.append(svg("text", {x: 4, y: y + 12, fill: "#777"}, `… ${tl.hidden} more lanes not drawn`)); y += ROW; }
  box.append(svg("line", {x1: LEFT, x2: LEFT + W, y1: y + 2, y2: y + 2, stroke: "#bbb"}));
  box.append(svg("text", {x: LEFT, y: y + 16, fill: "#777"}, "0"));
  box.append(svg("text", {x: LEFT + W, y: y + 16, fill: "#777", "text-anchor": "end"}, secs(span / 1000)));
  box.setAttribute("viewBox", `0 0 ${LEFT + W + 20} ${y + 22}`);
  box.style.height = `${y + 22}px`;
}

const whole = (text) => (text ? `<details class="whole"><summary>whole error</summary><pre>${esc(text)}</pre></details>` : "");

// An attempt's log (ctx.log, what it printed, its traceback), fetched when opened, and
// kept open with its text across the re-renders of a live page.
const openLogs = new Map();
const logKey = (phase, item, attempt) => `${phase}|${item ?? ""}|${attempt}`;
const logToggles = (phase, item, logs) => (logs || []).map(([attempt, lines]) => logToggle(phase, item, attempt, lines)).join("");
const logToggle = (phase, item, attempt, lines) => (lines == null ? "" :
  `<details class="log" data-key="${esc(logKey(phase, item, attempt))}" data-phase="${esc(phase)}" data-item="${item ?? ""}" data-attempt="${attempt}"><summary>log of attempt ${attempt} (${num(lines)} lines)</summary><pre></pre></details>`);

function reopenLogs(root) {
  for (const d of root.querySelectorAll("details.log")) {
    if (openLogs.has(d.dataset.key)) { d.open = true; d.querySelector("pre").textContent = openLogs.get(d.dataset.key); }
  }
}

function wireLogs(runId) {
  document.addEventListener("toggle", async (e) => {
    const d = e.target;
    if (!d.matches || !d.matches("details.log")) return;
    if (!d.open) { openLogs.delete(d.dataset.key); return; }
    if (openLogs.has(d.dataset.key)) return;
    const pre = d.querySelector("pre");
    pre.textContent = "loading…";
    const params = new URLSearchParams({phase: d.dataset.phase, item: d.dataset.item, attempt: d.dataset.attempt});
    try {
      const log = await getJSON(`/api/runs/${encodeURIComponent(runId)}/log?${params}`);
      const text = (log.text || "(empty)") + (log.cut ? "\n… (cut)" : "");
      openLogs.set(d.dataset.key, text);
      if (d.open) pre.textContent = text;
    } catch (err) { pre.textContent = String(err.message); }
  }, true);  // toggle does not bubble
}

function phaseDetail(p) {
  const log = logToggles(p.name, null, p.logs);
  if (p.error) return `<span class="error">${esc(p.error)}</span>${whole(p.error_full)}${log}`;
  if (p.skip_reason) return `<span class="muted">skipped: ${esc(p.skip_reason)}</span>`;
  return log;
}

function fanoutCells(p) {
  const f = p.fanout;
  if (!f) return ["", ""];
  const chips = Object.entries(f.counts).map(([s, n]) => `<span class="chip st-${esc(s)}" data-count="${esc(s)}">${esc(s.replace("_", " "))} ${num(n)}</span>`).join(" ");
  const retried = f.retried ? ` <span class="chip st-retried">retried ${num(f.retried)}</span>` : "";
  const progress = `<progress max="${p.items}" value="${p.items_done}"></progress> ${num(p.items_done)}/${num(p.items)}<br>${chips}${retried}`;
  const pct = f.p50 == null ? "-" : `${secs(f.p50)} / ${secs(f.p95)} / ${secs(f.max)}`;
  return [progress, `<span class="pct">${pct}</span>`];
}

function renderPhases(v) {
  $("#phases tbody").innerHTML = v.phases.map((p) => {
    const [progress, pct] = fanoutCells(p);
    const retries = p.attempt ? ` <span class="muted">(${p.attempt} ${p.attempt === 1 ? "retry" : "retries"})</span>` : "";
    const open = p.fanout ? ` <button type="button" class="items-btn" data-phase="${esc(p.name)}">items…</button>` : "";
    return `
    <tr data-phase="${esc(p.name)}" data-status="${esc(p.status)}"${p.fanout ? ' class="fanout"' : ""}>
      <td><b>${esc(p.name)}</b>${p.map_over ? `<br><span class="muted">over ${esc(p.map_over)}</span>` : ""}</td>
      <td><span class="status st-${esc(p.status)}">${esc(p.status.replace("_", " "))}</span></td>
      <td class="attempt">${p.attempts ? esc(p.attempt) + retries : "-"}</td>
      <td class="duration">${esc(secs(p.duration))}</td>
      <td>${progress}${open}</td><td>${pct}</td>
      <td class="detail">${phaseDetail(p)}${p.quarantined ? ` <span class="muted">(output quarantined: ${esc(p.quarantined.slice(0, 19))}…)</span>` : ""}</td>
    </tr>`;
  }).join("");
  reopenLogs($("#phases"));
}

// ---- the items of a fan-out: its summary from the run's JSON, its pages from the API

const itemsView = {phase: null, offset: 0, limit: 50, q: "", status: "", order: "problems"};

function renderFanoutSummary(p) {
  const f = p.fanout;
  const slow = f.slowest.map((s) => `<li><a href="#" class="item-link" data-item="${s.item}">${esc(p.name)}[${s.item}]</a> ${esc(secs(s.duration))}</li>`).join("") || '<li class="muted">none yet</li>';
  const bad = f.failed.map((s) => `<li><a href="#" class="item-link" data-item="${s.item}">${esc(p.name)}[${s.item}]</a> <span class="status st-${esc(s.status)}">${esc(s.status)}</span> attempt ${s.attempt}: ${itemError(s.status, s.error)}</li>`).join("") || '<li class="muted">none</li>';
  $("#items-summary").innerHTML = `
    <div><h3>slowest</h3><ol id="items-slowest">${slow}</ol></div>
    <div><h3>failed, cancelled or retried <span class="muted">(${num(f.failed_total)})</span></h3><ol id="items-failed">${bad}</ol></div>`;
}

async function loadItems(runId) {
  const v = itemsView;
  if (!v.phase) return;
  const params = new URLSearchParams({offset: v.offset, limit: v.limit, order: v.order});
  if (v.q) params.set("q", v.q);
  if (v.status) params.set("status", v.status);
  const page = await getJSON(`/api/runs/${encodeURIComponent(runId)}/phases/${encodeURIComponent(v.phase)}/items?${params}`);
  window.sisas.itemPages = (window.sisas.itemPages || 0) + 1;
  $("#items tbody").innerHTML = page.rows.map((r) => `
    <tr data-item="${r.item}" data-status="${esc(r.status)}">
      <td>${esc(page.phase)}[${r.item}]</td><td><span class="status st-${esc(r.status)}">${esc(r.status.replace("_", " "))}</span></td>
      <td>${r.attempt}</td><td>${esc(secs(r.duration))}</td><td>${esc(r.worker || "-")}</td>
      <td>${itemError(r.status, r.error)}${whole(r.error_full)}${logToggles(page.phase, r.item, r.logs)}</td>
    </tr>`).join("") || '<tr><td colspan="6" class="muted">no item matches</td></tr>';
  reopenLogs($("#items"));
  const last = Math.min(page.offset + page.limit, page.matched);
  $("#items-range").textContent = page.matched ? `${num(page.offset + 1)}-${num(last)} of ${num(page.matched)}${page.matched !== page.items ? ` (of ${num(page.items)} items)` : ""}` : `0 of ${num(page.items)}`;
  $("#items-prev").disabled = page.offset === 0;
  $("#items-next").disabled = last >= page.matched;
}

function openItems(runId, phase, reload) {
  itemsView.phase = phase; itemsView.offset = 0;
  $("#items-panel").hidden = false;
  $("#items-title").textContent = `items of ${phase}`;
  reload();
}

function wireItems(runId, reloadItems) {
  const refilter = debounce(() => { itemsView.q = $("#item-q").value.trim(); itemsView.offset = 0; reloadItems(); }, 200);
  $("#item-q").addEventListener("input", refilter);
  $("#item-status").onchange = () => { itemsView.status = $("#item-status").value; itemsView.offset = 0; reloadItems(); };
  $("#item-order").onchange = () => { itemsView.order = $("#item-order").value; itemsView.offset = 0; reloadItems(); };
  $("#items-prev").onclick = () => { itemsView.offset = Math.max(0, itemsView.offset - itemsView.limit); reloadItems(); };
  $("#items-next").onclick = () => { itemsView.offset += itemsView.limit; reloadItems(); };
  document.body.addEventListener("click", (e) => {
    const btn = e.target.closest(".items-btn");
    if (btn) { openItems(runId, btn.dataset.phase, reloadItems); $("#items-panel").scrollIntoView(); return; }
    const link = e.target.closest(".item-link");
    if (link) { e.preventDefault(); $("#item-q").value = link.dataset.item; itemsView.q = link.dataset.item; itemsView.offset = 0; reloadItems(); }
  });
}

// ---- checks: groups in the run's JSON, one group's checks paged from the API

const checksView = {group: "", offset: 0, limit: 50, failed: false};

function renderCheckGroups(c) {
  const more = c.groups_total > c.groups.length ? `, ${num(c.groups_total - c.groups.length)} more groups not shown` : "";
  $("#checks-summary").textContent = `${num(c.total)} checks in ${num(c.groups_total)} groups, ${num(c.failed)} failed${more}`;
  $("#check-groups tbody").innerHTML = c.groups.map((g) => {
    const f = g.last_failure;
    const sample = f ? `${esc(f.phase)}${itemLabel(f.item)} attempt ${f.attempt}: ${f.observed || f.expected ? `observed <b>${esc(f.observed)}</b>, expected <b>${esc(f.expected)}</b>` : esc(f.detail)}` : "";
    return `
    <tr class="group${g.failed ? " failing" : ""}" data-group="${esc(g.group)}" data-failed="${g.failed}">
      <td>${esc(g.phase)}</td><td>${esc(g.type)} <b>${esc(g.name)}</b></td>
      <td>${g.failed ? `<span class="status st-failed">${num(g.failed)} failed</span>` : ""} <span class="muted">${num(g.passed)} passed</span></td>
      <td>${sample}</td>
      <td><button type="button" class="group-btn" data-group="${esc(g.group)}">checks…</button></td>
    </tr>`;
  }).join("") || '<tr><td colspan="5" class="muted">no checks yet</td></tr>';
}

async function loadChecks(runId) {
  const v = checksView;
  if (!v.group) return;
  const params = new URLSearchParams({offset: v.offset, limit: v.limit, group: v.group});
  if (v.failed) params.set("failed", "1");
  const page = await getJSON(`/api/runs/${encodeURIComponent(runId)}/checks?${params}`);
  $("#checks tbody").innerHTML = page.rows.map((c) => `
    <tr class="${c.passed ? "" : "error"}" data-seq="${c.seq}"><td>${c.seq}</td><td>${esc(c.phase)}${itemLabel(c.item)}</td><td>${c.attempt}</td>
    <td>${esc(c.type)} ${esc(c.name)}</td><td>${c.passed ? "passed" : "FAILED"}</td>
    <td>${esc(c.observed)}</td><td>${esc(c.expected)}</td><td>${c.observed || c.expected ? "" : esc(c.detail)}</td></tr>`).join("");
  const last = Math.min(page.offset + page.limit, page.matched);
  $("#checks-range").textContent = page.matched ? `${num(page.offset + 1)}-${num(last)} of ${num(page.matched)}` : "none";
  $("#checks-prev").disabled = page.offset === 0;
  $("#checks-next").disabled = last >= page.matched;
}

function wireChecks(runId, reloadChecks) {
  $("#checks-failed").onchange = () => { checksView.failed = $("#checks-failed").checked; checksView.offset = 0; reloadChecks(); };
  $("#checks-prev").onclick = () => { checksView.offset = Math.max(0, checksView.offset - checksView.limit); reloadChecks(); };
  $("#checks-next").onclick = () => { checksView.offset += checksView.limit; reloadChecks(); };
  document.body.addEventListener("click", (e) => {
    const btn = e.target.closest(".group-btn");
    if (!btn) return;
    checksView.group = btn.dataset.group; checksView.offset = 0;
    $("#checks-panel").hidden = false;
    $("#checks-title").textContent = btn.dataset.group;
    reloadChecks();
  });
}

// What each part of the page was last drawn from: a part whose data did not change
// since the last load is left as it is (no DOM rebuilt, nothing laid out again).
const drawn = new Map();
function changed(part, data) {
  const key = JSON.stringify(data);
  if (drawn.get(part) === key) return false;
  drawn.set(part, key);
  return true;
}

function renderRun(v) {
  document.title = `sisas · ${v.run_id}`;
  $("#run-id").textContent = v.run_id;
  const badge = $("#run-status");
  badge.textContent = v.status; badge.className = `badge st-${v.status}`; badge.dataset.status = v.status;
  $("#run-meta").textContent = `${v.pipeline} ${v.version} · seed ${v.seed} · started ${when(v.started_at || v.requested_at)} · ${num(v.signals)} signals` + (v.fingerprint ? ` · fingerprint ${v.fingerprint.slice(0, 23)}…` : "")
    + (Object.keys(v.tags || {}).length ? ` · tags ${Object.entries(v.tags).sort().map(([k, t]) => `${k}=${t}`).join(" ")}` : "");
  const origin = $("#run-origin");
  origin.hidden = !v.resume_of;
  origin.innerHTML = v.resume_of ? `resumes <a href="/runs/${encodeURIComponent(v.resume_of)}">${esc(v.resume_of)}</a>` : "";
  const tampered = $("#run-tampered");
  tampered.hidden = !v.tampered;
  tampered.textContent = v.tampered ? `TAMPERED at stream seq ${v.tampered.stream_seq} (${v.tampered.problem}): ${v.tampered.message}. Not shown here: the signals verify flags in this run's log. Check the whole run: sisas replay verify ${v.run_id}` : "";
  $("#run-error").hidden = !v.error;
  $("#run-error").textContent = v.error ? `${v.error} (phase ${v.failed_phase || "-"})` : "";
  $("#report-link").href = `/runs/${encodeURIComponent(v.run_id)}/report`;
  $("#verify-cmd").textContent = `sisas replay verify ${v.run_id}`;
  if (changed("dag", v.phases.map((p) => [p.name, p.status, p.items_done, p.error, p.skip_reason]))) drawDag(v.phases);
  const ended = ["completed", "failed", "cancelled"].includes(v.status);
  if (changed("gantt", [v.timeline, ended])) drawGantt(v.timeline, ended);
  if (changed("phases", v.phases)) renderPhases(v);
  const fanned = v.phases.filter((p) => p.fanout);
  if (!itemsView.phase && fanned.length) { itemsView.phase = fanned[0].name; $("#items-panel").hidden = false; $("#items-title").textContent = `items of ${itemsView.phase}`; }
  const shown = fanned.find((p) => p.name === itemsView.phase);
  if (shown && changed("fanout", [shown.name, shown.fanout])) renderFanoutSummary(shown);
  const inc = v.incidents;
  if (changed("incidents", inc)) renderIncidents(inc);
  if (changed("checks", v.checks)) renderCheckGroups(v.checks);
  window.sisas.renders = (window.sisas.renders || 0) + 1;
}

function renderIncidents(inc) {
  $("#incidents-summary").textContent = inc.total > inc.latest.length ? `(latest ${inc.latest.length} of ${num(inc.total)})` : "";
  $("#incidents").innerHTML = inc.latest.map((i) => `<li data-kind="${esc(i.kind)}">${esc(when(i.at))} <b>${esc(i.kind)}</b> ${esc(i.phase)}${itemLabel(i.item)} attempt ${i.attempt}: ${esc(i.summary)}</li>`).join("") || '<li class="muted">none</li>';
}

function runPage() {
  const runId = decodeURIComponent(location.pathname.split("/")[2] || "");
  const fail = (err) => { $("#run-error").hidden = false; $("#run-error").textContent = String(err.message); };
  const reloadItems = paced(() => loadItems(runId).catch(fail), 50);
  const reloadChecks = paced(() => loadChecks(runId).catch(fail), 50);
  let refresh = 250;  // the server says how often, by the run's size
  let itemsAt = -Infinity;  // when the item page was last loaded with the summary
  const load = async () => {
    try {
      if (document.hidden) window.sisas.hiddenLoads = (window.sisas.hiddenLoads || 0) + 1;
      const v = await getJSON(`/api/runs/${encodeURIComponent(runId)}`);
      refresh = 1000 * (v.refresh || 0.25);
      renderRun(v);
      window.sisas.loads++;
      // The item page of a live run follows at half the summary's pace at most (it is
      // filtered and sorted over all the fan-out's items); an ended run's, at once.
      const ended = ["completed", "failed", "cancelled"].includes(v.status);
      if (itemsView.phase && (ended || performance.now() - itemsAt >= Math.max(2000, 2 * refresh))) {
        itemsAt = performance.now();
        await loadItems(runId);
      }
      if (checksView.group) await loadChecks(runId);
    } catch (err) { fail(err); }
  };
  wireItems(runId, reloadItems);
  wireLogs(runId);
  wireChecks(runId, reloadChecks);
  const reload = paced(load, () => refresh);
  connect((ev) => { if (ev.run_id === runId) reload(); }, reload, runId);
}

if (document.body.dataset.page === "run") runPage(); else runsPage();
