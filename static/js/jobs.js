// The live jobs table and the job detail dialog.

import { TERMINAL } from "./store.js";
import { renderOutputs, renderSummary, tensorList } from "./outputs.js";
import { clock, coalesce, el, fill, fmtClock, fmtDuration, shortId } from "./util.js";

const SHOWN = 50;

/** A progress bar (role=progressbar, aria-valuenow in percent) and its caption. */
export function progressBar(id) {
  const fill_ = el("span", { class: "bar-fill" });
  const bar = el(
    "div",
    { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, id },
    fill_,
  );
  const caption = el("span", { class: "bar-caption" });
  return { bar, fill: fill_, caption };
}

/** Show a job's progress on a bar made by progressBar. */
export function showProgress(parts, job) {
  const { bar, fill: fill_, caption } = parts;
  let pct;
  let text;
  const p = job.progress;
  if (job.status === "succeeded") {
    pct = 100;
    text = p ? `${p.total}/${p.total}` : "done";
  } else if (p && p.total > 0) {
    pct = (100 * p.done) / p.total;
    text = `${p.done}/${p.total}`;
  } else {
    pct = job.status === "started" ? null : 0;
    text = job.status === "started" ? "running" : TERMINAL.has(job.status) ? "" : "waiting";
  }
  bar.dataset.status = job.status;
  if (pct === null) {
    bar.classList.add("indeterminate");
    bar.removeAttribute("aria-valuenow");
    fill_.style.width = "";
  } else {
    bar.classList.remove("indeterminate");
    const rounded = Math.round(pct * 10) / 10;
    bar.setAttribute("aria-valuenow", String(rounded));
    fill_.style.width = `${rounded}%`;
  }
  bar.setAttribute("aria-valuetext", text || job.status);
  caption.textContent = text;
}

export function statusBadge(status) {
  return el("span", { class: `badge s-${status}` }, status);
}

export class JobsTable {
  constructor({ body, empty, store, onCancel, onDetail }) {
    this.body = body;
    this.empty = empty;
    this.store = store;
    this.onCancel = onCancel;
    this.onDetail = onDetail;
    this.rows = new Map(); // job id -> row parts
    this.reorder = coalesce(() => this._reorder(), 50);
    store.addEventListener("job", ({ detail }) => {
      const row = this.rows.get(detail.job.id);
      if (row) this._update(row, detail.job);
      if (detail.added || !row) this.reorder();
    });
    setInterval(() => this._tick(), 1000);
  }

  _row(job) {
    const progress = progressBar();
    const detail = el(
      "button",
      { class: "link mono", type: "button", "aria-label": `details of job ${job.id}`, title: job.id },
      shortId(job.id),
    );
    detail.addEventListener("click", () => this.onDetail(job.id, detail));
    const cancel = el("button", { class: "btn small danger", type: "button", "aria-label": `cancel job ${job.id}` }, "Cancel");
    cancel.addEventListener("click", () => this.onCancel(job.id, cancel));
    const cells = {
      status: el("td", { "data-label": "Status" }),
      queued: el("td", { "data-label": "Queued", class: "num" }),
      wait: el("td", { "data-label": "Waited", class: "num" }),
      run: el("td", { "data-label": "Ran", class: "num" }),
      attempt: el("td", { "data-label": "Attempt", class: "num" }),
      actions: el("td", { class: "actions" }, cancel),
    };
    const tr = el(
      "tr",
      { dataset: { job: job.id } },
      el("td", { "data-label": "Job" }, detail),
      el("td", { "data-label": "Model" }, job.model),
      cells.status,
      el("td", { "data-label": "Progress", class: "progress-cell" }, progress.bar, progress.caption),
      cells.queued,
      cells.wait,
      cells.run,
      cells.attempt,
      cells.actions,
    );
    const row = { tr, cells, progress, cancel, status: null };
    this._update(row, job);
    return row;
  }

  _update(row, job) {
    const { cells } = row;
    if (row.status !== job.status) {
      row.status = job.status;
      row.tr.dataset.status = job.status;
      fill(cells.status, statusBadge(job.status));
    }
    showProgress(row.progress, job);
    cells.queued.textContent = fmtClock(job.created_at);
    cells.attempt.textContent = job.attempt ? String(job.attempt) : "";
    this._times(row, job);
    const cancellable = !TERMINAL.has(job.status);
    row.cancel.hidden = !cancellable;
  }

  _times(row, job) {
    const now = clock.now();
    const started = job.started_at;
    const wait = job.created_at != null ? (started ?? (TERMINAL.has(job.status) ? null : now)) - job.created_at : null;
    row.cells.wait.textContent = wait != null && !Number.isNaN(wait) ? fmtDuration(wait) : "";
    const ran = started != null ? (job.finished_at ?? now) - started : null;
    row.cells.run.textContent = ran != null ? fmtDuration(ran) : "";
  }

  _tick() {
    for (const [id, row] of this.rows) {
      const job = this.store.get(id);
      if (job && !TERMINAL.has(job.status)) this._times(row, job);
    }
  }

  _reorder() {
    const jobs = this.store.newest(SHOWN);
    const keep = new Set(jobs.map((j) => j.id));
    for (const [id, row] of this.rows) {
      if (!keep.has(id)) {
        row.tr.remove();
        this.rows.delete(id);
      }
    }
    let previous = null;
    for (const job of jobs) {
      let row = this.rows.get(job.id);
      if (!row) {
        row = this._row(job);
        this.rows.set(job.id, row);
      }
      const wanted = previous ? previous.nextSibling : this.body.firstChild;
      if (wanted !== row.tr) this.body.insertBefore(row.tr, wanted);
      previous = row.tr;
    }
    this.empty.hidden = jobs.length > 0;
  }
}

/** The detail dialog of one job: summary, inputs, outputs and its event timeline, live. */
export class JobDetail {
  constructor({ dialog, store, hub, models, fetchJob, onCancel }) {
    this.dialog = dialog;
    this.store = store;
    this.hub = hub;
    this.models = models; // () => Map name -> model entry
    this.fetchJob = fetchJob;
    this.onCancel = onCancel;
    this.jobId = null;
    this.opener = null;
    this.content = dialog.querySelector("[data-content]");
    this.title = dialog.querySelector("[data-title]");
    this.render = coalesce(() => this._render(), 100);
    dialog.querySelector("[data-close]").addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => {
      this.jobId = null;
      if (this.opener && this.opener.isConnected) this.opener.focus();
    });
    dialog.addEventListener("click", (e) => {
      if (e.target === dialog) dialog.close(); // a click on the backdrop
    });
    store.addEventListener("job", ({ detail }) => {
      if (detail.job.id === this.jobId) this.render();
    });
  }

  async open(jobId, opener) {
    this.jobId = jobId;
    this.opener = opener;
    this.error = null;
    this._render();
    if (!this.dialog.open) this.dialog.showModal();
    const job = this.store.get(jobId);
    if (job && !job.events.some((e) => e.type === "queued")) {
      this.hub.subscribeJob(jobId); // replays its events from the first one
    }
    try {
      const view = await this.fetchJob(jobId);
      if (this.jobId === jobId) this.store.mergeView(view);
    } catch (exc) {
      this.error = exc.message;
      this.render();
    }
  }

  _render() {
    const job = this.store.get(this.jobId);
    if (!job) return;
    const model = this.models().get(job.model);
    const labels = model?.labels;
    this.title.textContent = `Job ${shortId(job.id)}`;
    const times = [
      ["Job id", el("span", { class: "mono" }, job.id)],
      ["Model", `${job.model}${job.version ? ` (version ${job.version})` : ""}`],
      ["Status", statusBadge(job.status)],
      ["Rows", job.rows ?? ""],
      ["Attempt", job.attempt || ""],
      ["Queued", fmtClock(job.created_at)],
      ["Started", job.started_at ? `${fmtClock(job.started_at)} (waited ${fmtDuration(job.started_at - job.created_at)})` : ""],
      ["Finished", job.finished_at ? `${fmtClock(job.finished_at)}${job.started_at ? ` (ran ${fmtDuration(job.finished_at - job.started_at)})` : ""}` : ""],
      ["Worker", job.worker ?? ""],
    ];
    const summary = el("dl", { class: "facts" });
    for (const [k, v] of times) if (v !== "" && v != null) summary.append(el("dt", {}, k), el("dd", {}, v));
    const parts = [summary];
    if (!TERMINAL.has(job.status)) {
      const progress = progressBar("detail-bar");
      showProgress(progress, job);
      const cancel = el("button", { class: "btn danger", type: "button" }, "Cancel job");
      cancel.addEventListener("click", () => this.onCancel(job.id, cancel));
      parts.push(el("div", { class: "detail-progress" }, progress.bar, progress.caption, cancel));
    }
    if (job.error) parts.push(el("p", { class: "error-text" }, `Error: ${job.error}`));
    if (job.reason) parts.push(el("p", {}, `Canceled: ${job.reason}`));
    parts.push(el("h3", {}, "Inputs"));
    parts.push(job.inputs ? tensorList(job.inputs, { withData: false }) : el("p", { class: "muted" }, "loading…"));
    parts.push(el("h3", {}, "Outputs"));
    if (job.outputs) parts.push(renderOutputs(job.outputs, labels));
    else if (job.outputsSummary) parts.push(renderSummary(job.id, job.outputsSummary));
    else if (job.status === "succeeded") parts.push(el("p", { class: "muted" }, "loading…"));
    else parts.push(el("p", { class: "muted" }, "none yet"));
    parts.push(el("h3", {}, "Events"));
    parts.push(this._timeline(job));
    if (this.error) parts.push(el("p", { class: "error-text" }, this.error));
    fill(this.content, parts);
  }

  _timeline(job) {
    if (!job.events.length) return el("p", { class: "muted" }, "no events seen yet");
    const t0 = job.events[0].ts;
    const list = el("ol", { class: "timeline" });
    for (const e of job.events) {
      const d = e.data || {};
      let what = "";
      if (e.type === "started") what = `attempt ${d.attempt ?? 1}${d.worker ? ` on ${d.worker}` : ""}`;
      else if (e.type === "progress") what = `${d.done}/${d.total} rows`;
      else if (e.type === "failed") what = d.error ?? "";
      else if (e.type === "canceled") what = [d.reason, d.done != null ? `after ${d.done} rows` : ""].filter(Boolean).join(", ");
      list.append(
        el(
          "li",
          { dataset: { type: e.type } },
          el("span", { class: "mono tl-time" }, `+${fmtDuration(e.ts - t0) || "0 ms"}`),
          statusBadge(e.type),
          el("span", { class: "tl-what" }, what),
        ),
      );
    }
    return list;
  }
}
