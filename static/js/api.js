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

// --- the API key, when the hub requires one ------------------------------------------------

const KEY_ITEM = "inferhub.key"; // sessionStorage: kept for this tab's session, then forgotten
let memoryKey = null; // where sessionStorage is unavailable

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_ITEM) ?? memoryKey;
  } catch {
    return memoryKey;
  }
}

function storeKey(key) {
  memoryKey = key;
  try {
    sessionStorage.setItem(KEY_ITEM, key);
  } catch {
    // private browsing and the like: the key lasts as long as the page
  }
}

function needsKey(exc) {
  return exc instanceof ApiError && exc.status === 401 && exc.code === "unauthorized";
}

/** One HTTP request, with `key` (if any) as a bearer token; a non-2xx answer throws. */
async function send(path, { method = "GET", body, headers = {}, signal } = {}, key = null) {
  const init = { method, headers: { Accept: "application/json", ...headers }, signal };
  if (key) init.headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) {
    init.body = typeof body === "string" || body instanceof Blob ? body : JSON.stringify(body);
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

let keyPrompt = null; // the open key dialog: every request refused meanwhile waits for it

/**
 * Ask for a key in the #key-dialog until one is accepted. `attempt(key)` is the refused request
 * sent again with the key typed in: its answer (or its error, once past the 401) is the
 * outcome. `message` is why the stored key was refused (empty when there was none). The dialog
 * stays open on Escape; should the browser close it anyway, `refused` is thrown.
 */
function askForKey(message, attempt, refused) {
  const dialog = document.getElementById("key-dialog");
  const form = dialog.querySelector("form");
  const input = dialog.querySelector("input");
  const error = dialog.querySelector("[data-error]");
  const button = form.querySelector("button[type=submit]");
  const show = (text) => {
    error.textContent = text;
    error.hidden = !text;
    if (text) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  };
  return new Promise((resolve, reject) => {
    let done = false;
    const finish = (settle, value) => {
      done = true;
      form.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("cancel", onCancel);
      dialog.removeEventListener("close", onClose);
      input.value = "";
      show("");
      if (dialog.open) dialog.close();
      settle(value);
    };
    const onSubmit = async (e) => {
      e.preventDefault();
      const candidate = input.value.trim();
      if (!candidate) {
        show("Paste the key first.");
        input.focus();
        return;
      }
      button.disabled = true;
      let result;
      try {
        result = await attempt(candidate);
      } catch (exc) {
        if (needsKey(exc) || (exc instanceof ApiError && exc.status === 0)) {
          show(exc.message); // a wrong key, or no hub to ask: try again
          input.focus();
          input.select();
          return;
        }
        storeKey(candidate); // the key was accepted: the request failed for another reason
        finish(reject, exc);
        return;
      } finally {
        button.disabled = false;
      }
      storeKey(candidate);
      finish(resolve, result);
    };
    const onCancel = (e) => e.preventDefault(); // nothing works without a key
    const onClose = () => {
      if (!done) finish(reject, refused);
    };
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("cancel", onCancel);
    dialog.addEventListener("close", onClose);
    show(message);
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
}

/**
 * fetch a hub route and return its JSON; a non-2xx answer throws an ApiError. The stored key,
 * if any, goes along; a 401 asks for a key (once, however many requests were refused), stores
 * it and sends the request again.
 */
export async function api(path, options = {}) {
  for (;;) {
    const key = storedKey();
    try {
      return await send(path, options, key);
    } catch (exc) {
      if (!needsKey(exc)) throw exc;
      if (storedKey() !== key) continue; // a new key came while this request was out
      if (keyPrompt) {
        await keyPrompt.catch(() => {});
        if (storedKey() === key) throw exc; // no key came of it
        continue;
      }
      keyPrompt = askForKey(key ? exc.message : "", (k) => send(path, options, k), exc);
      try {
        return await keyPrompt;
      } finally {
        keyPrompt = null;
      }
    }
  }
}

// Known open (no keys): the socket connects without a ticket. Until then, and again after a
// socket that never opened (the hub may have come back with keys), POST /v1/tickets finds out.
let hubOpen = false;

/**
 * Open the hub's WebSocket (/v1/ws). With a key, it first trades the key for a ticket (single
 * use, so a new one for every connect and reconnect): `?ticket=` on the socket's URL.
 */
export async function openSocket() {
  const url = new URL("v1/ws", BASE);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (!hubOpen || storedKey() !== null) {
    const { ticket } = await api("/v1/tickets", { method: "POST" }); // may ask for the key
    if (storedKey() !== null) url.searchParams.set("ticket", ticket);
    else hubOpen = true; // answered with no key
  }
  const ws = new WebSocket(url);
  let opened = false;
  ws.addEventListener("open", () => {
    opened = true;
  });
  ws.addEventListener("close", () => {
    if (!opened) hubOpen = false;
  });
  return ws;
}

/** Fetch `path` with the stored key (if any) and save it as `filename`: large outputs. */
export async function download(path, filename) {
  const key = storedKey();
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  const response = await fetch(new URL(path.replace(/^\//, ""), BASE), { headers });
  if (!response.ok) throw new ApiError(response.status, `http_${response.status}`, response.statusText);
  const url = URL.createObjectURL(await response.blob());
  const link = Object.assign(document.createElement("a"), { href: url, download: filename });
  link.click();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}
