// Small DOM and formatting helpers shared by the dashboard modules.

/** Build an element: el("td", {class: "x", dataset: {a: 1}, onclick: f}, "text", child). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") Object.assign(node.style, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
}

/** Replace every child of ``node``. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** Compare two event ids ("<ms>-<seq>"): negative, zero or positive. */
export function compareIds(a, b) {
  if (a === b) return 0;
  if (a == null) return -1;
  if (b == null) return 1;
  const [am, as = "0"] = a.split("-");
  const [bm, bs = "0"] = b.split("-");
  return Number(am) - Number(bm) || Number(as) - Number(bs);
}

/** A job id's first hex digits: an id is "<pool>.<32 hex digits>". */
export function shortId(id) {
  return id ? id.slice(id.lastIndexOf(".") + 1).slice(0, 8) : "";
}

/** A duration in seconds as "850 ms", "2.4 s", "3 min 20 s". */
export function fmtDuration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "";
  if (seconds < 0) seconds = 0;
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const m = Math.floor(seconds / 60);
  return `${m} min ${Math.round(seconds - m * 60)} s`;
}

/** Unix seconds as a local clock time "14:03:07". */
export function fmtClock(ts) {
  if (ts == null) return "";
  const d = new Date(ts * 1000);
  return d.toLocaleTimeString([], { hour12: false });
}

export function fmtAgo(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "";
  return seconds < 1 ? "just now" : `${fmtDuration(seconds)} ago`;
}

export function fmtNumber(x, digits = 3) {
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(2);
  return String(Number(x.toPrecision(digits)));
}

/** The nth percentile (0..100) of a list of numbers, or null when empty. */
export function percentile(values, p) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo);
}

/** Run ``fn`` at most once per ``ms``, at the end of a burst of calls. */
export function coalesce(fn, ms = 50) {
  let timer = null;
  return () => {
    if (timer !== null) return;
    timer = setTimeout(() => {
      timer = null;
      fn();
    }, ms);
  };
}

/** Clocks: the hub's unix time as best known here (browser clock + the skew seen in events). */
export const clock = {
  skew: 0,
  samples: [],
  observe(serverTs) {
    const sample = serverTs - Date.now() / 1000;
    if (Math.abs(sample) > 30) return; // a replayed old event, not a clock difference
    this.samples.push(sample);
    if (this.samples.length > 50) this.samples.shift();
    // transit delay only makes a sample smaller: the largest is the closest to the true skew
    this.skew = Math.max(...this.samples);
  },
  now() {
    return Date.now() / 1000 + this.skew;
  },
};
