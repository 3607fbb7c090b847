// The JSON API as the dashboard uses it: the key in the Authorization header, errors as ApiError.
// The key lives in sessionStorage (this tab) or, when the user asks, localStorage (this browser);
// it is never put in a URL.

const KEY_NAME = "embedmix.api_key";

export function getKey() {
  return sessionStorage.getItem(KEY_NAME) || localStorage.getItem(KEY_NAME);
}

export function setKey(key, remember) {
  clearKey();
  (remember ? localStorage : sessionStorage).setItem(KEY_NAME, key);
}

export function clearKey() {
  sessionStorage.removeItem(KEY_NAME);
  localStorage.removeItem(KEY_NAME);
}

/** An error answer of the API: {error: {code, message, param, details}}. */
export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || `http_${status}`;
    this.param = err.param || null;
    this.details = err.details || [];
  }
}

function authHeaders(extra = {}) {
  const headers = { ...extra };
  const key = getKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

async function failure(response) {
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON: a proxy's page */ }
  const error = new ApiError(response.status, body);
  if (response.status === 401) window.dispatchEvent(new CustomEvent("embedmix:unauthorized"));
  return error;
}

/** Call the API; resolves to the parsed JSON body, rejects with ApiError. */
export async function api(path, { method = "GET", body, headers = {} } = {}) {
  const init = { method, headers: authHeaders(headers) };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

/** Every item of a list endpoint, following next_cursor (bounded, for metric series and the like). */
export async function apiAll(path, maxPages = 50) {
  const items = [];
  let cursor = null;
  for (let page = 0; page < maxPages; page++) {
    const sep = path.includes("?") ? "&" : "?";
    const url = cursor ? `${path}${sep}cursor=${encodeURIComponent(cursor)}` : path;
    const body = await api(url);
    items.push(...body.data);
    if (!body.has_more) break;
    cursor = body.next_cursor;
  }
  return items;
}

/** Download a file the API serves (models, checkpoints) and hand it to the browser's save dialog. */
export async function download(path, fallbackName) {
  const response = await fetch(path, { headers: authHeaders() });
  if (!response.ok) throw await failure(response);
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="([^"]+)"/.exec(disposition);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = match ? match[1] : fallbackName;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

/**
 * Follow a Server-Sent Events stream with fetch, so the key travels in a header
 * (EventSource cannot send one). Calls onMessage({event, data, id}) per message;
 * reconnects with Last-Event-ID when the connection drops, until the server ends
 * the stream normally or `signal` aborts.
 */
export async function followStream(path, onMessage, signal) {
  let lastId = null;
  let retryMs = 2000;
  while (!signal.aborted) {
    try {
      const headers = authHeaders({ Accept: "text/event-stream" });
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await fetch(path, { headers, signal });
      if (!response.ok) throw await failure(response);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return; // the server closed the stream: the job is finished
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const message = parseMessage(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (message.retry) retryMs = message.retry;
          if (message.id) lastId = message.id;
          if (message.data !== null) onMessage(message);
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && error.status < 500) throw error;
      await new Promise((resolve) => setTimeout(resolve, retryMs));
    }
  }
}

function parseMessage(block) {
  const message = { event: "message", data: null, id: null, retry: null };
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") message.event = value;
    else if (field === "data") data.push(value);
    else if (field === "id") message.id = value;
    else if (field === "retry" && /^\d+$/.test(value)) message.retry = Number(value);
  }
  if (data.length) message.data = JSON.parse(data.join("\n"));
  return message;
}
