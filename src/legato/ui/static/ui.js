// Legato UI: live run colours (server-sent events), the step panel, the timeline, and the actions.
// Every change goes through the REST API with the X-Legato-UI header (see legato/ui/auth.py).
"use strict";

const HEADERS = { "Content-Type": "application/json", "X-Legato-UI": "1" };

async function call(method, path, body) {
  const init = { method, headers: HEADERS, credentials: "same-origin" };
  if (body !== undefined) init.body = JSON.stringify(body);
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    return { ok: false, status: 0, data: { message: "the server did not answer: " + err } };
  }
  let data = null;
  try { data = await res.json(); } catch (err) { data = null; }
  return { ok: res.ok, status: res.status, data };
}

function problemText(res) {
  const data = res.data || {};
  const lines = [data.message || "request failed (" + res.status + ")"];
  for (const p of data.problems || []) {
    const line = (p.path ? p.path + ": " : "") + p.message;
    if (!lines[0].includes(line)) lines.push(line);  // not what the message says already
  }
  return [...new Set(lines)].join("\n");
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

const pretty = (v) => JSON.stringify(v, null, 2);
const ms = (iso) => (iso ? Date.parse(iso) : null);

function parseObject(text) {
  const trimmed = text.trim();
  if (!trimmed) return { value: {} };
  try {
    const value = JSON.parse(trimmed);
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      return { error: "input: must be a JSON object" };
    }
    return { value };
  } catch (err) {
    return { error: "input: not valid JSON (" + err.message + ")" };
  }
}

// -- the workflow page: start a run -------------------------------------------------------------

function workflowPage(main) {
  const form = document.getElementById("start-form");
  const box = document.getElementById("start-error");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    box.hidden = true;
    const parsed = parseObject(document.getElementById("start-input").value);
    if (parsed.error) { box.textContent = parsed.error; box.hidden = false; return; }
    const path = "/api/workflows/" + encodeURIComponent(main.dataset.workflow) + "/runs";
    const res = await call("POST", path, { input: parsed.value, version: Number(main.dataset.version) });
    if (res.ok) { window.location.href = "/runs/" + res.data.id; return; }
    box.textContent = problemText(res);
    box.hidden = false;
  });
}

// -- the run page -------------------------------------------------------------------------------

function runPage(main) {
  const runId = main.dataset.run;
  let detail = JSON.parse(document.getElementById("run-data").textContent);
  let selected = null;
  const nodes = new Map();
  document.querySelectorAll("svg.graph g.node").forEach((g) => nodes.set(g.dataset.step, g));

  function setStatus(node, status) {
    for (const c of [...node.classList]) if (c.startsWith("st-")) node.classList.remove(c);
    node.classList.add("st-" + status);
    node.dataset.status = status;
  }

  function colour(statuses) {
    nodes.forEach((g, name) => {
      let status = statuses[name] || "pending";
      if (status === "running") {
        // A map whose items only wait (say, for approvals) shows as waiting, not as working.
        const items = Object.keys(statuses).filter((k) => k.startsWith(name + "["));
        const states = items.map((k) => statuses[k]);
        if (states.includes("waiting") && !states.includes("running")) status = "waiting";
      }
      setStatus(g, status);
    });
  }

  function showRun(status, error) {
    const badge = document.getElementById("run-status");
    setStatus(badge, status);
    badge.textContent = status;
    for (const id of ["cancel-run", "retry-run"]) {
      const button = document.getElementById(id);
      button.hidden = !button.dataset.when.split(" ").includes(status);
    }
    const box = document.getElementById("run-error");
    if (error !== undefined) {
      box.hidden = !error;
      box.textContent = error ? error.message || pretty(error) : "";
    }
  }

  function render() {
    const statuses = {};
    for (const s of detail.steps) statuses[s.name] = s.status;
    colour(statuses);
    showRun(detail.status, detail.error);
    document.getElementById("run-finished").textContent = detail.finished_at ? "· finished " + detail.finished_at : "";
    const out = document.getElementById("run-output-box");
    out.hidden = detail.output === null || detail.output === undefined;
    document.getElementById("run-output").textContent = pretty(detail.output);
    timeline();
    // The chosen step's panel is rebuilt only when that step moved on: a person typing into its
    // completion form keeps what they typed while the rest of the run changes.
    if (selected && panelKey(selected) !== shown) panel(selected);
  }

  let shown = null;
  function panelKey(name) {
    const step = detail.steps.find((s) => s.name === name);
    return step ? [name, step.status, step.attempt].join("|") : name;
  }

  async function refresh() {
    const res = await call("GET", "/api/runs/" + runId);
    if (res.ok) { detail = res.data; render(); }
  }

  let timer = null;
  function refreshSoon() {
    if (timer === null) timer = setTimeout(() => { timer = null; refresh(); }, 120);
  }

  function section(title, value) {
    if (value === null || value === undefined) return null;
    return el("div", {}, el("h4", {}, title), el("pre", {}, pretty(value)));
  }

  function completeForm(step) {
    const form = el("form", { class: "complete", id: "complete-form" });
    const output = el("textarea", { id: "complete-output", rows: "4", spellcheck: "false" });
    output.value = "{}";
    const reason = el("input", { id: "complete-error", placeholder: "why it failed (to fail the step)" });
    const message = el("div", { class: "error-box", id: "complete-message", role: "alert" });
    message.hidden = true;
    async function send(body) {
      message.hidden = true;
      const path = "/api/runs/" + runId + "/steps/" + encodeURIComponent(step.name) + "/complete";
      const res = await call("POST", path, body);
      if (!res.ok) { message.textContent = problemText(res); message.hidden = false; return; }
      refreshSoon();
    }
    const ok = el("button", { type: "submit", id: "complete-ok" }, "Complete with this output");
    const fail = el("button", { type: "button", id: "complete-fail" }, "Fail the step");
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const parsed = parseObject(output.value);
      if (parsed.error) { message.textContent = parsed.error.replace("input", "output"); message.hidden = false; return; }
      send({ output: parsed.value });
    });
    fail.addEventListener("click", () => send({ error: reason.value || "failed by hand" }));
    form.append(el("h4", {}, "Complete by hand"),
      el("label", { for: "complete-output" }, "Output (JSON)"), output, ok,
      el("label", { for: "complete-error" }, "or fail it"), reason, fail, message);
    return form;
  }

  function panel(name) {
    selected = name;
    shown = panelKey(name);
    nodes.forEach((g, n) => g.classList.toggle("selected", n === name));
    const box = document.getElementById("step-panel");
    const step = detail.steps.find((s) => s.name === name);
    box.replaceChildren();
    if (!step) { box.append(el("p", { class: "empty" }, "No state for " + name)); return; }
    const facts = [step.kind, "attempt " + step.attempt];
    if (step.reason) facts.push("waiting for " + step.reason);
    if (step.next_attempt_at) facts.push("next at " + step.next_attempt_at);
    box.append(
      el("h3", {}, step.name + " ", el("span", { class: "badge st-" + step.status, id: "step-status" }, step.status)),
      el("p", { class: "hint" }, facts.join(" · ")),
    );
    if (step.status === "waiting" && step.reason === "callback") box.append(completeForm(step));
    const response = step.kind === "http" ? "Response" : "Output";
    for (const part of [section("Request", step.request), section(response, step.output), section("Error", step.error)]) {
      if (part) box.append(part);
    }
    if (step.attempts.length) {
      const rows = step.attempts.map((a) => el("tr", {},
        el("td", {}, String(a.attempt)), el("td", {}, el("span", { class: "badge st-" + a.status }, a.status)),
        el("td", {}, a.started_at || ""), el("td", {}, a.error ? a.error.message || pretty(a.error) : "")));
      box.append(el("h4", {}, "Attempts"), el("table", { class: "attempts" },
        el("tr", {}, el("th", {}, "#"), el("th", {}, "status"), el("th", {}, "started"), el("th", {}, "error")), ...rows));
    }
    stepLogs(box, name, shown);
  }

  // What the step logged, per attempt (text only: textContent, never markup).
  async function stepLogs(box, name, key) {
    const res = await call("GET", "/api/runs/" + runId + "/logs?step=" + encodeURIComponent(name));
    if (!res.ok || !res.data.logs.length || shown !== key || selected !== name) return;
    const text = res.data.logs.map((l) =>
      l.ts + " " + l.level.padEnd(7) + " [" + l.attempt + "] " + l.source + ": " + l.message).join("\n");
    box.append(el("h4", {}, "Logs"), el("pre", { class: "logs", id: "step-logs-panel" }, text));
  }

  function timeline() {
    const box = document.getElementById("timeline");
    const bars = [];
    for (const s of detail.steps) {
      const seen = new Set();
      for (const a of s.attempts) {
        seen.add(a.attempt);
        if (a.started_at) bars.push({ step: s.name, status: a.status, from: ms(a.started_at), to: ms(a.finished_at), n: a.attempt });
      }
      if (s.started_at && !seen.has(s.attempt)) {
        bars.push({ step: s.name, status: s.status, from: ms(s.started_at), to: ms(s.finished_at), n: s.attempt });
      }
    }
    box.replaceChildren();
    if (!bars.length) { box.append(el("p", { class: "empty" }, "No attempts yet.")); return; }
    const now = Date.now();
    const start = Math.min(...bars.map((b) => b.from));
    const end = Math.max(...bars.map((b) => b.to || now), start + 1);
    const span = end - start;
    const rows = new Map();
    for (const b of bars) {
      if (!rows.has(b.step)) {
        const track = el("div", { class: "tl-track" });
        const row = el("div", { class: "tl-row", "data-step": b.step }, el("div", { class: "tl-name" }, b.step), track);
        row.addEventListener("click", () => panel(b.step));
        rows.set(b.step, track);
        box.append(row);
      }
      const left = ((b.from - start) / span) * 100;
      const width = Math.max((((b.to || now) - b.from) / span) * 100, 0.3);
      const bar = el("div", { class: "tl-bar st-" + b.status, title: b.step + " attempt " + b.n + ": " + b.status });
      bar.style.left = left.toFixed(2) + "%";
      bar.style.width = Math.min(width, 100 - left).toFixed(2) + "%";
      rows.get(b.step).append(bar);
    }
    box.append(el("div", { class: "tl-axis" }, el("span", {}, "0 s"), el("span", {}, (span / 1000).toFixed(2) + " s")));
  }

  nodes.forEach((g, name) => {
    g.addEventListener("click", () => panel(name));
    g.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); panel(name); } });
  });

  async function act(action) {
    const message = document.getElementById("action-message");
    message.textContent = action === "cancel" ? "Cancelling…" : "Retrying…";
    const res = await call("POST", "/api/runs/" + runId + "/" + action);
    message.textContent = res.ok ? "" : problemText(res);
    if (res.ok && action === "retry") follow();  // the run moves again: watch it again
    refreshSoon();
  }
  document.getElementById("cancel-run").addEventListener("click", () => act("cancel"));
  document.getElementById("retry-run").addEventListener("click", () => act("retry"));

  // Followed until it ends: the server then closes the stream, and the page does not reopen it
  // (an open stream per tab would soon use up the browser's six connections to this server).
  const FINAL = ["succeeded", "failed", "cancelled"];
  let events = null;
  function follow() {
    if (events !== null) return;
    events = new EventSource("/runs/" + runId + "/events");
    events.onmessage = (ev) => {
      const snap = JSON.parse(ev.data);
      const statuses = {};
      for (const [name, [status]] of Object.entries(snap.steps)) statuses[name] = status;
      colour(statuses);
      showRun(snap.status);
      refreshSoon();
      if (FINAL.includes(snap.status)) { events.close(); events = null; }
    };
    events.onopen = () => { main.dataset.live = "1"; };
  }
  follow();
  render();
}

// Large graphs show at full size (readable) and scroll; "Fit" shrinks one to its frame, for the shape.
function fitToggles() {
  document.querySelectorAll(".graph-wrap .fit-toggle").forEach((button) => {
    button.addEventListener("click", () => {
      const on = button.parentElement.classList.toggle("fit");
      button.setAttribute("aria-pressed", String(on));
      button.textContent = on ? "Full size" : "Fit";
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  fitToggles();
  const main = document.querySelector("main");
  if (main.dataset.page === "workflow") workflowPage(main);
  if (main.dataset.page === "run") runPage(main);
});
