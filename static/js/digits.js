// "Draw a digit": a pad whose strokes become the 8x8 values of scikit-learn's digits.

import { probabilityChart, classify } from "./outputs.js";
import { el, fill } from "./util.js";

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
