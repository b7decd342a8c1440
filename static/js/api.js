// The two doors to the hub. Every HTTP request goes through `api` and every WebSocket is
// opened by `openSocket`: when the hub requires API keys, asking for the key (once per
// session) and sending it (an Authorization header, or a ticket from POST /v1/tickets on the
// socket's URL) belongs in these two functions and nowhere else.

/** The hub's root URL, worked out from this module's own URL (/static/js/api.js). */
export const BASE = new URL("../../", import.meta.url);

/** The hub's clock as its Date headers tell it (one-second resolution), for resume points. */
export const serverClock = {
  skewMs: 0,
  nowMs() {
    return Date.now() + this.skewMs;
  },
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** fetch a hub route and return its JSON; a non-2xx answer throws an ApiError. */
export async function api(path, { method = "GET", body, headers = {}, signal } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, signal };
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(new URL(path.replace(/^\//, ""), BASE), init);
  } catch (exc) {
    throw new ApiError(0, "unreachable", `the hub did not answer (${exc.message})`);
  }
  const date = Date.parse(response.headers.get("date") || "");
  if (!Number.isNaN(date)) serverClock.skewMs = date - Date.now();
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data && data.error;
    const message =
      (error && typeof error === "object" ? error.message : error) || response.statusText;
    const code = (error && typeof error === "object" && error.code) || `http_${response.status}`;
    throw new ApiError(response.status, code, message);
  }
  return data;
}

/** Open the hub's WebSocket (/v1/ws). Async so that fetching a ticket can be added here. */
export async function openSocket() {
  const url = new URL("v1/ws", BASE);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return new WebSocket(url);
}
