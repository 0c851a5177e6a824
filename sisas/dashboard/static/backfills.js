// The backfills page: one partition grid per pipeline, a row of squares per backfill,
// each square a partition coloured by the status of its last run. Read from
// GET /api/backfills every 2 s (a backfill's chain and runs are in the log).
"use strict";

(function () {
  const STATUSES = ["completed", "failed", "cancelled", "running", "queued", "missing"];

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) node.append(c);
    return node;
  }

  function counts(bf) {
    return STATUSES.filter((s) => bf.counts[s]).map((s) =>
      el("span", { class: `bf-count bf-${s}` }, `${bf.counts[s]} ${s}`));
  }

  function grid(bf) {
    const cells = bf.partitions.map((p) => {
      const title = `${p.partition}: ${p.status}` +
        (p.run_id ? ` · run ${p.run_id} (attempt ${p.attempts})` : "");
      const cell = el(p.run_id ? "a" : "span", {
        class: `bf-cell bf-${p.status}`, title,
        "data-partition": p.partition, "data-status": p.status,
      });
      if (p.run_id) cell.href = `/runs/${encodeURIComponent(p.run_id)}`;
      return cell;
    });
    return el("div", { class: "bf-grid", "data-backfill": bf.backfill_id }, ...cells);
  }

  function backfill(bf) {
    const every = bf.every ? ` · every ${bf.every} (${bf.timezone})` : " · listed keys";
    const limit = bf.max_concurrent ? ` · at most ${bf.max_concurrent} at once` : "";
    const parts = bf.partitions;
    const span = parts.length ? ` · ${parts[0].partition} … ${parts[parts.length - 1].partition}` : "";
    return el("div", { class: "bf-backfill", "data-backfill": bf.backfill_id, "data-state": bf.state },
      el("div", { class: "bf-head" },
        el("code", {}, bf.backfill_id),
        el("span", { class: `status st-${bf.state === "finished" ? "completed" : "running"}` }, bf.state),
        el("span", { class: "muted small" }, `round ${bf.round}${every}${limit}${span}`),
        ...counts(bf)),
      grid(bf));
  }

  function render(data) {
    const root = document.getElementById("bf-pipelines");
    root.replaceChildren(...data.pipelines.map((p) =>
      el("section", { class: "bf-pipeline", "data-pipeline": p.pipeline },
        el("h2", {}, `${p.pipeline} `, el("span", { class: "muted small" },
          `${p.backfills.length} backfill${p.backfills.length === 1 ? "" : "s"}`)),
        ...p.backfills.map(backfill))));
    document.getElementById("bf-empty").hidden = data.pipelines.length > 0;
  }

  async function refresh() {
    const badge = document.getElementById("bf-updated");
    try {
      const resp = await fetch("/api/backfills", { cache: "no-store" });
      const data = await resp.json();
      if (!resp.ok) throw new Error(data.error || resp.statusText);
      render(data);
      badge.textContent = `updated ${new Date().toLocaleTimeString()}`;
      badge.className = "live on";
      window.sisasBackfills = (window.sisasBackfills || 0) + 1;
    } catch (err) {
      badge.textContent = `cannot read: ${err.message}`;
      badge.className = "live off";
    }
  }

  refresh();
  setInterval(refresh, 2000);
})();
