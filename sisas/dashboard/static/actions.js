// sisas dashboard actions: sign in as an operator, launch a run (its input checked
// against the contract's JSON Schema before it is sent), cancel, re-execute from failure,
// re-run. Shown only when the server allows actions and an operator signed in; the
// server checks everything again (session cookie, CSRF token, Origin, the schema).
"use strict";

(() => {
  const q = (sel) => document.querySelector(sel);
  const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  let session = {actions: "off", signed_in: false, who: "", csrf: ""};
  window.sisasActions = {ready: false};

  const css = document.createElement("link");
  css.rel = "stylesheet"; css.href = "/static/actions.css";
  document.head.appendChild(css);

  async function post(url, body) {
    const headers = {"Content-Type": "application/json"};
    if (session.csrf) headers["X-CSRF-Token"] = session.csrf;
    const r = await fetch(url, {method: "POST", headers, body: JSON.stringify(body || {}), cache: "no-store", credentials: "same-origin"});
    let answer = {};
    try { answer = await r.json(); } catch (e) { answer = {error: `${r.status} ${r.statusText}`}; }
    if (!r.ok) throw new Error(answer.error || `${r.status}`);
    return answer;
  }

  // ---- a JSON Schema check (the subset pydantic writes: types, properties, required,
  // additionalProperties, items, prefixItems, enum, const, bounds, lengths, pattern,
  // anyOf / oneOf / allOf, $ref into $defs). The server checks again with jsonschema.
  function checkSchema(value, schema, root, path) {
    if (schema === true || schema == null) return null;
    if (schema === false) return `${path}: no value is allowed here`;
    if (schema.$ref) {
      const target = schema.$ref.replace(/^#\//, "").split("/").reduce((o, k) => (o ? o[k] : undefined), root);
      const err = checkSchema(value, target, root, path);
      if (err) return err;
    }
    const kind = (v) => (v === null ? "null" : Array.isArray(v) ? "array" : Number.isInteger(v) ? "integer" : typeof v);
    if (schema.type) {
      const types = Array.isArray(schema.type) ? schema.type : [schema.type];
      const k = kind(value);
      const ok = types.some((t) => t === k || (t === "number" && (k === "integer" || k === "number")));
      if (!ok) return `${path}: ${JSON.stringify(value)} is not of type ${types.map((t) => `'${t}'`).join(", ")}`;
    }
    if (schema.enum && !schema.enum.some((e) => JSON.stringify(e) === JSON.stringify(value))) return `${path}: ${JSON.stringify(value)} is not one of ${JSON.stringify(schema.enum)}`;
    if ("const" in schema && JSON.stringify(schema.const) !== JSON.stringify(value)) return `${path}: ${JSON.stringify(schema.const)} was expected`;
    if (typeof value === "number") {
      if (schema.minimum != null && value < schema.minimum) return `${path}: ${value} is less than the minimum of ${schema.minimum}`;
      if (schema.maximum != null && value > schema.maximum) return `${path}: ${value} is greater than the maximum of ${schema.maximum}`;
      if (schema.exclusiveMinimum != null && value <= schema.exclusiveMinimum) return `${path}: ${value} is less than or equal to the minimum of ${schema.exclusiveMinimum}`;
      if (schema.exclusiveMaximum != null && value >= schema.exclusiveMaximum) return `${path}: ${value} is greater than or equal to the maximum of ${schema.exclusiveMaximum}`;
    }
    if (typeof value === "string") {
      if (schema.minLength != null && value.length < schema.minLength) return `${path}: ${JSON.stringify(value)} is shorter than ${schema.minLength} characters`;
      if (schema.maxLength != null && value.length > schema.maxLength) return `${path}: ${JSON.stringify(value)} is longer than ${schema.maxLength} characters`;
      if (schema.pattern && !new RegExp(schema.pattern, "u").test(value)) return `${path}: ${JSON.stringify(value)} does not match ${JSON.stringify(schema.pattern)}`;
    }
    if (Array.isArray(value)) {
      if (schema.minItems != null && value.length < schema.minItems) return `${path}: should have at least ${schema.minItems} items`;
      if (schema.maxItems != null && value.length > schema.maxItems) return `${path}: should have at most ${schema.maxItems} items`;
      const prefix = schema.prefixItems || [];
      for (let i = 0; i < value.length; i++) {
        const sub = i < prefix.length ? prefix[i] : schema.items;
        const err = sub === undefined ? null : checkSchema(value[i], sub, root, `${path}[${i}]`);
        if (err) return err;
      }
    }
    if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const key of schema.required || []) if (!(key in value)) return `${path}: '${key}' is a required property`;
      const props = schema.properties || {};
      for (const [key, v] of Object.entries(value)) {
        if (key in props) {
          const err = checkSchema(v, props[key], root, `${path}.${key}`);
          if (err) return err;
        } else if (schema.additionalProperties !== undefined) {
          if (schema.additionalProperties === false) return `${path}: additional property '${key}' is not allowed`;
          const err = checkSchema(v, schema.additionalProperties, root, `${path}.${key}`);
          if (err) return err;
        }
      }
    }
    for (const sub of schema.allOf || []) { const err = checkSchema(value, sub, root, path); if (err) return err; }
    const alts = schema.anyOf || schema.oneOf;
    if (alts) {
      const errs = alts.map((s) => checkSchema(value, s, root, path));
      if (!errs.some((e) => e === null)) return errs.find((e) => !e.endsWith("is not of type 'null'")) || errs[0];
    }
    return null;
  }
  window.sisasActions.checkSchema = (value, schema) => checkSchema(value, schema, schema, "input");

  // ---- sign in / out ----------------------------------------------------------------
  function renderOperator() {
    let box = q("#operator");
    if (!box) {
      box = document.createElement("span");
      box.id = "operator";
      q("header").insertBefore(box, q("#live"));
    }
    if (session.actions === "off") { box.hidden = true; return; }
    box.hidden = false;
    if (session.signed_in) {
      box.innerHTML = `<span class="who">operator: ${esc(session.who)}</span> <button type="button" id="sign-out">sign out</button>`;
      q("#sign-out").onclick = async () => { await post("/api/session/end"); location.reload(); };
    } else {
      box.innerHTML = '<button type="button" id="sign-in">operator sign in</button>';
      q("#sign-in").onclick = showSignIn;
    }
  }

  function showSignIn() {
    let form = q("#sign-in-form");
    if (form) { form.hidden = !form.hidden; return; }
    form = document.createElement("form");
    form.id = "sign-in-form";
    form.className = "action-panel";
    const creds = session.actions === "credentials"
      ? `<label>nkey seed <input id="si-seed" type="password" autocomplete="off" placeholder="SU… (operator.nk)" size="40"></label>
         <span class="muted">or</span> <label>user <input id="si-user" size="12"></label> <label>password <input id="si-password" type="password" size="16"></label>`
      : '<label>token <input id="si-token" type="password" autocomplete="off" size="36" placeholder="printed by sisas dashboard at start"></label>';
    form.innerHTML = `<h2>sign in as an operator</h2>
      <label>your name <input id="si-name" size="16" placeholder="recorded with each action"></label> ${creds}
      <button type="submit" id="si-submit">sign in</button> <p id="si-error" class="error" hidden></p>`;
    q("main").prepend(form);
    form.onsubmit = async (e) => {
      e.preventDefault();
      const val = (id) => (q(id) ? q(id).value : "");
      const body = {name: val("#si-name")};
      if (session.actions === "credentials") {
        if (val("#si-seed")) body.seed = val("#si-seed"); else { body.user = val("#si-user"); body.password = val("#si-password"); }
      } else body.token = val("#si-token");
      q("#si-submit").disabled = true;
      try {
        await post("/api/session", body);
        location.reload();
      } catch (err) {
        q("#si-error").hidden = false; q("#si-error").textContent = err.message;
      } finally { q("#si-submit").disabled = false; }
    };
  }

  // ---- launch (runs page) -------------------------------------------------------------
  function parsePairs(text, what) {
    const out = {};
    for (const part of text.split(/[\n,]+/).map((s) => s.trim()).filter(Boolean)) {
      const at = part.indexOf("=");
      if (at < 1) throw new Error(`${what}: ${JSON.stringify(part)} is not KEY=VALUE`);
      out[part.slice(0, at).trim()] = part.slice(at + 1).trim();
    }
    return out;
  }
  const scalar = (v) => (v === "true" ? true : v === "false" ? false : v !== "" && !isNaN(Number(v)) ? Number(v) : v);

  async function launchPanel() {
    const plans = await (await fetch("/api/pipelines", {cache: "no-store"})).json();
    const open = document.createElement("button");
    open.type = "button"; open.id = "launch-open"; open.textContent = "launch a run";
    q("#filters").append(open);
    const form = document.createElement("form");
    form.id = "launch"; form.className = "action-panel"; form.hidden = true;
    form.innerHTML = `<h2>launch a run</h2>
      <div class="launch-grid">
        <div>
          <label>pipeline <select id="launch-pipeline">${plans.map((p) => `<option value="${esc(p.name)}">${esc(p.name)} ${esc(p.version)}</option>`).join("")}</select></label>
          <label class="block">input (JSON) <textarea id="launch-input" rows="6" spellcheck="false">{}</textarea></label>
          <label>seed <input id="launch-seed" type="number" min="0" placeholder="drawn if empty" size="10"></label>
          <label class="block">config <input id="launch-config" placeholder="PHASE.enabled=false, key=value" size="40"></label>
          <label class="block">tags <input id="launch-tags" placeholder="team=data, reason=manual" size="40"></label>
          <button type="submit" id="launch-submit">launch</button> <button type="button" id="launch-cancel">close</button>
          <p id="launch-error" class="error" role="alert" hidden></p>
        </div>
        <div><h3>input contract <span id="launch-contract" class="muted"></span></h3><pre id="launch-schema"></pre></div>
      </div>`;
    q("#filters").after(form);
    const plan = () => plans.find((p) => p.name === q("#launch-pipeline").value);
    const showSchema = () => {
      const p = plan();
      q("#launch-contract").textContent = p ? p.input_contract || "" : "";
      q("#launch-schema").textContent = p && p.input_schema ? JSON.stringify(p.input_schema, null, 2) : "(no JSON Schema: any JSON input)";
    };
    q("#launch-pipeline").onchange = showSchema;
    showSchema();
    open.onclick = () => { form.hidden = !form.hidden; };
    q("#launch-cancel").onclick = () => { form.hidden = true; };
    const fail = (msg) => { q("#launch-error").hidden = false; q("#launch-error").textContent = msg; };
    form.onsubmit = async (e) => {
      e.preventDefault();
      q("#launch-error").hidden = true;
      const p = plan();
      if (!p) return fail("no pipeline is registered: start a worker with its code");
      let input;
      try { input = JSON.parse(q("#launch-input").value || "null"); } catch (err) { return fail(`input is not JSON: ${err.message}`); }
      const problem = p.input_schema ? window.sisasActions.checkSchema(input, p.input_schema) : null;
      if (problem) { window.sisasActions.refused = (window.sisasActions.refused || 0) + 1; return fail(`not sent: ${problem} (the contract ${p.input_contract || "of the input"})`); }
      let config, tags;
      try {
        config = Object.fromEntries(Object.entries(parsePairs(q("#launch-config").value, "config")).map(([k, v]) => [k, scalar(v)]));
        tags = parsePairs(q("#launch-tags").value, "tags");
      } catch (err) { return fail(err.message); }
      const seedText = q("#launch-seed").value.trim();
      q("#launch-submit").disabled = true;
      try {
        const started = await post("/api/launch", {pipeline: p.name, input, seed: seedText === "" ? null : Number(seedText), config, tags});
        location.href = `/runs/${encodeURIComponent(started.run_id)}`;
      } catch (err) { fail(err.message); } finally { q("#launch-submit").disabled = false; }
    };
  }

  // ---- cancel, re-execute, re-run (run page) ---------------------------------------------
  function runButtons() {
    const runId = decodeURIComponent(location.pathname.split("/")[2] || "");
    const bar = document.createElement("p");
    bar.id = "run-actions";
    bar.innerHTML = `<button type="button" id="act-cancel" hidden>cancel run</button>
      <button type="button" id="act-resume" hidden>re-execute from failure</button>
      <button type="button" id="act-rerun" hidden>re-run with the same input</button>
      <span id="act-note" class="muted"></span>`;
    q("#run-meta").after(bar);
    const note = (t, bad) => { q("#act-note").textContent = t; q("#act-note").className = bad ? "error" : "muted"; };
    const act = (id, verb, done) => {
      q(id).onclick = async () => {
        q(id).disabled = true;
        try { done(await post(`/api/runs/${encodeURIComponent(runId)}/${verb}`)); } catch (err) { note(err.message, true); } finally { q(id).disabled = false; }
      };
    };
    act("#act-cancel", "cancel", (a) => note(a.cancelled ? "cancel requested" : "the run had ended already"));
    act("#act-resume", "resume", (a) => { location.href = `/runs/${encodeURIComponent(a.run_id)}`; });
    act("#act-rerun", "rerun", (a) => { location.href = `/runs/${encodeURIComponent(a.run_id)}`; });
    const badge = q("#run-status");
    const show = () => {
      const st = badge.dataset.status || "";
      const ended = ["completed", "failed", "cancelled"].includes(st);
      q("#act-cancel").hidden = !st || ended;
      q("#act-resume").hidden = !(st === "failed" || st === "cancelled");
      q("#act-rerun").hidden = !ended;
    };
    new MutationObserver(show).observe(badge, {attributes: true, attributeFilter: ["data-status"]});
    show();
  }

  async function start() {
    const params = new URLSearchParams(location.search);
    try {
      session = await (await fetch("/api/session", {cache: "no-store", credentials: "same-origin"})).json();
      if (params.get("token") && session.actions === "token" && !session.signed_in) {
        // As Jupyter's ?token=: sign in, then drop the token from the address bar.
        try { await post("/api/session", {token: params.get("token"), name: params.get("name") || ""}); } catch (err) { /* the form shows why */ }
        history.replaceState(null, "", location.pathname);
        session = await (await fetch("/api/session", {cache: "no-store", credentials: "same-origin"})).json();
      }
      renderOperator();
      if (session.signed_in) {
        if (document.body.dataset.page === "run") runButtons(); else await launchPanel();
      }
    } finally { window.sisasActions.ready = true; window.sisasActions.session = session.actions; window.sisasActions.signedIn = session.signed_in; }
  }
  start();
})();
