// Showing a job's outputs: class answers with their probabilities, or the tensors themselves.

import { download } from "./api.js";
import { el, fmtNumber } from "./util.js";

/** For classifiers (an integer `label` output and a float `probabilities` [N, C]): per row,
 *  the class index, its name and the probabilities; else null. */
export function classify(outputs, labels) {
  if (!outputs) return null;
  const label = outputs.find((o) => o.name === "label");
  const probs = outputs.find((o) => o.name === "probabilities");
  if (!label || !Array.isArray(label.data)) return null;
  const classes = probs && probs.shape?.length === 2 ? probs.shape[1] : 0;
  return label.data.map((index, row) => ({
    index,
    name: labels?.[index] ?? String(index),
    probabilities: classes ? probs.data.slice(row * classes, (row + 1) * classes) : null,
  }));
}

/** A horizontal bar per class; the chosen class stands out. */
export function probabilityChart(probabilities, labels, chosen, id) {
  const list = el("ol", { class: "probs", id, "aria-label": "class probabilities" });
  probabilities.forEach((p, i) => {
    const name = labels?.[i] ?? String(i);
    const pct = Math.max(0, Math.min(100, p * 100));
    list.append(
      el(
        "li",
        { class: i === chosen ? "chosen" : "", dataset: { class: name } },
        el("span", { class: "probs-name" }, name),
        el(
          "span",
          { class: "probs-track", "aria-hidden": "true" },
          el("span", { class: "probs-fill", style: { width: `${pct}%` } }),
        ),
        el("span", { class: "probs-value" }, `${pct.toFixed(pct < 10 ? 1 : 0)}%`),
      ),
    );
  });
  return list;
}

/** Every output as name, datatype, shape and its first values. */
export function tensorList(tensors, { maxValues = 48, withData = true } = {}) {
  const list = el("dl", { class: "tensors" });
  for (const t of tensors || []) {
    list.append(el("dt", {}, t.name, " ", el("span", { class: "muted" }, `${t.datatype ?? ""} [${(t.shape || []).join(", ")}]`)));
    if (withData && Array.isArray(t.data)) {
      const shown = t.data.slice(0, maxValues).map((v) => fmtNumber(v)).join(", ");
      const more = t.data.length > maxValues ? `, … (${t.data.length} values)` : "";
      list.append(el("dd", { class: "mono" }, `[${shown}${more}]`));
    }
  }
  return list;
}

/** Outputs too large to ride in events: their summary, and links to fetch them whole. */
export function renderSummary(jobId, summary) {
  const box = el("div", { class: "outputs" });
  const list = el("dl", { class: "tensors" });
  for (const t of summary) {
    list.append(el("dt", {}, t.name, " ", el("span", { class: "muted" }, `${t.datatype} [${t.shape.join(", ")}] · ${fmtBytes(t.bytes)}`)));
    if (t.classes) {
      const counts = Object.entries(t.classes).map(([label, n]) => `${label}: ${n}`).join(", ");
      list.append(el("dd", { class: "mono" }, counts));
    }
  }
  const url = `/v1/jobs/${encodeURIComponent(jobId)}/outputs`;
  const links = el("p", { class: "downloads" }, "Download: ");
  for (const [format, name] of [["npz", `${jobId}.npz`], ["json", `${jobId}.json`]]) {
    const button = el("button", { class: "btn", type: "button", dataset: { format } }, format === "npz" ? ".npz" : "JSON");
    button.addEventListener("click", () => download(`${url}?format=${format}`, name).catch((exc) => {
      button.textContent = `failed: ${exc.message}`;
    }));
    links.append(button, " ");
  }
  box.append(list, links);
  return box;
}

function fmtBytes(n) {
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

/** Outputs for a person: per-row classes when the model is a classifier, else tensors. */
export function renderOutputs(outputs, labels, { maxRows = 8 } = {}) {
  const rows = classify(outputs, labels);
  if (!rows) return tensorList(outputs);
  const box = el("div", { class: "outputs" });
  if (rows.length === 1 && rows[0].probabilities) {
    const [row] = rows;
    box.append(
      el("p", { class: "answer" }, "Answer: ", el("strong", { class: "answer-value" }, row.name)),
      probabilityChart(row.probabilities, labels, row.index),
    );
    return box;
  }
  const counts = new Map();
  for (const row of rows) counts.set(row.name, (counts.get(row.name) || 0) + 1);
  box.append(
    el(
      "p",
      {},
      `${rows.length} rows: `,
      [...counts.entries()]
        .sort((a, b) => b[1] - a[1])
        .map(([name, n]) => `${name} × ${n}`)
        .join(", "),
    ),
  );
  const list = el("ol", { class: "rows", start: 0 });
  for (const row of rows.slice(0, maxRows)) {
    const p = row.probabilities ? ` (p = ${fmtNumber(row.probabilities[row.index], 3)})` : "";
    list.append(el("li", {}, `${row.name}${p}`));
  }
  box.append(list);
  if (rows.length > maxRows) box.append(el("p", { class: "muted small" }, `… and ${rows.length - maxRows} more rows`));
  return box;
}
