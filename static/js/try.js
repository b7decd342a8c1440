// "Try a model": draw a digit, a form built from any model's signature, and bulk random rows.

import { TERMINAL } from "./store.js";
import { progressBar, showProgress, statusBadge } from "./jobs.js";
import { probabilityChart, renderOutputs, classify } from "./outputs.js";
import { el, fill } from "./util.js";

// --- the digit pad -----------------------------------------------------------------------

const SIDE = 32; // scikit-learn's digits: 32x32 bitmaps ...
const BLOCK = 4; // ... whose 4x4 blocks are counted into 8x8 values of 0..16
const PEN = 5; // stroke width in the 32x32 bitmap, as thick as the dataset's strokes
const PAD = 1; // pixels left free around the drawing in the 32x32 bitmap

/**
 * Turn strokes (lists of [x, y] in 0..1) into the 64 values scikit-learn's digits use: the
 * drawing is centred and scaled, keeping its aspect, to fill the 32x32 bitmap (as the NIST
 * preprocessing did), and every 4x4 block of it becomes the count of inked pixels, 0..16.
 */
export function digitValues(strokes) {
  const points = strokes.flat();
  if (!points.length) return null;
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const [minX, maxX, minY, maxY] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const span = Math.max(maxX - minX, maxY - minY, 0.2);
  const scale = (SIDE - 2 * PAD - PEN) / span;
  const cx = (minX + maxX) / 2;
  const cy = (minY + maxY) / 2;
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = SIDE;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.lineWidth = PEN;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.strokeStyle = ctx.fillStyle = "#000";
  const at = ([x, y]) => [(x - cx) * scale + SIDE / 2, (y - cy) * scale + SIDE / 2];
  for (const stroke of strokes) {
    if (stroke.length === 1) {
      const [x, y] = at(stroke[0]);
      ctx.beginPath();
      ctx.arc(x, y, PEN / 2, 0, 2 * Math.PI);
      ctx.fill();
      continue;
    }
    ctx.beginPath();
    stroke.forEach((p, i) => (i ? ctx.lineTo(...at(p)) : ctx.moveTo(...at(p))));
    ctx.stroke();
  }
  const alpha = ctx.getImageData(0, 0, SIDE, SIDE).data;
  const cells = SIDE / BLOCK;
  const values = new Array(cells * cells).fill(0);
  for (let y = 0; y < SIDE; y += 1) {
    for (let x = 0; x < SIDE; x += 1) {
      values[Math.floor(y / BLOCK) * cells + Math.floor(x / BLOCK)] += alpha[(y * SIDE + x) * 4 + 3] / 255;
    }
  }
  return values.map((v) => Math.min(BLOCK * BLOCK, Math.round(v)));
}

export class DigitPad {
  constructor(root, { submit, waitFor, model }) {
    this.root = root;
    this.submit = submit;
    this.waitFor = waitFor;
    this.model = model; // () => the digits model entry, or undefined
    this.canvas = root.querySelector("#digit-canvas");
    this.preview = root.querySelector("#digit-preview");
    this.result = root.querySelector("#digit-result");
    this.strokes = [];
    this.current = null;
    this.timer = null;
    this.generation = 0;
    root.querySelector("#digit-clear").addEventListener("click", () => this.clear());
    root.querySelector("#digit-classify").addEventListener("click", () => this.classify());
    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => this._down(e));
    c.addEventListener("pointermove", (e) => this._move(e));
    c.addEventListener("pointerup", (e) => this._up(e));
    c.addEventListener("pointercancel", (e) => this._up(e));
    new ResizeObserver(() => this._paint()).observe(c);
    this._paintPreview(null);
  }

  _point(e) {
    const r = this.canvas.getBoundingClientRect();
    return [(e.clientX - r.left) / r.width, (e.clientY - r.top) / r.height];
  }

  _down(e) {
    if (e.button !== 0) return;
    e.preventDefault();
    clearTimeout(this.timer);
    this.canvas.setPointerCapture(e.pointerId);
    this.current = [this._point(e)];
    this.strokes.push(this.current);
    this._paint();
  }

  _move(e) {
    if (!this.current) return;
    for (const ev of e.getCoalescedEvents ? e.getCoalescedEvents() : [e]) this.current.push(this._point(ev));
    this._paint();
  }

  _up() {
    if (!this.current) return;
    this.current = null;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.classify(), 400); // classify once the hand rests
  }

  clear() {
    clearTimeout(this.timer);
    this.generation += 1;
    this.strokes = [];
    this._paint();
    this._paintPreview(null);
    fill(this.result, el("p", { class: "muted" }, "Draw a digit from 0 to 9 in the box."));
    delete this.result.dataset.state;
  }

  _paint() {
    const c = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const w = c.clientWidth;
    if (!w) return;
    if (c.width !== Math.round(w * ratio)) {
      c.width = c.height = Math.round(w * ratio);
    }
    const ctx = c.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, w, w);
    ctx.strokeStyle = "#111";
    ctx.fillStyle = "#111";
    ctx.lineWidth = w * 0.06;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    for (const stroke of this.strokes) {
      ctx.beginPath();
      stroke.forEach(([x, y], i) => (i ? ctx.lineTo(x * w, y * w) : ctx.moveTo(x * w, y * w)));
      if (stroke.length === 1) ctx.lineTo(stroke[0][0] * w + 0.01, stroke[0][1] * w);
      ctx.stroke();
    }
  }

  _paintPreview(values) {
    const c = this.preview;
    const ctx = c.getContext("2d");
    const cell = c.width / 8;
    for (let i = 0; i < 64; i += 1) {
      const v = values ? values[i] / 16 : 0;
      const g = Math.round(255 * (1 - v));
      ctx.fillStyle = `rgb(${g},${g},${g})`;
      ctx.fillRect((i % 8) * cell, Math.floor(i / 8) * cell, cell, cell);
    }
    c.setAttribute("aria-label", values ? `what the model sees: 8x8 values ${values.join(" ")}` : "what the model sees: empty");
  }

  async classify() {
    clearTimeout(this.timer);
    const values = digitValues(this.strokes);
    if (!values) return;
    this._paintPreview(values);
    const model = this.model();
    if (!model) {
      fill(this.result, el("p", { class: "error-text" }, "The digits model is not served."));
      return;
    }
    const generation = ++this.generation;
    const input = model.versions[model.latest].inputs[0];
    this.result.dataset.state = "running";
    fill(this.result, el("p", { class: "muted" }, "Classifying…"));
    try {
      const job = await this.submit({
        model: model.name,
        inputs: [{ name: input.name, datatype: input.datatype, shape: [1, 64], data: values }],
      });
      const done = await this.waitFor(job.id);
      if (generation !== this.generation) return;
      this.result.dataset.job = done.id;
      const rows = classify(done.outputs, model.labels);
      if (done.status !== "succeeded" || !rows) {
        this.result.dataset.state = "failed";
        fill(this.result, el("p", { class: "error-text" }, `The job ${done.status}: ${done.error ?? ""}`));
        return;
      }
      const [row] = rows;
      this.result.dataset.state = "done";
      fill(
        this.result,
        el("p", { class: "answer" }, "It is a ", el("strong", { id: "digit-answer", class: "answer-value" }, row.name)),
        probabilityChart(row.probabilities, model.labels, row.index, "digit-probs"),
      );
    } catch (exc) {
      if (generation !== this.generation) return;
      this.result.dataset.state = "failed";
      fill(this.result, el("p", { class: "error-text" }, exc.message));
    }
  }
}

// --- any model: a form from its signature, a JSON editor, bulk random rows ----------------

const NUMERIC = /^(FP|INT|UINT)/;
const FORM_LIMIT = 32; // inputs with more values per row get a JSON field

function rowShape(input) {
  return input.shape.slice(1).map((d) => (d > 0 ? d : 1));
}

function rowSize(input) {
  return rowShape(input).reduce((a, b) => a * b, 1);
}

function randomValue(datatype) {
  if (datatype === "BOOL") return Math.random() < 0.5;
  if (datatype === "BYTES") return Math.random().toString(36).slice(2, 7);
  if (datatype.startsWith("FP")) return Math.round(Math.random() * 100) / 100;
  return Math.floor(Math.random() * 10);
}

function zero(datatype) {
  return datatype === "BOOL" ? false : datatype === "BYTES" ? "" : 0;
}

/** A request of ``rows`` random rows for every input of ``model``. */
export function randomRequest(model, rows) {
  const { inputs } = model.versions[model.latest];
  return {
    model: model.name,
    inputs: inputs.map((input) => ({
      name: input.name,
      datatype: input.datatype,
      shape: [rows, ...rowShape(input)],
      data: Array.from({ length: rows * rowSize(input) }, () => randomValue(input.datatype)),
    })),
  };
}

export class TryPanel {
  constructor(root, { submit, waitFor, cancel, store, models }) {
    this.root = root;
    this.submit = submit;
    this.waitFor = waitFor;
    this.cancel = cancel;
    this.store = store;
    this.models = models; // () => Map name -> entry
    this.select = root.querySelector("#try-model");
    this.fields = root.querySelector("#try-fields");
    this.json = root.querySelector("#try-json");
    this.result = root.querySelector("#try-result");
    this.modeButtons = root.querySelectorAll("[data-mode]");
    this.mode = "form";
    this.controls = new Map(); // input name -> () => flat values of one row
    this.select.addEventListener("change", () => this.build());
    for (const b of this.modeButtons) b.addEventListener("click", () => this.setMode(b.dataset.mode));
    root.querySelector("#try-random").addEventListener("click", () => this.randomize());
    root.querySelector("#try-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.run();
    });
    // bulk
    this.bulkRows = root.querySelector("#bulk-rows");
    this.bulkButton = root.querySelector("#bulk-submit");
    this.bulkCancel = root.querySelector("#bulk-cancel");
    this.bulkStatus = root.querySelector("#bulk-status");
    this.bulkResult = root.querySelector("#bulk-result");
    this.bulkProgress = progressBar("bulk-bar");
    root.querySelector("#bulk-progress").append(this.bulkProgress.bar, this.bulkProgress.caption);
    this.bulkJob = null;
    root.querySelector("#bulk-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.bulk();
    });
    this.bulkCancel.addEventListener("click", () => {
      if (this.bulkJob) this.cancel(this.bulkJob, this.bulkCancel);
    });
    store.addEventListener("job", ({ detail }) => {
      if (detail.job.id === this.bulkJob) this._showBulk(detail.job);
    });
  }

  /** Refresh the model list (keeping the choice). */
  setModels(models) {
    const names = models.map((m) => m.name);
    const current = this.select.value;
    const same = names.length === this.select.options.length && names.every((n, i) => this.select.options[i].value === n);
    if (!same) {
      fill(this.select, names.map((n) => el("option", { value: n }, n)));
      const preferred = names.includes(current) ? current : names.includes("iris") ? "iris" : names[0];
      if (preferred) this.select.value = preferred;
      if (this.select.value !== this.built) this.build();
    }
  }

  model() {
    return this.models().get(this.select.value);
  }

  build() {
    const model = this.model();
    this.built = model?.name;
    this.controls.clear();
    if (!model) {
      fill(this.fields);
      return;
    }
    const { inputs } = model.versions[model.latest];
    fill(
      this.fields,
      inputs.map((input) => this._fieldset(input)),
    );
    this._syncJson();
    fill(this.result);
  }

  _fieldset(input) {
    const size = rowSize(input);
    const legend = el("legend", {}, input.name, " ", el("span", { class: "muted mono small" }, `${input.datatype} [${input.shape.join(", ")}]`));
    if (size <= FORM_LIMIT && (NUMERIC.test(input.datatype) || input.datatype === "BOOL")) {
      const boxes = Array.from({ length: size }, (_, i) => {
        const id = `f-${input.name}-${i}`;
        const box =
          input.datatype === "BOOL"
            ? el("input", { type: "checkbox", id })
            : el("input", { type: "number", id, step: input.datatype.startsWith("FP") ? "any" : "1", value: "0", inputmode: "decimal", required: true });
        return { id, box };
      });
      this.controls.set(input.name, () =>
        boxes.map(({ box }) => (input.datatype === "BOOL" ? box.checked : Number(box.value))),
      );
      return el(
        "fieldset",
        { class: "grid-fields" },
        legend,
        boxes.map(({ id, box }, i) => el("label", { for: id, class: "field" }, el("span", { class: "small muted" }, `[${i}]`), box)),
      );
    }
    const id = `f-${input.name}`;
    const area = el("textarea", { id, rows: 3, class: "mono", spellcheck: "false" });
    area.value = JSON.stringify(Array(size).fill(zero(input.datatype)));
    this.controls.set(input.name, () => {
      const values = JSON.parse(area.value);
      if (!Array.isArray(values)) throw new Error(`${input.name}: give a JSON array of ${size} values`);
      return values.flat(Infinity);
    });
    return el("fieldset", {}, legend, el("label", { for: id, class: "small muted" }, `one row: a JSON array of ${size} values`), area);
  }

  randomize() {
    const model = this.model();
    if (!model) return;
    const request = randomRequest(model, 1);
    for (const tensor of request.inputs) {
      const input = model.versions[model.latest].inputs.find((i) => i.name === tensor.name);
      if (rowSize(input) <= FORM_LIMIT && (NUMERIC.test(input.datatype) || input.datatype === "BOOL")) {
        tensor.data.forEach((v, i) => {
          const box = this.fields.querySelector(`#${CSS.escape(`f-${input.name}-${i}`)}`);
          if (input.datatype === "BOOL") box.checked = v;
          else box.value = String(v);
        });
      } else {
        this.fields.querySelector(`#${CSS.escape(`f-${input.name}`)}`).value = JSON.stringify(tensor.data);
      }
    }
    this._syncJson();
  }

  _formRequest() {
    const model = this.model();
    const { inputs } = model.versions[model.latest];
    return {
      model: model.name,
      inputs: inputs.map((input) => ({
        name: input.name,
        datatype: input.datatype,
        shape: [1, ...rowShape(input)],
        data: this.controls.get(input.name)(),
      })),
    };
  }

  _syncJson() {
    try {
      this.json.value = JSON.stringify(this._formRequest(), null, 1);
    } catch {
      // an unfinished field: keep the editor as it is
    }
  }

  setMode(mode) {
    if (mode === "json") this._syncJson();
    this.mode = mode;
    for (const b of this.modeButtons) b.setAttribute("aria-pressed", String(b.dataset.mode === mode));
    this.fields.hidden = mode !== "form";
    this.json.parentElement.hidden = mode !== "json";
  }

  async run() {
    const model = this.model();
    if (!model) return;
    let body;
    try {
      body = this.mode === "json" ? JSON.parse(this.json.value) : this._formRequest();
    } catch (exc) {
      fill(this.result, el("p", { class: "error-text" }, `Not a valid request: ${exc.message}`));
      return;
    }
    fill(this.result, el("p", { class: "muted" }, "Running…"));
    try {
      const job = await this.submit(body);
      this.result.dataset.job = job.id;
      const done = await this.waitFor(job.id);
      if (this.result.dataset.job !== done.id) return;
      const labels = this.models().get(done.model)?.labels;
      fill(
        this.result,
        el("p", {}, statusBadge(done.status), " ", el("span", { class: "mono small" }, done.id)),
        done.status === "succeeded" ? renderOutputs(done.outputs, labels) : el("p", { class: "error-text" }, done.error ?? done.reason ?? done.status),
      );
    } catch (exc) {
      fill(this.result, el("p", { class: "error-text" }, exc.message));
    }
  }

  async bulk() {
    const model = this.model();
    if (!model) return;
    const rows = Math.max(1, Math.min(100000, Math.floor(Number(this.bulkRows.value) || 1)));
    this.bulkButton.disabled = true;
    this.bulkStatus.textContent = `Submitting ${rows} random rows to ${model.name}…`;
    fill(this.bulkResult);
    try {
      const job = await this.submit(randomRequest(model, rows));
      this.bulkJob = job.id;
      this.bulkCancel.hidden = false;
      this.bulkCancel.disabled = false;
      this._showBulk(this.store.get(job.id) ?? { ...job, progress: null });
    } catch (exc) {
      this.bulkStatus.textContent = `Not submitted: ${exc.message}`;
      this.bulkButton.disabled = false;
    }
  }

  _showBulk(job) {
    showProgress(this.bulkProgress, job);
    const root = this.root.querySelector("#bulk-progress");
    root.dataset.job = job.id;
    root.dataset.status = job.status;
    this.bulkStatus.textContent = `Job ${job.id.slice(0, 8)} (${job.model}, ${job.rows ?? "?"} rows): ${job.status}`;
    if (TERMINAL.has(job.status)) {
      this.bulkButton.disabled = false;
      this.bulkCancel.hidden = true;
      const labels = this.models().get(job.model)?.labels;
      if (job.status === "succeeded" && job.outputs) fill(this.bulkResult, renderOutputs(job.outputs, labels, { maxRows: 3 }));
      else if (job.status !== "succeeded") fill(this.bulkResult, el("p", {}, job.error ?? job.reason ?? job.status));
    }
  }
}
