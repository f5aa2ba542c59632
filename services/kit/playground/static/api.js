// Calls to the public APIs: the API key (asked for on a 401, kept in sessionStorage, sent only as an
// Authorization header), the APIs' error messages, and server-sent events read from a fetch body.

const KEY_STORAGE = "modelserve.apiKey";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  document.dispatchEvent(new CustomEvent("api-key-changed"));
}

// Opens the key dialog with the server's reason; resolves true once a key was entered, false on cancel.
export function askForKey(reason) {
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  document.getElementById("key-dialog-reason").textContent = reason || "";
  input.value = "";
  return new Promise((resolve) => {
    const cancel = document.getElementById("key-cancel");
    const onCancel = () => dialog.close("cancel");
    cancel.addEventListener("click", onCancel, { once: true });
    dialog.addEventListener("close", () => {
      cancel.removeEventListener("click", onCancel);
      const saved = dialog.returnValue === "save" && input.value.trim() !== "";
      if (saved) setApiKey(input.value.trim());
      resolve(saved);
    }, { once: true });
    dialog.returnValue = "";
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
}

// The API's own words: OpenAI's {"error": {"message"}}, TF Serving's and OIP's {"error": "..."}, else the text.
export async function errorOf(response) {
  let detail = response.statusText;
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    const error = body.error ?? body.detail ?? body;
    detail = typeof error === "string" ? error : (error.message ?? JSON.stringify(error));
  } catch {
    if (text) detail = text.slice(0, 500);
  }
  const retryAfter = response.headers.get("Retry-After");
  const retry = retryAfter ? ` (retry after ${retryAfter} s)` : "";
  return new ApiError(response.status, `${response.status}: ${detail}${retry}`);
}

// fetch with the key; on 401 asks for a key and tries again, until the call is answered or the user cancels.
export async function call(url, init = {}) {
  for (;;) {
    const headers = new Headers(init.headers || {});
    const key = apiKey();
    if (key) headers.set("Authorization", `Bearer ${key}`);
    let response;
    try {
      response = await fetch(url, { ...init, headers });
    } catch (error) {
      throw new ApiError(0, `could not reach ${url}: ${error.message}`);
    }
    if (response.ok) return response;
    const error = await errorOf(response);
    if (response.status === 401 && (await askForKey(error.message))) continue;
    throw error;
  }
}

export async function callJson(url, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  return (await call(url, init)).json();
}

// Each event's JSON data, as it arrives; an `error` event (a failure after the stream began) throws its message.
export async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart()).join("\n");
      if (!data) continue;
      const event = JSON.parse(data);
      if (event.type === "error" || (event.error && !event.type)) {
        const error = event.error ?? event;
        throw new ApiError(0, `stream ended with an error: ${error.message ?? JSON.stringify(error)}`);
      }
      yield event;
    }
  }
}

// The models of every service on this server (GET /v1/models), grouped by service.
let modelsPromise;
export function modelsByService() {
  modelsPromise ??= callJson("v1/models").then((list) => {
    const grouped = {};
    for (const model of list.data) (grouped[model.service] ??= []).push(model);
    return grouped;
  });
  modelsPromise.catch(() => { modelsPromise = undefined; });
  return modelsPromise;
}

let voicesPromise;
export function voices() {
  voicesPromise ??= callJson("v1/voices").then((list) => list.data);
  voicesPromise.catch(() => { voicesPromise = undefined; });
  return voicesPromise;
}
