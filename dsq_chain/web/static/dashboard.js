// dsq-chain dashboard: formats values and keeps pages live from the console API's server-sent events.
"use strict";
const API = document.body.dataset.api;
const UNIT = 1000000;

function credits(units) {
  if (units === null || units === undefined) return "-";
  const whole = Math.floor(units / UNIT), frac = units % UNIT;
  return frac ? (whole + "." + String(frac).padStart(6, "0")).replace(/0+$/, "") : String(whole);
}
function duration(s) {
  if (s === null || s === undefined || s === "") return "-";
  s = Math.max(0, Math.floor(s));
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60), sec = s % 60;
  if (d) return d + "d " + h + "h";
  if (h) return h + "h " + String(m).padStart(2, "0") + "m";
  return m + "m " + String(sec).padStart(2, "0") + "s";
}
function utc(t) { return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19); }
function esc(s) { return String(s === null || s === undefined ? "" : s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c])); }
function statusBadge(s) { return s ? `<span class="status s-${esc(s)}">${esc(s)}</span>` : ""; }
function setLive(on) { const d = document.getElementById("live-dot"); if (d) d.classList.toggle("live", on); }
function setHead(h) { const b = document.getElementById("head-block"); if (b && h && h.block !== null) b.textContent = h.block; }

// Time-left cells count down locally between updates (only RUNNING jobs spend their escrow).
const loadedAt = Date.now() / 1000;
// Final statuses come from the server (dsq_chain/lifecycle.py), written into the page.
const FINAL = JSON.parse(document.getElementById("final-statuses").textContent);
function tickLeft() {
  document.querySelectorAll("[data-left]").forEach(el => {
    const v = el.dataset.left;
    if (FINAL.includes(el.dataset.status)) { el.textContent = "ended"; return; }
    if (v === "") { el.textContent = "-"; return; }
    const running = el.dataset.status === "RUNNING";
    const since = Number(el.dataset.since || loadedAt);
    el.textContent = duration(Number(v) - (running ? Date.now() / 1000 - since : 0));
  });
  document.querySelectorAll("[data-ago]").forEach(el => {
    const v = el.dataset.ago;
    el.textContent = v === "" ? "never" : duration(Number(v) + Date.now() / 1000 - loadedAt) + " ago";
  });
}

function listen(url, handlers) {
  const es = new EventSource(url);
  es.onopen = () => setLive(true);
  es.onerror = () => setLive(false);
  for (const [name, fn] of Object.entries(handlers)) es.addEventListener(name, e => fn(JSON.parse(e.data)));
  es.addEventListener("head", e => setHead(JSON.parse(e.data)));
  return es;
}

// -- jobs page ------------------------------------------------------------------------------------------------
function jobRow(j) {
  const tr = document.createElement("tr");
  tr.id = "job-" + j.id;
  tr.dataset.version = j.version;
  const r = j.resources;
  tr.innerHTML = `<td><a href="/jobs/${j.id}">${j.id}</a></td><td>${esc(j.name || "-")}</td><td>${statusBadge(j.status)}</td>
    <td class="addr">${esc(j.provider || "-")}</td><td>${r.cpus} cpu · ${r.gpus} gpu · ${r.mem_mb} MB</td>
    <td class="num" data-left="${j.time_left_s === null ? "" : j.time_left_s}" data-status="${j.status}" data-since="${Date.now() / 1000}">-</td>
    <td class="num">${j.rate ? credits(j.rate) : "-"}</td><td class="num">${credits(j.cost_so_far)}</td>`;
  return tr;
}
function jobsPage(table) {
  const f = table.dataset, q = new URLSearchParams();
  for (const k of ["owner", "provider", "status"]) if (f[k]) q.set(k, f[k]);
  const body = table.tBodies[0];
  const upsert = j => {
    const old = document.getElementById("job-" + j.id);
    if (old && Number(old.dataset.version) >= j.version) return;
    const row = jobRow(j);
    if (old) old.replaceWith(row);
    else {
      const empty = body.querySelector("tr.empty"); if (empty) empty.remove();
      const next = [...body.rows].find(r => Number(r.id.slice(4)) < j.id);
      body.insertBefore(row, next || null);
      while (body.rows.length > 200) body.deleteRow(-1);
    }
    row.classList.add("flash");
    tickLeft();
  };
  const reload = () => fetch(`${API}/jobs?${q}&limit=100`).then(r => r.json()).then(d => {
    body.innerHTML = ""; d.jobs.slice().reverse().forEach(upsert);
  });
  listen(`${API}/events?${q}`, {job: upsert, reload});
}

// -- job page -------------------------------------------------------------------------------------------------
const COLORS = {PENDING: "#fde68a", META_SCHEDULED: "#c7d2fe", SCHEDULED: "#a5b4fc", RUNNING: "#93c5fd",
  FINISHED: "#6ee7b7", FAILED: "#fca5a5", PANICKED: "#fca5a5", OUT_OF_CREDITS: "#fca5a5", CANCELED: "#d1d5db"};
function drawTimelineBar(timeline, now) {
  const bar = document.getElementById("timeline-bar");
  if (!bar) return;
  const steps = timeline.filter(t => t.status);
  if (!steps.length) return;
  const end = Math.max(now, steps[steps.length - 1].time + 1), start = steps[0].time, total = Math.max(1, end - start);
  bar.innerHTML = steps.map((t, i) => {
    const until = i + 1 < steps.length ? steps[i + 1].time : end;
    const final = FINAL.includes(t.status);
    const w = final && i === steps.length - 1 ? 0 : Math.max(0, (until - t.time) / total * 100);
    return `<span style="flex: ${final ? "0 0 auto; padding: 0 6px" : "0 0 " + w + "%"}; background: ${COLORS[t.status] || "#e5e7eb"}"
      title="${t.status} at ${utc(t.time)} (block ${t.block})">${esc(t.status)}</span>`;
  }).join("");
}
function renderTimeline(job) {
  const body = document.querySelector("#timeline tbody");
  body.innerHTML = job.timeline.map(t => `<tr><td>${utc(t.time)}</td><td class="num">${t.block}</td><td>${statusBadge(t.status)}</td>
    <td>${esc(t.event)}</td><td class="detail">${esc(t.detail)}</td></tr>`).join("");
  drawTimelineBar(job.timeline, Date.now() / 1000);
}
function renderExplain(view) {
  const sec = document.getElementById("pending");
  sec.classList.toggle("hidden", !view.waiting);
  if (!view.waiting) return;
  document.getElementById("explain-headline").textContent = view.headline || view.explanation;
  document.querySelector("#explain tbody").innerHTML = view.providers.map(v =>
    `<tr class="${v.placeable ? "ok" : "no"}"><td class="addr">${esc(v.provider)}</td>
     <td>${v.placeable ? "#" + v.rank + " at " + credits(v.rate) + " /min" : esc(v.reason)}</td></tr>`).join("");
}
function jobPage(el) {
  const id = el.dataset.id;
  document.querySelectorAll("td.t").forEach(td => { td.textContent = utc(Number(td.dataset.t)); });
  const rows = [...document.querySelectorAll("#timeline tbody tr")].map(tr => ({time: Number(tr.dataset.time), status: tr.dataset.status, block: 0}));
  drawTimelineBar(rows, Date.now() / 1000);
  listen(`${API}/jobs/${id}/events`, {
    job: job => {
      const st = document.getElementById("job-status");
      st.textContent = job.status; st.className = "status s-" + job.status;
      document.getElementById("job-provider").textContent = job.provider || "-";
      document.getElementById("job-escrow").textContent = credits(job.escrow);
      document.getElementById("job-cost").textContent = credits(job.cost_so_far);
      const left = document.getElementById("job-left");
      left.dataset.left = job.time_left_s === null ? "" : job.time_left_s;
      left.dataset.status = job.status; left.dataset.since = Date.now() / 1000;
      renderTimeline(job);
      const b = job.bill;
      document.getElementById("bill-kind").textContent = b.final ? "final" : "so far";
      for (const k of ["cpu", "gpu", "memory"]) {
        document.getElementById("bill-" + k).textContent = credits(b.by_resource[k]);
        document.getElementById("rate-" + k).textContent = credits(b.rate[k]);
      }
      document.getElementById("rate-total").textContent = credits(job.rate);
      document.getElementById("bill-total").textContent = credits(b.billed);
      document.getElementById("bill-refunded").textContent = credits(b.refunded);
      el.dataset.provider = job.provider || "";
      if (job.status === "PENDING") fetch(`${API}/jobs/${id}/explain`).then(r => r.json()).then(renderExplain);
      else renderExplain({waiting: false});
      tickLeft();
    },
    reload: () => location.reload(),
  });
  const btn = document.getElementById("logs-sign");
  if (btn) btn.addEventListener("click", () => ownerLogs(el));
}

// Logs: the owner's browser wallet signs an EIP-712 request that the provider's log server checks against the chain.
async function ownerLogs(el) {
  const state = document.getElementById("logs-state"), out = document.getElementById("logs");
  if (!window.ethereum) { state.textContent = "no browser wallet: use the dsq logs command above"; return; }
  try {
    const [account] = await window.ethereum.request({method: "eth_requestAccounts"});
    const server = el.dataset.logServer;
    const req = await fetch(`${server}/v1/jobs/${el.dataset.id}/logs/request`).then(r => r.json());
    const sig = await window.ethereum.request({method: "eth_signTypedData_v4", params: [account, JSON.stringify(req.typed_data)]});
    const m = req.typed_data.message;
    const q = new URLSearchParams({expiry: m.expiry, nonce: m.nonce, signature: sig, follow: "1"});
    out.classList.remove("hidden"); out.textContent = "";
    const es = new EventSource(`${server}/v1/jobs/${el.dataset.id}/logs?${q}`);
    es.addEventListener("log", e => { out.textContent += JSON.parse(e.data).text; out.scrollTop = out.scrollHeight; });
    es.addEventListener("end", () => { state.textContent = "job ended"; es.close(); });
    es.onerror = () => { state.textContent = "stream closed: sign again to resume"; es.close(); };
    state.textContent = "following as " + account;
  } catch (e) { state.textContent = "not shown: " + (e.message || e); }
}

// -- market page ----------------------------------------------------------------------------------------------
function marketPage(data) {
  if (!window.Chart) { document.querySelectorAll("figure canvas").forEach(c => c.replaceWith("Chart.js is not installed (make setup).")); return; }
  const labels = data.hours.map(t => utc(t).slice(11, 16));
  const common = {responsive: true, maintainAspectRatio: false, animation: false, plugins: {legend: {display: false}}};
  new Chart(document.getElementById("chart-jobs"), {type: "bar", data: {labels, datasets: [{data: data.jobs_per_hour, backgroundColor: "#60a5fa", maxBarThickness: 40}]},
    options: {...common, scales: {y: {beginAtZero: true, ticks: {precision: 0}}}}});
  new Chart(document.getElementById("chart-util"), {type: "line", data: {labels, datasets: [{data: data.utilisation.map(u => 100 * u), borderColor: "#10b981", fill: true, backgroundColor: "rgba(16,185,129,.15)", tension: .25}]},
    options: {...common, scales: {y: {min: 0, max: 100, ticks: {callback: v => v + "%"}}}}});
  new Chart(document.getElementById("chart-wait"), {type: "line", data: {labels, datasets: [
    {label: "p50", data: data.wait_p50, borderColor: "#3b82f6", backgroundColor: "#3b82f6", spanGaps: true, pointRadius: 3},
    {label: "p95", data: data.wait_p95, borderColor: "#f59e0b", backgroundColor: "#f59e0b", spanGaps: true, pointRadius: 3}]},
    options: {...common, plugins: {legend: {display: true}}, scales: {y: {beginAtZero: true}}}});
  const reasons = Object.keys(data.placement_failures);
  new Chart(document.getElementById("chart-failures"), {type: "bar", data: {labels: reasons.length ? reasons : ["none"],
    datasets: [{data: reasons.length ? Object.values(data.placement_failures) : [0], backgroundColor: "#f87171", maxBarThickness: 70}]},
    options: {...common, scales: {y: {beginAtZero: true, ticks: {precision: 0}}}}});
}

document.addEventListener("DOMContentLoaded", () => {
  const jobs = document.getElementById("jobs");
  if (jobs) jobsPage(jobs);
  const job = document.getElementById("job");
  if (job) jobPage(job);
  const market = document.getElementById("market-data");
  if (market) window.addEventListener("load", () => marketPage(JSON.parse(market.textContent)));
  if (!jobs && !job) listen(`${API}/events?status=NONE`.replace("?status=NONE", ""), {});
  tickLeft();
  setInterval(tickLeft, 1000);
});
