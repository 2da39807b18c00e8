// The grace-hpc dashboard: polls ../api/dashboard and redraws three tables. Relative URLs only (works through an
// SSH tunnel and behind a path prefix); every value reaches the page through textContent, never as markup.
"use strict";

const API = "../api/dashboard";
const KEY_SLOT = "grace-router-key"; // sessionStorage: this tab only
let refreshMs = 2000;
let timer = null;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 120) return Math.round(seconds) + "s";
  if (seconds < 7200) return Math.round(seconds / 60) + "m";
  if (seconds < 172800) return (seconds / 3600).toFixed(1) + "h";
  return (seconds / 86400).toFixed(1) + "d";
}

function ms(seconds) {
  if (seconds === null || seconds === undefined) return "";
  return seconds < 1 ? Math.round(seconds * 1000) + " ms" : seconds.toFixed(2) + " s";
}

function plan(p) {
  if (!p) return "";
  const parts = [p.dtype || "auto", p.quantization || "no quant"];
  if (p.tensor_parallel_size > 1) parts.push("TP " + p.tensor_parallel_size);
  if (p.max_model_len) parts.push(p.max_model_len + " ctx");
  return parts.join(" · ");
}

function gpus(r) {
  if (!r.gpu) return r.gpus ? String(r.gpus) : "";
  return r.gpus ? r.gpus + " × " + r.gpu : r.gpu; // a CPU partition has 0 GPUs: show just "CPU"
}

function row(cells, severity, attrs) {
  const tr = el("tr", null, "sev-" + severity);
  for (const [key, value] of Object.entries(attrs || {})) tr.dataset[key] = value;
  for (const cell of cells) tr.appendChild(cell);
  return tr;
}

function cell(text, cls) { return el("td", text, cls); }

function sparkline(counts) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 180 22");
  svg.setAttribute("preserveAspectRatio", "none");
  const peak = Math.max(1, ...counts);
  const step = counts.length > 1 ? 180 / (counts.length - 1) : 0;
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", counts.map((c, i) => (i * step).toFixed(1) + "," + (21 - (c / peak) * 20).toFixed(1)).join(" "));
  svg.appendChild(line);
  const td = el("td");
  td.appendChild(svg);
  return td;
}

function replaceBody(section, rows, empty) {
  const tbody = document.querySelector("#" + section + " tbody");
  tbody.replaceChildren(...rows);
  if (!rows.length) {
    const td = el("td", empty, "muted");
    td.colSpan = document.querySelectorAll("#" + section + " thead th").length;
    tbody.appendChild(el("tr")).appendChild(td);
  }
}

function drawFleet(fleet) {
  document.querySelector("#fleet .summary").textContent = fleet.summary;
  replaceBody("fleet", fleet.rows.map((r) => {
    const state = r.job_state + (r.reason ? " (" + r.reason + ")" : "");
    const health = r.healthy === null ? "" : (r.healthy ? "healthy" : "ejected");
    return row([
      cell(r.server || r.deployment || ""), cell(r.model), cell(r.partition || ""),
      cell(gpus(r)), cell(r.job_id || ""), cell(state, "state"),
      cell(r.node || ""), cell(r.endpoint_state, "endpoint-state"), cell(health, "health"),
      cell(duration(r.uptime_s), "num"), cell(duration(r.time_left_s), "num"), cell(plan(r.plan)),
      cell(r.flags.join("; "), "flags"),
    ], r.severity, { endpoint: r.endpoint_id || "", server: r.server || "" });
  }), "no servers: launch a deployment (grace-hpc launch) or add an endpoint (grace-hpc registry add)");
}

function drawLoad(load) {
  const busy = load.rows.reduce((n, r) => n + r.in_flight, 0);
  document.querySelector("#load .summary").textContent =
    busy + " in flight, last " + Math.round(load.window_s / 60) + " min";
  replaceBody("load", load.rows.map((r) => {
    const inFlight = el("td", r.in_flight + " / " + (r.capacity === null ? "?" : r.capacity), "num in-flight");
    if (r.capacity) {
      const bar = el("span", null, "bar");
      const fill = bar.appendChild(el("div"));
      fill.style.width = Math.min(100, (100 * r.in_flight) / r.capacity) + "%";
      inFlight.appendChild(bar);
    }
    return row([
      cell(r.id + (r.in_registry || r.id.startsWith("cloud:") ? "" : " (gone)")), cell(r.model || ""), inFlight,
      cell(r.requests_per_s.toFixed(2), "num rate"), cell(r.requests, "num requests"), cell(ms(r.p50_s), "num p50"),
      cell(ms(r.p95_s), "num p95"), cell(r.errors, "num errors"), cell(r.ejections, "num ejections"),
      sparkline(r.per_bucket),
    ], r.severity, { endpoint: r.id });
  }), "no endpoints in the registry and no requests in the window");
}

function drawRouting(routing) {
  const share = routing.local_share;
  document.querySelector("#routing .summary").textContent = routing.requests + " requests, " +
    (share === null ? "none yet" : Math.round(share * 100) + "% local, " + Math.round(routing.cloud_share * 100) + "% cloud");
  document.querySelector("#routing .share").classList.toggle("none", share === null);
  document.querySelector("#routing .share .local").style.width = (share === null ? 0 : share * 100) + "%";
  replaceBody("routing", routing.categories.map((c) => row([
    cell(c.name), cell(c.requests, "num requests"), cell(c.local, "num"), cell(c.cloud, "num"),
    cell(c.errors, "num errors"), cell(c.requests_per_s.toFixed(2), "num"), cell(ms(c.p50_s), "num"),
  ], c.errors ? "warn" : "ok", { category: c.name })), "no categories");
}

function usd(x) { return "$" + x.toFixed(2); }

function drawUsage(usage) {
  document.getElementById("usage").hidden = false;
  document.querySelector("#usage .summary").textContent = "cloud spend, " + usage.month + " (UTC)" +
    (usage.ledger_error ? "; ledger: " + usage.ledger_error : "");
  replaceBody("usage", usage.users.map((u) => row([
    cell(u.user), cell(usd(u.today_usd), "num"), cell(usd(u.month_usd), "num"), cell(usd(u.in_flight_usd), "num"),
    cell(u.budget_usd_month === null ? "-" : usd(u.budget_usd_month), "num"),
    cell(u.budget_used === null ? "-" : Math.round(u.budget_used * 100) + "%", "num"),
  ], u.budget_used === null || u.budget_used < 0.8 ? "ok" : u.budget_used < 1 ? "warn" : "bad", { user: u.user })),
  "no cloud spend this month and no keys");
}

function banners(data, failure) {
  const box = document.getElementById("banners");
  const items = [];
  if (failure) items.push(["bad", failure]);
  const fleet = data && data.fleet;
  if (fleet && fleet.registry.state !== "ok") items.push(["bad", "Registry unavailable: " + fleet.registry.detail]);
  if (fleet && fleet.scheduler.state === "unavailable") items.push(["bad", "SLURM unavailable, job states unknown: " + fleet.scheduler.detail]);
  if (fleet && fleet.scheduler.state === "absent") items.push(["", "Jobs not shown: " + fleet.scheduler.detail]);
  box.replaceChildren(...items.map(([cls, text]) => el("div", text, "banner " + cls)));
}

function setLive(ok, text) {
  const pill = document.getElementById("live");
  pill.textContent = text;
  pill.className = "pill " + (ok ? "live" : "down");
  document.body.classList.toggle("stale", !ok);
}

function askForKey() {
  const form = document.getElementById("key-form");
  form.hidden = false;
  document.getElementById("key").focus();
}

async function refresh() {
  const key = sessionStorage.getItem(KEY_SLOT);
  const asked = Date.now();
  let response;
  try {
    response = await fetch(API, { headers: key ? { Authorization: "Bearer " + key } : {}, cache: "no-store" });
  } catch (err) {
    setLive(false, "router unreachable");
    banners(null, "The router does not answer (is it running, is the SSH tunnel up?); showing the last data.");
    return;
  }
  if (response.status === 401) {
    setLive(false, key ? "key refused" : "key needed");
    banners(null, null);
    askForKey();
    return;
  }
  if (!response.ok) {
    setLive(false, "HTTP " + response.status);
    banners(null, "The dashboard API answered HTTP " + response.status + "; showing the last data.");
    return;
  }
  const data = await response.json();
  refreshMs = 1000 * (data.refresh_s || 2);
  document.getElementById("key-form").hidden = true;
  if (data.fleet) drawFleet(data.fleet);
  if (data.load) drawLoad(data.load);
  if (data.routing) drawRouting(data.routing);
  if (data.usage) drawUsage(data.usage);
  banners(data, null);
  setLive(true, "live");
  document.getElementById("updated").textContent = "updated " + new Date(data.generated_at * 1000).toLocaleTimeString();
  // for scripts and tests: how many refreshes were drawn, and when the last drawn one asked the router
  document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes) + 1);
  document.body.dataset.asked = String(asked);
}

async function loop() {
  clearTimeout(timer);
  try {
    await refresh();
  } finally {
    timer = setTimeout(loop, refreshMs);
  }
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("key");
  if (input.value) sessionStorage.setItem(KEY_SLOT, input.value);
  input.value = "";
  loop();
});
loop();
