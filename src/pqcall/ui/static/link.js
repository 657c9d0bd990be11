// pqcall web UI: the link to the phone. The session token (bought once with the
// one-time code of the link `pqcall ui` printed), the REST API, and the
// WebSocket that pushes the State. The page plugs in its reactions through
// `link.hooks`; nothing here touches the DOM.

const TOKEN_KEY = "pqcall-token";
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10000;
const WS_POLICY_VIOLATION = 1008; // the server's close code for a wrong token

export const link = {
  token: null, // the session token, once taken
  socketOpen: false, // the WebSocket is connected
  hooks: {
    onState: () => {}, // a State newer than the page's
    version: () => null, // the version of the page's State
    onError: () => {}, // a sentence for the person
    onChange: () => {}, // the socket opened or closed
    onForbidden: () => {}, // the token is wrong (the page asks for a new link)
  },
};

/**
 * The session token: from sessionStorage, or bought once with the one-time code
 * of the link pqcall ui printed (`#code=`); the code is dead after this.
 */
export async function takeToken() {
  const match = /(?:^#|&)code=([^&]+)/.exec(location.hash);
  if (match) {
    history.replaceState(null, "", location.pathname + location.search);
    try {
      const response = await fetch("/api/session", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ code: decodeURIComponent(match[1]) }),
      });
      const data = await response.json().catch(() => ({}));
      if (response.ok && typeof data.token === "string") {
        sessionStorage.setItem(TOKEN_KEY, data.token);
      } else if (!sessionStorage.getItem(TOKEN_KEY)) {
        link.hooks.onError(data.error || "This link does not work: get a new one from pqcall ui.");
      }
    } catch {
      link.hooks.onError("The phone is not reachable: is pqcall ui still running?");
    }
  }
  link.token = sessionStorage.getItem(TOKEN_KEY);
  return link.token;
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  link.token = null;
}

export class ApiError extends Error {
  constructor(message, status, data) {
    super(message);
    Object.assign(this, { status, data });
  }
}

/** POST `body` as JSON (or FormData) to `path`, or GET when `body` is undefined. */
export async function api(path, body) {
  const init = { method: body === undefined ? "GET" : "POST", headers: { "X-Pqcall-Token": link.token ?? "" } };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError("The phone is not reachable: is pqcall ui still running?", 0, {});
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new ApiError(data.error || `The phone answered ${response.status} ${response.statusText}.`, response.status, data);
  }
  // an action's answer can be older than a state the socket pushed meanwhile: keep the newest
  const version = link.hooks.version();
  if (data && typeof data.phase === "string" && !(version != null && data.version < version)) link.hooks.onState(data);
  return data;
}

/** The URL that hands out a received file once (a link cannot set a header: the token goes in it). */
export function downloadUrl(fileId) {
  return `/api/files/${encodeURIComponent(fileId)}/download?token=${encodeURIComponent(link.token)}`;
}

let backoffMs = BACKOFF_MIN_MS;

/** Keep a WebSocket open (reconnecting with backoff) and hand each pushed State to the page. */
export function connect() {
  const url = new URL("/api/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("token", link.token);
  const socket = new WebSocket(url);
  socket.onopen = () => {
    link.socketOpen = true;
    backoffMs = BACKOFF_MIN_MS;
    link.hooks.onChange();
  };
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "state") link.hooks.onState(message.state);
  };
  socket.onclose = (event) => {
    link.socketOpen = false;
    if (event.code === WS_POLICY_VIOLATION) return link.hooks.onForbidden(); // retrying cannot help
    link.hooks.onChange();
    setTimeout(connect, backoffMs);
    backoffMs = Math.min(backoffMs * 2, BACKOFF_MAX_MS);
  };
}
