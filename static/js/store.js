// The jobs the page knows, kept up to date from events (and from /v1/jobs views).

import { compareIds, clock } from "./util.js";

export const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const RANK = { queued: 0, started: 1, succeeded: 2, failed: 2, canceled: 2 };
const MAX_JOBS = 300;
const MAX_PROGRESS_EVENTS = 60; // a bulk job's timeline keeps this many progress events
const MAX_KEPT_VALUES = 20000; // larger outputs are fetched by the detail view when needed

function outputSize(outputs) {
  return (outputs || []).reduce((n, o) => n + (Array.isArray(o.data) ? o.data.length : 0), 0);
}

/**
 * Emits "job" ({job, added, event}) when a job changes and "finished" ({job}) once per job
 * when it reaches a terminal state.
 */
export class JobStore extends EventTarget {
  constructor() {
    super();
    this.jobs = new Map();
    this.seen = 0; // insertion counter, orders jobs first seen without a creation time
  }

  get(id) {
    return this.jobs.get(id);
  }

  _create(id, model) {
    const job = {
      id,
      model,
      version: null,
      status: "queued",
      attempt: 0,
      rows: null,
      created_at: null,
      started_at: null,
      finished_at: null,
      progress: null,
      inputs: null,
      outputs: null,
      outputsDropped: false,
      outputsSummary: null, // large outputs: names, shapes, bytes, class counts (stored once)
      error: null,
      reason: null,
      worker: null,
      events: [],
      eventIds: new Set(),
      progressSeen: 0,
      stride: 1,
      lastEventId: null,
      order: this.seen++,
      finishedNotified: false,
    };
    this.jobs.set(id, job);
    this._trim();
    return job;
  }

  _trim() {
    if (this.jobs.size <= MAX_JOBS) return;
    // forget the oldest finished jobs first
    const old = [...this.jobs.values()]
      .filter((j) => TERMINAL.has(j.status))
      .sort((a, b) => sortKey(a) - sortKey(b));
    for (const job of old.slice(0, this.jobs.size - MAX_JOBS)) this.jobs.delete(job.id);
  }

  /** Apply one event (from the socket); duplicates are ignored. */
  applyEvent(event) {
    let job = this.jobs.get(event.job_id);
    const added = !job;
    if (!job) job = this._create(event.job_id, event.model);
    if (job.eventIds.has(event.id)) return;
    clock.observe(event.ts);
    job.eventIds.add(event.id);
    this._remember(job, event);
    if (compareIds(event.id, job.lastEventId) > 0) job.lastEventId = event.id;
    const data = event.data || {};
    const advance = (status) => {
      if (RANK[status] >= RANK[job.status] && !TERMINAL.has(job.status)) job.status = status;
    };
    switch (event.type) {
      case "queued":
        job.created_at = job.created_at ?? event.ts;
        break;
      case "started":
        advance("started");
        job.attempt = Math.max(job.attempt, data.attempt || 1);
        job.started_at = event.ts;
        job.worker = data.worker ?? job.worker;
        break;
      case "progress":
        if (!job.progress || data.done >= job.progress.done) {
          job.progress = { done: data.done, total: data.total };
        }
        break;
      case "succeeded":
      case "failed":
      case "canceled":
        advance(event.type);
        job.finished_at = job.finished_at ?? event.ts;
        if (data.outputs) this._setOutputs(job, data.outputs);
        if (data.outputs_summary) job.outputsSummary = data.outputs_summary;
        if (data.error) job.error = data.error;
        if (data.reason) job.reason = data.reason;
        if (event.type === "canceled" && typeof data.done === "number") {
          job.progress = { done: data.done, total: job.progress?.total ?? job.rows ?? data.done };
        }
        break;
      default:
    }
    this._changed(job, added, event);
  }

  /** Merge a job as GET /v1/jobs returns it; an older view never undoes newer events. */
  mergeView(view) {
    let job = this.jobs.get(view.id);
    const added = !job;
    if (!job) job = this._create(view.id, view.model);
    job.model = view.model;
    job.version = view.version ?? job.version;
    job.rows = view.rows ?? job.rows;
    job.inputs = view.inputs ?? job.inputs;
    job.created_at = view.created_at ?? job.created_at;
    if (RANK[view.status] > RANK[job.status] && !TERMINAL.has(job.status)) {
      job.status = view.status;
    }
    job.attempt = Math.max(job.attempt, view.attempt || 0);
    job.started_at = job.started_at ?? view.started_at;
    job.finished_at = job.finished_at ?? view.finished_at;
    if (view.progress && (!job.progress || view.progress.done >= job.progress.done)) {
      job.progress = view.progress;
    }
    if (view.outputs) {
      job.outputs = view.outputs;
      job.outputsDropped = false;
    }
    if (view.outputs_summary) job.outputsSummary = view.outputs_summary;
    job.error = job.error ?? view.error;
    this._changed(job, added, null);
    return job;
  }

  _setOutputs(job, outputs) {
    if (outputSize(outputs) <= MAX_KEPT_VALUES) {
      job.outputs = outputs;
    } else {
      job.outputs = null;
      job.outputsDropped = true;
    }
  }

  _remember(job, event) {
    let kept = event.data?.outputs ? { ...event, data: { ...event.data, outputs: undefined } } : event;
    if (event.type === "progress") {
      // a bulk job's timeline keeps an even sample of its progress events: every `stride`th
      const n = job.progressSeen++;
      if (n % job.stride !== 0) return;
      kept = { ...kept, n };
    }
    const events = job.events;
    let at = events.length;
    while (at > 0 && compareIds(events[at - 1].id, event.id) > 0) at -= 1;
    events.splice(at, 0, kept);
    if (kept.n !== undefined && events.filter((e) => e.n !== undefined).length > MAX_PROGRESS_EVENTS) {
      job.stride *= 2;
      job.events = events.filter((e) => e.n === undefined || e.n % job.stride === 0);
    }
  }

  _changed(job, added, event) {
    this.dispatchEvent(new CustomEvent("job", { detail: { job, added, event } }));
    if (TERMINAL.has(job.status) && !job.finishedNotified) {
      job.finishedNotified = true;
      this.dispatchEvent(new CustomEvent("finished", { detail: { job } }));
    }
  }

  /** The newest jobs first, at most ``limit``. */
  newest(limit) {
    return [...this.jobs.values()].sort((a, b) => sortKey(b) - sortKey(a)).slice(0, limit);
  }
}

function sortKey(job) {
  return job.created_at ?? job.started_at ?? job.finished_at ?? 0;
}
