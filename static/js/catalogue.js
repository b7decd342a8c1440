// Workers and models, as the hub's stats message describes them (as GET /v1/workers and
// GET /v1/models do).

import { clock, el, fill, fmtAgo } from "./util.js";

function signature(tensors) {
  return (tensors || []).map((t) => `${t.name} ${t.datatype} [${t.shape.join(", ")}]`).join(", ");
}

export class WorkersPanel {
  constructor(body, empty) {
    this.body = body;
    this.empty = empty;
    this.known = new Map(); // id -> the last full record seen, to describe stopped workers
  }

  update(workers) {
    const rows = [];
    for (const w of workers) {
      if (w.alive) this.known.set(w.id, w);
      const record = w.alive ? w : { ...this.known.get(w.id), ...w };
      rows.push(record);
    }
    rows.sort((a, b) => Number(b.alive) - Number(a.alive) || a.id.localeCompare(b.id));
    this.empty.hidden = rows.length > 0;
    fill(
      this.body,
      rows.map((w) =>
        el(
          "tr",
          { dataset: { worker: w.id, alive: String(w.alive) }, class: w.alive ? "" : "stopped" },
          el(
            "td",
            { "data-label": "Worker" },
            el("span", { class: "mono" }, w.id),
            w.pid ? el("span", { class: "muted small" }, ` pid ${w.pid}`) : null,
            w.errors?.length
              ? el(
                  "details",
                  { class: "errors" },
                  el("summary", {}, `${w.errors.length} broken model${w.errors.length === 1 ? "" : "s"}`),
                  el("ul", {}, w.errors.map((e) => el("li", { class: "mono small" }, e))),
                )
              : null,
          ),
          el("td", { "data-label": "Pool" }, w.pool ?? ""),
          el("td", { "data-label": "Models" }, (w.models || []).join(", ")),
          el("td", { "data-label": "Running", class: "num" }, w.alive ? String(w.running ?? 0) : ""),
          el("td", { "data-label": "Done", class: "num" }, w.done != null ? String(w.done) : ""),
          el("td", { "data-label": "Heartbeat", class: "num" }, w.alive && w.seen ? fmtAgo(clock.now() - w.seen) : ""),
          el(
            "td",
            { "data-label": "State" },
            el("span", { class: `badge ${w.alive ? "s-alive" : "s-stopped"}` }, w.alive ? "alive" : "stopped"),
          ),
        ),
      ),
    );
  }
}

export class ModelsPanel {
  constructor(list, empty) {
    this.list = list;
    this.empty = empty;
  }

  update(models) {
    this.empty.hidden = models.length > 0;
    fill(
      this.list,
      models.map((m) => {
        const latest = m.versions?.[m.latest] ?? {};
        return el(
          "li",
          { class: "model", dataset: { model: m.name, ready: String(m.ready) } },
          el(
            "div",
            { class: "model-head" },
            el("h3", {}, m.name),
            el("span", { class: `badge ${m.ready ? "s-alive" : "s-stopped"}` }, m.ready ? "ready" : "no worker"),
          ),
          m.description ? el("p", { class: "model-desc" }, m.description) : null,
          el(
            "dl",
            { class: "facts compact" },
            el("dt", {}, "Versions"),
            el("dd", {}, Object.keys(m.versions || {}).join(", "), m.latest ? ` (latest ${m.latest})` : ""),
            el("dt", {}, "Pool"),
            el("dd", {}, m.pool ?? ""),
            el("dt", {}, "Inputs"),
            el("dd", { class: "mono small" }, signature(latest.inputs)),
            el("dt", {}, "Outputs"),
            el("dd", { class: "mono small" }, signature(latest.outputs)),
          ),
        );
      }),
    );
  }
}
