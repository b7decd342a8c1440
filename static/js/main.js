// The dashboard: one WebSocket for everything live (jobs submitted, followed and canceled; the
// hub's stats message for models, queues and workers); HTTP for the job list at each
// (re)connect, a job's details, and submissions too big for one frame.

import { api } from "./api.js";
import { WorkersPanel, ModelsPanel } from "./catalogue.js";
import { Hub } from "./hub.js";
import { JobDetail, JobsTable } from "./jobs.js";
import {
  LatencyChart,
  Metrics,
  OnlineTraffic,
  ThroughputChart,
  renderOnline,
  renderQueues,
} from "./metrics.js";
import { BulkPanel } from "./bulk.js";
import { DigitPad } from "./digits.js";
import { JobStore, TERMINAL } from "./store.js";
import { TryPanel } from "./try.js";
import { coalesce, fmtDuration, shortId } from "./util.js";

// A submit frame larger than the hub's INFERHUB_WS_MAX_MESSAGE_BYTES (1 MiB by default) would
// close the socket: such requests go over HTTP instead (their events still come on the socket).
const WS_FRAME_LIMIT = 1000000;
const JOBS_LOADED = 50;

const $ = (selector) => document.querySelector(selector);

const hub = new Hub();
const store = new JobStore();
const metrics = new Metrics();
let models = new Map();

// --- messages to the user ----------------------------------------------------------------

let toastTimer = null;
function toast(message) {
  const box = $("#toast");
  box.textContent = message;
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    box.hidden = true;
  }, 6000);
}

function showConnection({ state, delayMs, attempt, resumed }) {
  const box = $("#conn");
  box.dataset.state = state;
  const retry = $("#conn-retry");
  retry.hidden = state !== "reconnecting";
  let text;
  if (state === "open") text = resumed ? "Live (reconnected)" : "Live";
  else if (state === "connecting") text = "Connecting…";
  else if (delayMs !== undefined) text = `Connection lost: retrying in ${fmtDuration(delayMs / 1000)} (attempt ${attempt})`;
  else text = "Reconnecting…";
  $("#conn-text").textContent = text;
}

// --- jobs ----------------------------------------------------------------------------------

/** Submit over the socket (over HTTP when too big for one frame); the job joins the table. */
async function submit(body) {
  const job =
    Hub.frameSize(body) > WS_FRAME_LIMIT
      ? await api("/v1/jobs", { method: "POST", body })
      : await hub.submit(body);
  store.mergeView(job);
  return job;
}

/** Submit a body built elsewhere (a bulk job's, as a Blob): over HTTP, whatever its size. */
async function submitBlob(blob) {
  const job = await api("/v1/jobs", { method: "POST", body: blob });
  store.mergeView(job);
  return job;
}

/** Resolve with the job once it has finished. */
function waitFor(jobId) {
  return new Promise((resolve) => {
    const now = store.get(jobId);
    if (now && TERMINAL.has(now.status)) {
      resolve(now);
      return;
    }
    const listener = ({ detail }) => {
      if (detail.job.id === jobId && TERMINAL.has(detail.job.status)) {
        store.removeEventListener("job", listener);
        resolve(detail.job);
      }
    };
    store.addEventListener("job", listener);
  });
}

async function cancel(jobId, button) {
  if (button) button.disabled = true;
  try {
    const job = hub.open
      ? await hub.cancel(jobId)
      : await api(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" });
    store.mergeView(job);
    if (!TERMINAL.has(job.status)) toast(`Job ${shortId(jobId)} stops at its next chunk.`);
  } catch (exc) {
    toast(`Cancel failed: ${exc.message}`);
  } finally {
    if (button) button.disabled = false;
  }
}

/** Read the newest jobs (at each (re)connect and after a reset); a failure shows in the page. */
async function loadJobs() {
  try {
    const { jobs } = await api(`/v1/jobs?limit=${JOBS_LOADED}`);
    for (const view of jobs.reverse()) store.mergeView(view);
  } catch (exc) {
    if (hub.open) toast(exc.message);
  }
}

// --- the deployment, from the hub's stats message ------------------------------------------

const workersPanel = new WorkersPanel($("#workers-body"), $("#workers-empty"));
const modelsPanel = new ModelsPanel($("#models-list"), $("#models-empty"));
let shownModels = null; // the models as last drawn (JSON), so that an unchanged list is not redrawn
let statsFailed = false;

function showModels(list) {
  const json = JSON.stringify(list);
  if (json === shownModels) return;
  shownModels = json;
  models = new Map(list.map((m) => [m.name, m]));
  for (const m of list) hub.subscribeModel(m.name);
  modelsPanel.update(list);
  tryPanel.setModels(list);
  bulkPanel.describe();
  $("#draw").hidden = !models.has("digits");
}

function sum(pools, field) {
  return String(pools.reduce((n, p) => n + p[field], 0));
}

// Pools and workers tell every tenant's activity: the hub sends them to admin keys only (as
// /v1/queues and /v1/workers), and the panels then say so instead.
const onlineTraffic = new OnlineTraffic();

function showDeployment({ ts, pools, workers, online }) {
  $("#workers-table").hidden = !workers;
  $("#workers-admin").hidden = Boolean(workers);
  $("#queues-admin").hidden = Boolean(pools);
  if (workers) workersPanel.update(workers);
  if (pools) renderQueues($("#queues"), pools);
  else $("#queues").replaceChildren();
  $("#online").hidden = !online;
  if (online) renderOnline($("#online"), onlineTraffic.rates(ts, online));
  $("#stat-workers").textContent = pools ? sum(pools, "workers") : "–";
  $("#stat-running").textContent = pools ? sum(pools, "running") : "–";
  $("#stat-waiting").textContent = pools ? sum(pools, "depth") : "–";
}

function showStats(stats) {
  if (stats.error) {
    if (!statsFailed) toast(stats.error); // the figures shown stay until the hub reads again
    statsFailed = true;
    for (const note of document.querySelectorAll(".loading")) note.textContent = `Waiting for the hub: ${stats.error}`;
    return;
  }
  statsFailed = false;
  showModels(stats.models);
  showDeployment(stats);
  document.documentElement.dataset.stats = "loaded"; // the empty notices may show from now on
}

// --- charts --------------------------------------------------------------------------------

const throughput = new ThroughputChart($("#chart-rate"));
const latency = new LatencyChart($("#chart-latency"));

function drawCharts() {
  const series = metrics.series();
  throughput.data = series;
  latency.data = series;
  throughput.paint();
  latency.paint();
  const recent = metrics.recent();
  const ms = (s) => (s == null ? "–" : fmtDuration(s));
  $("#stat-rate").textContent = recent.rate.toFixed(recent.rate >= 10 ? 0 : 2);
  $("#stat-p50").textContent = ms(recent.p50);
  $("#stat-p95").textContent = ms(recent.p95);
  const peak = Math.max(...series.map((b) => b.rate));
  $("#chart-rate").setAttribute("aria-label", `jobs per second over the last 5 minutes; now ${recent.rate.toFixed(2)}, peak ${peak.toFixed(2)}`);
  $("#chart-latency").setAttribute("aria-label", `latency over the last 5 minutes; last minute p50 ${ms(recent.p50)}, p95 ${ms(recent.p95)}`);
}
const redraw = coalesce(drawCharts, 500);

// --- wiring --------------------------------------------------------------------------------

const fetchJob = (id) => api(`/v1/jobs/${encodeURIComponent(id)}`);

const table = new JobsTable({
  body: $("#jobs-body"),
  empty: $("#jobs-empty"),
  store,
  onCancel: cancel,
  onDetail: (id, opener) => detail.open(id, opener),
});
const detail = new JobDetail({
  dialog: $("#detail"),
  store,
  hub,
  models: () => models,
  fetchJob,
  onCancel: cancel,
});
const tryPanel = new TryPanel($("#try"), { submit, waitFor, models: () => models });
const bulkPanel = new BulkPanel($("#try"), {
  submitBlob,
  fetchJob,
  cancel,
  store,
  model: () => tryPanel.model(),
  models: () => models,
});
$("#try-model").addEventListener("change", () => bulkPanel.describe());
const digitPad = new DigitPad($("#draw"), { submit, waitFor, model: () => models.get("digits") });
digitPad.clear();
void table;

hub.addEventListener("state", ({ detail: d }) => showConnection(d));
hub.addEventListener("event", ({ detail: event }) => {
  store.applyEvent(event);
  if (TERMINAL.has(event.type) && hub.jobs.has(event.job_id)) hub.unsubscribeJob(event.job_id);
});
hub.addEventListener("open", ({ detail: d }) => {
  // After a reconnect the model subscriptions resume from the last event id. Unfinished jobs
  // resume by id too (each from its own last event), and the job list is read again, for
  // whatever happened while the page was away; the hub's stats come again on the socket.
  if (d.resumed) {
    for (const job of store.jobs.values()) {
      if (!TERMINAL.has(job.status)) hub.subscribeJob(job.id, job.lastEventId);
    }
  }
  loadJobs();
});
// the log no longer holds the events after our last id: what the list says is all there is
hub.addEventListener("reset", () => loadJobs());
hub.addEventListener("stats", ({ detail: stats }) => showStats(stats));
hub.addEventListener("problem", ({ detail: d }) => toast(d.message));
store.addEventListener("finished", ({ detail: d }) => {
  metrics.record(d.job);
  redraw();
});
$("#conn-retry").addEventListener("click", () => hub.reconnectNow());

setInterval(drawCharts, 2000); // the charts' window slides: no request, a repaint
drawCharts();
hub.subscribeStats();
hub.start();

// for the browser tests and the curious: the live state, read-only by convention
window.inferhub = { hub, store, metrics };
