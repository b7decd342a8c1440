// Throughput and latency from the jobs' own events, drawn on canvas; queue depth per pool.

import { clock, el, fill, fmtDuration, percentile } from "./util.js";

const WINDOW_S = 300; // the charts show the last five minutes
const BUCKET_S = 10;
const RECENT_S = 60; // the headline numbers cover the last minute

export class Metrics {
  constructor() {
    this.done = []; // {id, t, latency | null, status}, oldest first
    this.ids = new Set();
  }

  /** Record a finished job once (from its terminal event or from a job view). */
  record(job) {
    if (this.ids.has(job.id) || job.finished_at == null) return;
    const cutoff = clock.now() - WINDOW_S - BUCKET_S;
    if (job.finished_at < cutoff) return;
    this.ids.add(job.id);
    const latency =
      job.status === "succeeded" && job.created_at != null ? job.finished_at - job.created_at : null;
    const item = { id: job.id, t: job.finished_at, latency, status: job.status };
    let at = this.done.length;
    while (at > 0 && this.done[at - 1].t > item.t) at -= 1;
    this.done.splice(at, 0, item);
  }

  _prune(now) {
    const cutoff = now - WINDOW_S - BUCKET_S;
    while (this.done.length && this.done[0].t < cutoff) this.ids.delete(this.done.shift().id);
  }

  /** Buckets over the window: jobs/s, p50 and p95 latency (s), oldest first. */
  series(now = clock.now()) {
    this._prune(now);
    const end = Math.ceil(now / BUCKET_S) * BUCKET_S;
    const start = end - WINDOW_S;
    const n = WINDOW_S / BUCKET_S;
    const buckets = Array.from({ length: n }, (_, i) => ({ t: start + i * BUCKET_S, count: 0, lat: [] }));
    for (const d of this.done) {
      const i = Math.floor((d.t - start) / BUCKET_S);
      if (i < 0 || i >= n) continue;
      buckets[i].count += 1;
      if (d.latency != null) buckets[i].lat.push(d.latency);
    }
    return buckets.map((b) => ({
      t: b.t,
      rate: b.count / BUCKET_S,
      p50: percentile(b.lat, 50),
      p95: percentile(b.lat, 95),
    }));
  }

  /** The last minute: jobs/s, p50, p95 (s) and how many finished. */
  recent(now = clock.now()) {
    const items = this.done.filter((d) => d.t > now - RECENT_S);
    const lat = items.filter((d) => d.latency != null).map((d) => d.latency);
    return {
      count: items.length,
      rate: items.length / RECENT_S,
      p50: percentile(lat, 50),
      p95: percentile(lat, 95),
    };
  }
}

// --- drawing ---------------------------------------------------------------------------

function niceMax(x) {
  if (!(x > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 2, 2.5, 5, 10]) if (x <= m * p) return m * p;
  return 10 * p;
}

/** A latency axis label with the digits its scale needs: "0.25ms", "12.5ms", "1.5s". */
function tick(seconds) {
  return seconds < 1 ? `${Number((seconds * 1000).toPrecision(3))}ms` : `${Number(seconds.toPrecision(3))}s`;
}

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

/** A canvas chart sized to its box: `draw(ctx, width, height)` repaints it. */
class CanvasChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.data = null;
    new ResizeObserver(() => this.paint()).observe(canvas);
  }

  paint() {
    const { canvas } = this;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height || !this.data) return;
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    this.draw(ctx, width, height);
  }

  /** Grid, axis labels and time marks; with no data, only the zero line and a note. */
  frame(ctx, width, height, max, format, empty = false) {
    const left = 44;
    const bottom = height - 18;
    const top = 8;
    ctx.font = `11px ${css("--font")}`;
    ctx.fillStyle = css("--muted");
    ctx.strokeStyle = css("--grid");
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= (empty ? 0 : 2); i += 1) {
      const y = bottom - ((bottom - top) * i) / 2;
      ctx.beginPath();
      ctx.moveTo(left, Math.round(y) + 0.5);
      ctx.lineTo(width - 4, Math.round(y) + 0.5);
      ctx.stroke();
      ctx.fillText(i ? format((max * i) / 2) : "0", left - 6, y);
    }
    if (empty) {
      ctx.textAlign = "center";
      ctx.fillText(`no finished jobs in the last ${WINDOW_S / 60} minutes`, (left + width) / 2, (top + bottom) / 2);
    }
    ctx.textAlign = "left";
    ctx.textBaseline = "alphabetic";
    ctx.fillText(`−${WINDOW_S / 60} min`, left, height - 3);
    ctx.textAlign = "right";
    ctx.fillText("now", width - 4, height - 3);
    return { left, right: width - 4, top, bottom };
  }
}

export class ThroughputChart extends CanvasChart {
  draw(ctx, width, height) {
    const series = this.data;
    const peak = Math.max(...series.map((b) => b.rate));
    const max = niceMax(peak);
    const box = this.frame(ctx, width, height, max, (v) => String(Number(v.toFixed(2))), !(peak > 0));
    const step = (box.right - box.left) / series.length;
    ctx.fillStyle = css("--accent");
    series.forEach((b, i) => {
      const h = ((box.bottom - box.top) * b.rate) / max;
      if (h > 0) ctx.fillRect(box.left + i * step + 1, box.bottom - h, Math.max(1, step - 2), h);
    });
  }
}

export class LatencyChart extends CanvasChart {
  draw(ctx, width, height) {
    const series = this.data;
    const values = series.flatMap((b) => [b.p50, b.p95]).filter((v) => v != null);
    const max = niceMax(Math.max(0, ...values) * 1000) / 1000;
    const box = this.frame(ctx, width, height, max, tick, !values.length);
    const step = (box.right - box.left) / series.length;
    for (const [key, color] of [["p95", css("--p95")], ["p50", css("--p50")]]) {
      ctx.strokeStyle = color;
      ctx.fillStyle = color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      let drawing = false;
      series.forEach((b, i) => {
        const v = b[key];
        if (v == null) {
          drawing = false;
          return;
        }
        const x = box.left + (i + 0.5) * step;
        const y = box.bottom - ((box.bottom - box.top) * v) / max;
        if (drawing) ctx.lineTo(x, y);
        else ctx.moveTo(x, y);
        drawing = true;
        ctx.fillRect(x - 2, y - 2, 4, 4);
      });
      ctx.stroke();
    }
  }
}

/** Per pool: jobs waiting (its queue depth) and running, and the workers serving it. */
export function renderQueues(list, pools) {
  if (!pools.length) {
    fill(list, el("li", { class: "muted" }, "no pools yet"));
    return;
  }
  const most = Math.max(1, ...pools.map((p) => p.depth + p.running));
  fill(
    list,
    pools.map((p) =>
      el(
        "li",
        { dataset: { pool: p.pool, depth: String(p.depth), running: String(p.running) } },
        el("span", { class: "pool-name" }, p.pool),
        el(
          "span",
          { class: "stack", "aria-hidden": "true" },
          el("span", { class: "stack-run", style: { width: `${(100 * p.running) / most}%` } }),
          el("span", { class: "stack-wait", style: { width: `${(100 * p.depth) / most}%` } }),
        ),
        el(
          "span",
          { class: "pool-text" },
          `${p.depth} waiting${p.depth ? ` (oldest ${fmtDuration(p.oldest_age_s)})` : ""} · ` +
            `${p.running} running · ${p.workers} worker${p.workers === 1 ? "" : "s"}`,
        ),
      ),
    ),
  );
}

/**
 * The hub's online (/v2 infer) traffic per model, as rates between two stats messages: their
 * `online` counters are this hub's totals so far, so a rate is a difference over the time
 * between the messages. Before a second message there is no rate yet, only the totals.
 */
export class OnlineTraffic {
  constructor() {
    this.previous = null; // {ts, online}
  }

  rates(ts, online) {
    const before = this.previous;
    this.previous = { ts, online };
    const dt = before ? ts - before.ts : 0;
    return Object.entries(online)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([model, now]) => {
        const then = (before && before.online[model]) || {};
        const rate = (key) => (dt > 0 ? ((now[key] || 0) - (then[key] || 0)) / dt : null);
        const batches = (now.batches || 0) - (then.batches || 0);
        const batched = (now.batched_requests || 0) - (then.batched_requests || 0);
        return {
          model,
          requests: rate("succeeded"),
          rows: rate("rows"),
          failed: ["failed", "timeout", "refused"].reduce((n, k) => n + (rate(k) || 0), 0),
          batch: batches > 0 ? batched / batches : null,
          total: now.succeeded || 0,
        };
      });
  }
}

export function renderOnline(list, rows) {
  if (!rows.length) {
    fill(list, el("li", { class: "muted" }, "no online requests on this hub yet"));
    return;
  }
  const num = (x, digits = 1) => (x == null ? "–" : x.toFixed(x >= 10 ? 0 : digits));
  fill(
    list,
    rows.map((r) =>
      el(
        "li",
        { dataset: { model: r.model, total: String(r.total) } },
        el("span", { class: "pool-name" }, r.model),
        el(
          "span",
          { class: "pool-text" },
          `${num(r.requests)} req/s · ${num(r.rows)} rows/s · mean batch ${num(r.batch)} · ` +
            `${num(r.failed)} failed/s · ${r.total} answered`,
        ),
      ),
    ),
  );
}
