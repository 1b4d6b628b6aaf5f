// The live page: polls the JSON API (no build step, no external resources).
"use strict";
const POLL_MS = 2000;
let token = sessionStorage.getItem("scrapy-checkpoint-token") || "";
let history = {};
let lastHistory = 0;

function headers() { return token ? { Authorization: "Bearer " + token } : {}; }

async function getJSON(path) {
  const response = await fetch(path, { headers: headers(), cache: "no-store" });
  if (response.status === 401) { throw Object.assign(new Error("auth"), { auth: true }); }
  if (!response.ok && response.status !== 503) { throw new Error(path + ": HTTP " + response.status); }
  return response.json();
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "unknown";
  if (seconds < 90) return Math.round(seconds) + " s";
  if (seconds < 5400) return (seconds / 60).toFixed(1) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function percentText(value) {
  if (value === null || value === undefined) return "n/a";
  return (value >= 99.95 && value < 100 ? "99.9" : value.toFixed(1)) + "%";
}

function fact(list, name, value) { list.append(el("dt", {}, name), el("dd", {}, value)); }

function drawChart(canvas, samples) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth * ratio, height = canvas.clientHeight * ratio;
  canvas.width = width; canvas.height = height;
  const ctx = canvas.getContext("2d");
  const points = (samples || []).filter(s => s.rate !== null);
  ctx.clearRect(0, 0, width, height);
  ctx.fillStyle = "#999"; ctx.font = (10 * ratio) + "px sans-serif";
  if (points.length < 2) { ctx.fillText("items/s: waiting for samples", 4, 12 * ratio); return; }
  const peak = Math.max(...points.map(p => p.rate)), top = peak || 1;
  const t0 = points[0].t, span = (points[points.length - 1].t - t0) || 1;
  ctx.strokeStyle = "#1565c0"; ctx.lineWidth = 1.5 * ratio; ctx.beginPath();
  points.forEach((p, i) => {
    const x = (p.t - t0) / span * (width - 2) + 1;
    const y = height - 2 - p.rate / top * (height - 16 * ratio);
    if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
  });
  ctx.stroke();
  ctx.fillText("items/s, max " + peak.toFixed(1), 4, 12 * ratio);
}

function stageCard(entry, stuck) {
  const status = entry.error ? "damaged" : entry.display_status;
  const card = el("section", { class: "stage s-" + status + (stuck ? " stuck" : ""),
                               "data-stage": entry.stage });
  card.append(el("h2", {}, el("span", { class: "name" }, entry.stage),
                 el("span", { class: "badge status" }, stuck ? status + " (stuck)" : status)));
  if (entry.error) { card.append(el("p", { class: "error" }, entry.error)); return card; }
  const p = entry.progress;
  const bar = el("div", { class: "bar" + (entry.percent === null ? " unknown" : "") }, el("div", {}));
  bar.firstChild.style.width = (entry.percent || 0) + "%";
  const facts = el("dl", { class: "facts" });
  const total = p.total_items === null ? "?" : p.total_items;
  fact(facts, "Progress", el("span", {}, el("span", { class: "percent" }, percentText(entry.percent)),
                              " (" + p.processed_items + "/" + total + ")"));
  fact(facts, "Throughput", entry.owner_alive && entry.throughput !== null
    ? entry.throughput.toFixed(1) + " items/s" : "n/a");
  fact(facts, "ETA", duration(entry.eta_seconds));
  fact(facts, "Failed", String(p.failed_items));
  fact(facts, "Updated", new Date(entry.updated_at).toLocaleString());
  const canvas = el("canvas", {});
  card.append(bar, facts, canvas);
  card.chart = canvas;
  return card;
}

function sharedCard(name, workers) {
  const alive = workers.filter(w => w.alive).length;
  const card = el("section", { class: "stage " + (alive ? "s-active" : "s-completed"),
                               "data-stage": name });
  card.append(el("h2", {}, el("span", { class: "name" }, name),
                 el("span", { class: "badge status" }, "shared, " + alive + " alive")));
  const table = el("table", { class: "workers" },
    el("tr", {}, ...["worker", "status", "alive", "done", "pending"].map(h => el("th", {}, h))));
  for (const w of workers) {
    table.append(el("tr", {}, el("td", {}, w.id),
      el("td", {}, w.status + (w.adopted_by ? " by " + w.adopted_by : "")),
      el("td", {}, w.alive ? "yes" : "no"), el("td", {}, String(w.done)),
      el("td", {}, String(w.pending))));
  }
  card.append(table);
  return card;
}

async function refresh() {
  try {
    const doc = await getJSON("/api/v1/stages");
    let stuck = new Set();
    if (Date.now() - lastHistory > 4000) {
      const [h, health] = await Promise.all([getJSON("/api/v1/history"), getJSON("/api/v1/health")]);
      history = h.stages; lastHistory = Date.now();
      stuck = new Set(health.stuck.map(s => s.stage));
      refresh.stuck = stuck;
    } else { stuck = refresh.stuck || stuck; }
    document.getElementById("login").hidden = true;
    document.getElementById("error").hidden = true;
    document.getElementById("location").textContent = doc.checkpoint_dir;
    const main = document.getElementById("stages");
    const cards = doc.stages.map(e => stageCard(e, stuck.has(e.stage)));
    for (const [name, workers] of Object.entries(doc.shared || {})) cards.push(sharedCard(name, workers));
    main.replaceChildren(...cards);
    for (const card of cards) if (card.chart) drawChart(card.chart, history[card.dataset.stage]);
    document.getElementById("empty").hidden = cards.length > 0;
    const running = doc.stages.filter(e => e.display_status === "running").length;
    document.getElementById("overall").textContent = doc.stages.length + " stage(s), " + running + " running";
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    if (err.auth) {
      document.getElementById("login").hidden = false;
      document.getElementById("login-error").textContent = token ? "That token was refused." : "";
    } else {
      const box = document.getElementById("error");
      box.textContent = "Cannot refresh: " + err.message; box.hidden = false;
    }
  }
}

document.getElementById("login").addEventListener("submit", event => {
  event.preventDefault();
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem("scrapy-checkpoint-token", token);
  refresh();
});

refresh();
setInterval(refresh, POLL_MS);
