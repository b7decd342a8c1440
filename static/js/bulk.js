// "Bulk": many rows of the model chosen in the Try panel, drawn in turn from its example rows
// (random values when it ships none), as one job: its progress live, then a summary.
// The body is built in a worker (bulk-worker.js), so that the page never freezes.

import { TERMINAL } from "./store.js";
import { progressBar, showProgress } from "./jobs.js";
import { renderOutputs, renderSummary } from "./outputs.js";
import { el, fill, fmtDuration, shortId } from "./util.js";

const MAX_ROWS = 100000;

/** Build a bulk body off the main thread: resolves with {blob, bytes}. */
function buildBody(model, rows) {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL("./bulk-worker.js", import.meta.url), { type: "module" });
    worker.onmessage = ({ data }) => {
      worker.terminate();
      if (data.error) reject(new Error(data.error));
      else resolve(data);
    };
    worker.onerror = (e) => {
      worker.terminate();
      reject(new Error(e.message || "the page could not build the rows"));
    };
    worker.postMessage({ model, rows });
  });
}

export class BulkPanel {
  constructor(root, { submitBlob, fetchJob, cancel, store, model, models }) {
    this.root = root;
    this.submitBlob = submitBlob; // (blob) => the accepted job
    this.fetchJob = fetchJob; // (id) => the job with its outputs
    this.cancel = cancel;
    this.store = store;
    this.model = model; // () => the model chosen in the Try panel
    this.models = models; // () => Map name -> entry
    this.rows = root.querySelector("#bulk-rows");
    this.button = root.querySelector("#bulk-submit");
    this.cancelButton = root.querySelector("#bulk-cancel");
    this.source = root.querySelector("#bulk-source");
    this.status = root.querySelector("#bulk-status");
    this.result = root.querySelector("#bulk-result");
    this.box = root.querySelector("#bulk-progress");
    this.progress = progressBar("bulk-bar");
    this.box.append(this.progress.bar, this.progress.caption);
    this.job = null;
    this.summarized = null;
    root.querySelector("#bulk-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.submit();
    });
    this.cancelButton.addEventListener("click", () => {
      if (this.job) this.cancel(this.job, this.cancelButton);
    });
    store.addEventListener("job", ({ detail }) => {
      if (detail.job.id === this.job) this._show(detail.job);
    });
  }

  /** Say where the rows of the chosen model come from. */
  describe() {
    const model = this.model();
    const examples = model?.examples?.length ?? 0;
    this.source.textContent = !model
      ? ""
      : examples
        ? `Rows are ${model.name}'s ${examples} example rows, in turn.`
        : `${model.name} ships no example rows: the rows are random values.`;
  }

  async submit() {
    const model = this.model();
    if (!model) return;
    const rows = Math.max(1, Math.min(MAX_ROWS, Math.floor(Number(this.rows.value) || 1)));
    this.button.disabled = true;
    this.status.textContent = `Preparing ${rows.toLocaleString()} rows for ${model.name}…`;
    fill(this.result);
    try {
      const { blob, bytes } = await buildBody(model, rows);
      this.status.textContent = `Sending ${rows.toLocaleString()} rows (${(bytes / 1e6).toFixed(1)} MB)…`;
      const job = await this.submitBlob(blob);
      this.job = job.id;
      this.cancelButton.hidden = false;
      this.cancelButton.disabled = false;
      this._show(this.store.get(job.id) ?? { ...job, progress: null });
    } catch (exc) {
      this.status.textContent = `Not submitted: ${exc.message}`;
      this.button.disabled = false;
    }
  }

  _show(job) {
    showProgress(this.progress, job);
    this.box.dataset.job = job.id;
    this.box.dataset.status = job.status;
    this.status.textContent = `Job ${shortId(job.id)} (${job.model}, ${job.rows ?? "?"} rows): ${job.status}`;
    if (!TERMINAL.has(job.status)) return;
    this.button.disabled = false;
    this.cancelButton.hidden = true;
    if (job.status !== "succeeded") {
      fill(this.result, el("p", {}, job.error ?? job.reason ?? job.status));
    } else if (this.summarized !== job.id) {
      this.summarized = job.id;
      this._summary(job);
    }
  }

  /** Once a job succeeded: how long it took, and its answers: as the page holds them, or,
   *  for outputs too large to ride in events, their summary (class counts, downloads). */
  async _summary(job) {
    const took = job.finished_at != null && job.created_at != null ? job.finished_at - job.created_at : null;
    const ran = job.finished_at != null && job.started_at != null ? job.finished_at - job.started_at : null;
    const timing =
      took == null
        ? `${job.rows} rows done.`
        : `${job.rows} rows in ${fmtDuration(took)}` +
          (ran ? ` (ran ${fmtDuration(ran)}, ${Math.round(job.rows / ran).toLocaleString()} rows/s)` : "") +
          ".";
    const head = el("p", { class: "bulk-summary" }, timing);
    const labels = this.models().get(job.model)?.labels;
    fill(this.result, head, el("p", { class: "muted small" }, "Reading the answers…"));
    try {
      let { outputs, outputsSummary: summary } = job;
      if (!outputs && !summary) {
        const view = await this.fetchJob(job.id); // the page let go of them: read them back
        outputs = view.outputs;
        summary = view.outputs_summary;
      }
      if (this.summarized !== job.id) return;
      if (outputs) fill(this.result, head, renderOutputs(outputs, labels, { maxRows: 3 }));
      else fill(this.result, head, countsLine(job.rows, summary, labels), renderSummary(job.id, summary || []));
    } catch (exc) {
      fill(this.result, head, el("p", { class: "error-text" }, `The answers could not be read: ${exc.message}`));
    }
  }
}

/** "N rows: setosa × 6000, …" from a summary's class counts (as renderOutputs says it). */
function countsLine(rows, summary, labels) {
  const classes = (summary || []).find((t) => t.name === "label")?.classes;
  if (!classes) return null;
  const counts = Object.entries(classes)
    .map(([index, n]) => [labels?.[Number(index)] ?? index, n])
    .sort((a, b) => b[1] - a[1]);
  return el("p", {}, `${rows} rows: `, counts.map(([name, n]) => `${name} × ${n}`).join(", "));
}
