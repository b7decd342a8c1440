// One WebSocket to the hub: requests with a `ref` answered by `accepted` / `error` / `pong`,
// events for the subscribed models and jobs, the hub's periodic `stats` (models, queues,
// workers), and reconnection with backoff that resumes every subscription after the last
// event id seen, so that nothing shown goes stale.

import { openSocket, serverClock } from "./api.js";
import { compareIds } from "./util.js";

const PING_EVERY_MS = 15000;
const PONG_TIMEOUT_MS = 10000;
const REQUEST_TIMEOUT_MS = 30000;
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5000;
// Before the first event, a resume point this far before the first connection (event ids are
// Redis stream ids, "<ms>-<seq>"); events seen twice are dropped by id.
const FLOOR_MARGIN_MS = 10000;

export class NotConnected extends Error {}

export class HubError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/**
 * Emits "state" ({state: "connecting" | "open" | "reconnecting", attempt, delayMs, resumed}),
 * "event" (an event JSON), "reset" ({model, message}), "stats" (the hub's stats message, once
 * `subscribeStats` was called) and "open" after (re)subscribing.
 */
export class Hub extends EventTarget {
  constructor() {
    super();
    this.ws = null;
    this.state = "connecting";
    this.attempt = 0;
    this.connectedOnce = false;
    this.lastEventId = null; // the newest event id seen, over every subscription
    this.floorId = null; // where to resume when no event has been seen yet
    this.models = new Set(); // model subscriptions, kept across reconnects
    this.jobs = new Map(); // job subscriptions: job id -> last event id seen for it
    this.stats = false; // whether the hub's stats message is wanted, kept across reconnects
    this.pending = new Map(); // ref -> {resolve, reject, timer}
    this.nextRef = 1;
    this.pingTimer = null;
    this.retryTimer = null;
  }

  start() {
    this._connect();
  }

  get open() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  // --- requests -------------------------------------------------------------------------

  /** Send a message and resolve with the reply that echoes its ref. */
  request(message, timeoutMs = REQUEST_TIMEOUT_MS) {
    if (!this.open) return Promise.reject(new NotConnected("not connected to the hub"));
    const ref = `r${this.nextRef++}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        reject(new HubError("timeout", `no answer to '${message.type}' in time`));
      }, timeoutMs);
      this.pending.set(ref, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ ...message, ref }));
    });
  }

  /** The size a submit would have on the wire, to choose between the socket and HTTP. */
  static frameSize(body) {
    return JSON.stringify({ type: "submit", ref: "r000000", ...body }).length;
  }

  async submit(body) {
    const reply = await this.request({ type: "submit", ...body });
    this.jobs.set(reply.job.id, null); // the hub subscribed the socket to the job
    return reply.job;
  }

  async cancel(jobId) {
    return (await this.request({ type: "cancel", job_id: jobId })).job;
  }

  subscribeModel(model) {
    if (this.models.has(model)) return;
    this.models.add(model);
    if (this.open) this._subscribe({ model }, this.lastEventId); // live, when nothing seen yet
  }

  /** Ask for the hub's periodic stats message, on this connection and every later one. */
  subscribeStats() {
    if (this.stats) return;
    this.stats = true;
    if (this.open) this._askStats();
  }

  _askStats() {
    this.request({ type: "stats" }).catch((exc) => {
      if (exc instanceof NotConnected) return; // asked again on the next open
      this._emit("problem", { message: `stats: ${exc.message}` });
    });
  }

  /** Where model subscriptions resume: after the last event seen, or from the first connection. */
  get resumeId() {
    return this.lastEventId ?? this.floorId;
  }

  /** Follow one job from its first event (or after `after`). */
  subscribeJob(jobId, after = null) {
    if (this.jobs.has(jobId)) return;
    this.jobs.set(jobId, after);
    if (this.open) this._subscribe({ job_id: jobId }, after);
  }

  unsubscribeJob(jobId) {
    if (!this.jobs.delete(jobId) || !this.open) return;
    // the hub may already have dropped a finished job's subscription: not_subscribed is fine
    this.request({ type: "unsubscribe", job_id: jobId }).catch(() => {});
  }

  _subscribe(target, after) {
    const message = { type: "subscribe", ...target };
    if (after) message.last_event_id = after;
    this.request(message).catch((exc) => {
      if (exc instanceof NotConnected) return; // resubscribed on the next open
      this._emit("problem", { message: `subscribe ${JSON.stringify(target)}: ${exc.message}` });
    });
  }

  // --- connection -----------------------------------------------------------------------

  async _connect() {
    this.retryTimer = null;
    this._setState(this.connectedOnce ? "reconnecting" : "connecting");
    let ws;
    try {
      ws = await openSocket();
    } catch (exc) {
      this._retry(exc);
      return;
    }
    this.ws = ws;
    ws.onopen = () => this._opened(ws);
    ws.onmessage = (message) => this._received(message.data);
    ws.onclose = () => this._closed(ws);
    ws.onerror = () => {}; // a close event always follows
  }

  _opened(ws) {
    if (ws !== this.ws) return;
    const resumed = this.connectedOnce;
    this.connectedOnce = true;
    this.attempt = 0;
    if (this.floorId === null) this.floorId = `${Math.floor(serverClock.nowMs() - FLOOR_MARGIN_MS)}-0`;
    for (const model of this.models) this._subscribe({ model }, resumed ? this.resumeId : null);
    for (const [jobId, after] of this.jobs) this._subscribe({ job_id: jobId }, after);
    if (this.stats) this._askStats();
    this._setState("open", { resumed });
    this._emit("open", { resumed });
    this._schedulePing();
  }

  _closed(ws) {
    if (ws !== this.ws) return;
    this._drop();
    this._retry();
  }

  /** Forget the current socket: its pending requests fail, and nothing more is read from it. */
  _drop() {
    const ws = this.ws;
    this.ws = null;
    clearTimeout(this.pingTimer);
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      if (ws.readyState <= WebSocket.OPEN) ws.close();
    }
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject(new NotConnected("the connection to the hub was lost"));
    }
    this.pending.clear();
  }

  _retry() {
    const delayMs =
      Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt) * (0.75 + Math.random() / 4);
    this.attempt += 1;
    this._setState("reconnecting", { delayMs, attempt: this.attempt });
    this.retryTimer = setTimeout(() => this._connect(), delayMs);
  }

  /** Retry at once (the "reconnect now" button). */
  reconnectNow() {
    if (this.retryTimer === null) return;
    clearTimeout(this.retryTimer);
    this._connect();
  }

  _schedulePing() {
    clearTimeout(this.pingTimer);
    this.pingTimer = setTimeout(async () => {
      const ws = this.ws;
      try {
        await this.request({ type: "ping" }, PONG_TIMEOUT_MS);
        this._schedulePing();
      } catch {
        if (ws === this.ws && ws !== null) {
          // no pong: the connection is dead even if the browser has not noticed yet
          this._drop();
          this._retry();
        }
      }
    }, PING_EVERY_MS);
  }

  // --- messages -------------------------------------------------------------------------

  _received(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    switch (message.type) {
      case "event":
        this._event(message.event);
        return;
      case "reset":
      case "stats":
        this._emit(message.type, message);
        return;
      case "accepted":
      case "pong":
      case "error": {
        const waiting = message.ref != null ? this.pending.get(message.ref) : undefined;
        if (waiting) {
          this.pending.delete(message.ref);
          clearTimeout(waiting.timer);
          if (message.type === "error") waiting.reject(new HubError(message.code, message.message));
          else waiting.resolve(message);
        } else if (message.type === "error") {
          this._emit("problem", { message: `${message.code}: ${message.message}` });
        }
        return;
      }
      default:
    }
  }

  _event(event) {
    if (compareIds(event.id, this.lastEventId) > 0) this.lastEventId = event.id;
    if (this.jobs.has(event.job_id)) {
      const last = this.jobs.get(event.job_id);
      if (compareIds(event.id, last) > 0) this.jobs.set(event.job_id, event.id);
    }
    this._emit("event", event);
  }

  _setState(state, extra = {}) {
    this.state = state;
    this._emit("state", { state, ...extra });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
