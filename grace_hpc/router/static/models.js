// The Models page: paste a model page, see what the router's /api/models/parse makes of it (the entry and its plan
// on every partition, the numbers of `grace-hpc models add --json`), add it with /api/models. Pasted text is only
// ever sent to this router and shown through textContent: it never becomes markup, and nothing here fetches a URL
// found in it.
"use strict";

const KEY_SLOT = "grace-router-key"; // sessionStorage, shared with the dashboard: this tab only
const PARSE_DELAY_MS = 400;
let parseTimer = null;
let parsed = null; // the last successful parse's body, what "Add to catalog" sends

function $(id) { return document.getElementById(id); }

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function headers() {
  const key = sessionStorage.getItem(KEY_SLOT);
  const h = { "Content-Type": "application/json" };
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function call(method, path, body) {
  const response = await fetch(path, { method, headers: headers(), body: body ? JSON.stringify(body) : undefined,
                                       cache: "no-store", credentials: "omit" });
  if (response.status === 401) {
    $("key-form").hidden = false;
    throw new Error("this router needs a key");
  }
  const data = await response.json();
  if (!response.ok) throw new Error(data.error ? data.error.message : "HTTP " + response.status);
  return data;
}

function request() {
  const body = { text: $("page").value };
  for (const [field, id] of [["name", "name"], ["model_id", "model-id"], ["license", "license"]]) {
    if ($(id).value.trim()) body[field] = $(id).value.trim();
  }
  if ($("bits").value) body.bits = parseInt($("bits").value, 10);
  return body;
}

function say(id, text, cls) {
  $(id).textContent = text;
  $(id).className = cls || "";
}

function fixed(x) { return typeof x === "number" ? x.toFixed(1) : ""; }

function drawPlans(rows) {
  const tbody = document.querySelector("#plans tbody");
  tbody.replaceChildren(...rows.map((r) => {
    const p = r.plan;
    const tr = el("tr", null, r.fits ? "sev-ok" : "sev-bad");
    tr.dataset.partition = r.partition;
    const cells = [r.partition, r.gpus_per_node ? r.gpus_per_node + " × " + r.gpu : r.gpu, r.fits ? "yes" : "no",
                   p.engine, [p.dtype, p.quantization].filter(Boolean).join(" "), p.tensor_parallel_size,
                   p.max_model_len, fixed(p.weights_gib_per_gpu), fixed(p.kv_cache_gib_per_gpu), p.kv_cache_tokens,
                   p.max_concurrency, (r.lever || "").replace(/^what would fit: /, "")];
    const names = ["partition", "gpus", "fits", "engine", "precision", "tp", "context", "weights", "kv", "tokens",
                   "concurrency", "lever"];
    cells.forEach((c, i) => tr.appendChild(el("td", c, names[i])));
    return tr;
  }));
  $("plans").hidden = rows.length === 0;
  const first = rows.find((r) => r.fits);
  $("command").textContent = first ? "on " + first.partition + ": " + first.plan.argv.join(" ") : "";
}

function drawParsed(result) {
  $("entry").textContent = JSON.stringify(result.entry, null, 2);
  if (result.complete) {
    say("verdict", "complete: planned on every partition of cluster.yaml", "");
  } else {
    say("verdict", "INCOMPLETE (added as such, it is not planned until completed): " + result.reason, "incomplete");
  }
  drawPlans(result.plans);
}

async function parseNow() {
  parsed = null;
  $("add").disabled = true;
  if (!$("page").value.trim()) {
    say("parse-status", "nothing pasted yet", "muted");
    $("entry").textContent = "";
    say("verdict", "");
    drawPlans([]);
    return;
  }
  say("parse-status", "parsing…", "muted");
  const body = request();
  try {
    const result = await call("POST", "../api/models/parse", body);
    if (JSON.stringify(body) !== JSON.stringify(request())) return; // typed on meanwhile: a newer parse follows
    say("parse-status", "parsed " + result.entry.name + " (" + result.entry.hf_id + ")", "muted");
    drawParsed(result);
    parsed = body;
    $("add").disabled = false;
  } catch (err) {
    say("parse-status", err.message, "bad");
    $("entry").textContent = "";
    say("verdict", "");
    drawPlans([]);
  }
}

function parseSoon() {
  clearTimeout(parseTimer);
  parseTimer = setTimeout(parseNow, PARSE_DELAY_MS);
}

async function addNow() {
  if (!parsed) return;
  $("add").disabled = true;
  try {
    const result = await call("POST", "../api/models", parsed);
    say("add-status", "added " + result.entry.name + " to models.yaml" +
        (result.completed ? " (it completes " + result.completed + ")" : ""), "ok");
    await drawCatalog();
  } catch (err) {
    say("add-status", err.message, "bad");
    $("add").disabled = false;
  }
}

async function drawCatalog() {
  const data = await call("GET", "../api/models");
  say("status", "");
  const rows = data.models.map((m) => ({ m, state: "complete" }))
    .concat(data.incomplete.map((m) => ({ m, state: "incomplete: " + m.missing.join(", ") })));
  document.querySelector("#catalog .summary").textContent =
    data.models.length + " models, " + data.incomplete.length + " incomplete";
  document.querySelector("#catalog tbody").replaceChildren(...rows.map(({ m, state }) => {
    const tr = el("tr", null, state === "complete" ? "" : "sev-warn");
    tr.dataset.name = m.name;
    for (const value of [m.name, m.hf_id, m.license, m.context_length || "", state]) tr.appendChild(el("td", value));
    return tr;
  }));
}

function start() {
  for (const id of ["page", "name", "model-id", "license", "bits"]) $(id).addEventListener("input", parseSoon);
  $("paste-form").addEventListener("submit", (e) => e.preventDefault());
  $("add").addEventListener("click", addNow);
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY_SLOT, $("key").value);
    $("key").value = "";
    $("key-form").hidden = true;
    drawCatalog().catch((err) => say("status", err.message, "bad"));
    parseSoon();
  });
  drawCatalog().catch((err) => say("status", err.message, "bad"));
}

document.addEventListener("DOMContentLoaded", start);
