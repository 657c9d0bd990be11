// pqcall web UI: renders the State the softphone pushes over one WebSocket and
// sends the person's actions to its REST API. Rendering is a function of
// `state` (from the server) and `ui` (small local state); transitions with side
// effects (ringing, focus, announcements, notifications) live in `effects`.

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "pqcall-token";
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10000;
const RING_EVERY_MS = 3000;
const WS_POLICY_VIOLATION = 1008; // the server's close code for a wrong token
const ACTIVE = new Set(["connecting", "active"]);

// ---------------------------------------------------------------- token

/**
 * The session token: from sessionStorage, or bought once with the one-time code
 * of the link pqcall ui printed (`#code=`); the code is dead after this.
 */
async function takeToken() {
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
        showError(data.error || "This link does not work: get a new one from pqcall ui.");
      }
    } catch {
      showError("The phone is not reachable: is pqcall ui still running?");
    }
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

let token = null;
let tokenTaken = false; // takeToken() has answered (until then the page is loading)

function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
  render();
}

// ---------------------------------------------------------------- state

let state = null; // the last State from the server
let socketOpen = false;
const ui = {
  filter: "", // text in the contact search box
  safety: null, // {name, number} of the open safety-number view
  keyWarningFor: null, // contact whose key warning was asked for (call attempt)
  keyShown: null, // contact the key warning dialog currently shows
  keySafety: null, // {name, number} for the key warning
  dismissedKeys: new Set(), // key warnings the person dismissed for now
  received: new Map(), // file_id -> {sender, name} received in this page
  phaseShown: null,
  callKey: null, // "call_id:state" last announced
  incomingId: null, // call_id that rang
};

function setState(next) {
  state = next;
  render();
  effects(next);
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(message, status, data) {
    super(message);
    Object.assign(this, { status, data });
  }
}

/** POST `body` as JSON (or FormData) to `path`, or GET when `body` is undefined. */
async function api(path, body) {
  const init = { method: body === undefined ? "GET" : "POST", headers: { "X-Pqcall-Token": token ?? "" } };
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
  if (data && typeof data.phase === "string" && !(state && data.version < state.version)) setState(data);
  return data;
}

function showError(message) {
  $("error").textContent = message;
}

/** Run an action for `button`: clear the last error, show failures in the alert. */
async function act(button, action) {
  showError("");
  if (button) button.disabled = true;
  try {
    return await action();
  } catch (error) {
    showError(error instanceof ApiError ? error.message : String(error));
    return undefined;
  } finally {
    if (button) button.disabled = false;
    render();
  }
}

// ---------------------------------------------------------------- socket

let backoffMs = BACKOFF_MIN_MS;

function connect() {
  const url = new URL("/api/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("token", token);
  const socket = new WebSocket(url);
  socket.onopen = () => {
    socketOpen = true;
    backoffMs = BACKOFF_MIN_MS;
    render();
  };
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "state") setState(message.state);
  };
  socket.onclose = (event) => {
    socketOpen = false;
    if (event.code === WS_POLICY_VIOLATION) return forgetToken(); // the token is wrong: retrying cannot help
    render();
    setTimeout(connect, backoffMs);
    backoffMs = Math.min(backoffMs * 2, BACKOFF_MAX_MS);
  };
}

// ---------------------------------------------------------------- formatting

const fmt = {
  duration(seconds) {
    const s = Math.max(0, Math.floor(seconds ?? 0));
    const mm = String(Math.floor(s / 60) % 60);
    const ss = String(s % 60).padStart(2, "0");
    return s >= 3600 ? `${Math.floor(s / 3600)}:${mm.padStart(2, "0")}:${ss}` : `${mm}:${ss}`;
  },
  time(unix) {
    return unix ? new Date(unix * 1000).toLocaleString([], { dateStyle: "short", timeStyle: "short" }) : "";
  },
  ago(unix) {
    if (!unix) return "";
    const minutes = Math.round((Date.now() / 1000 - unix) / 60);
    if (minutes < 1) return "last seen just now";
    if (minutes < 60) return `last seen ${minutes} min ago`;
    if (minutes < 48 * 60) return `last seen ${Math.round(minutes / 60)} h ago`;
    return `last seen ${fmt.time(unix)}`;
  },
  size(bytes) {
    if (bytes == null) return "";
    return bytes < 1024 ? `${bytes} B` : bytes < 1024 ** 2 ? `${(bytes / 1024).toFixed(1)} KB` : `${(bytes / 1024 ** 2).toFixed(1)} MB`;
  },
  num(value, digits, unit) {
    return value == null ? "–" : `${Number(value).toFixed(digits)}${unit}`;
  },
};

function quality(mos) {
  if (mos == null) return "measuring";
  return mos >= 4 ? "good" : mos >= 3.6 ? "fair" : "poor";
}

/** A history entry's result as a person says it (the library says "ended" for answered calls). */
const LOST_REASONS = new Set(["peer unreachable", "media timeout"]); // "media timeout": older calls

function callResult(summary) {
  if (summary.result === "failed" && LOST_REASONS.has(summary.reason)) return "connection lost";
  if (summary.result !== "ended") return summary.result;
  if (summary.answered_unix) return "answered";
  return summary.direction === "incoming" ? "missed" : "cancelled";
}

function trustText(call, contact) {
  if (contact?.key_changed) return "KEY CHANGED: compare the safety number";
  if (contact?.suspicious) return "Marked suspicious after a mismatch";
  if (call.sas_confirmed) return "Numbers confirmed for this call";
  return { new: "New contact: compare the number aloud", pinned: "Known key, not yet verified", verified: "Verified contact" }[
    call.peer_trust] ?? "";
}

function badge(contact) {
  if (contact.key_changed) return "KEY CHANGED";
  if (contact.suspicious) return "suspicious";
  return contact.verified ? "verified" : "pinned";
}

function describeCall(call) {
  return {
    outgoing: `Calling ${call.peer}…`,
    incoming: `${call.peer} is calling`,
    connecting: `Connecting to ${call.peer}…`,
    active: `In call with ${call.peer}`,
  }[call.state] ?? `Call with ${call.peer}: ${call.state}`;
}

function describeSummary(summary) {
  const where = summary.direction === "incoming" ? "from" : "to";
  return `Call ${where} ${summary.peer} ended: ${callResult(summary)}, ${fmt.duration(summary.duration_s)}`;
}

// ---------------------------------------------------------------- DOM helpers

function text(el, value) {
  const v = String(value ?? "");
  if (el.textContent !== v) el.textContent = v;
}

function show(el, visible) {
  if (el.hidden === visible) el.hidden = !visible;
}

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "testid") el.dataset.testid = value;
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  el.append(...children.filter((c) => c != null && c !== false));
  return el;
}

/** Replace `el`'s children when `key` changed; keep focus on the same data-testid. */
function replaceIfChanged(el, key, build) {
  if (el.dataset.key === key) return;
  el.dataset.key = key;
  const focused = el.contains(document.activeElement) ? document.activeElement.dataset.testid : null;
  el.replaceChildren(...build());
  if (focused) el.querySelector(`[data-testid="${CSS.escape(focused)}"]`)?.focus();
}

function clear(el) {
  delete el.dataset.key;
  el.replaceChildren();
}

function safetyNumberEl(number) {
  return h("p", { testid: "safety-number", class: "safety-number" }, number ?? "Loading…");
}

// ---------------------------------------------------------------- rendering

function contactOf(name) {
  return state?.contacts.find((c) => c.name === name) ?? null;
}

function render() {
  const phase = !tokenTaken ? "loading" : !token ? "no-token" : state ? state.phase : "loading";
  show($("no-token"), phase === "no-token");
  show($("setup"), phase === "setup");
  show($("unlock"), phase === "locked");
  show($("ready"), phase === "ready");
  renderHeader();
  if (phase === "locked") text($("unlock-name"), state.account?.username ?? "your phone");
  if (phase !== "ready") {
    renderKeyWarning(null);
    return;
  }
  const target = keyWarningTarget();
  renderKeyWarning(target);
  // a changed key has its own dialog and badge; other warnings are listed
  renderWarnings((state.warnings ?? []).filter((w) => !contactOf(w.peer)?.key_changed));
  renderIncoming(state.call);
  renderCall(state.call);
  renderContacts();
  renderScreening();
  renderSafety(target);
  renderHistory();
  renderFiles();
  renderDevices(state.devices);
}

function renderHeader() {
  const account = state?.account;
  show($("who"), Boolean(account));
  text($("me"), account?.username);
  const online = socketOpen && Boolean(state?.connected);
  text($("connection"), online ? "online" : "offline");
  $("connection").className = `conn ${online ? "online" : "offline"}`;
  const missed = state?.phase === "ready" ? state.missed_unseen : 0;
  show($("missed-badge"), missed > 0);
  text($("missed-count"), missed);
  const canAsk = "Notification" in window && Notification.permission === "default";
  show($("notify-enable"), canAsk && state?.phase === "ready");
}

function renderWarnings(warnings) {
  show($("warnings"), warnings.length > 0);
  replaceIfChanged($("warnings-list"), JSON.stringify(warnings), () =>
    warnings.map((w) => h("li", {}, h("strong", {}, w.peer), `: ${w.message} `, h("span", { class: "hint" }, fmt.time(w.when)))));
}

function renderIncoming(call) {
  const ringing = call?.state === "incoming";
  show($("incoming"), ringing);
  if (!ringing) return;
  text($("incoming-peer"), call.peer);
  text($("incoming-trust"), trustText(call, contactOf(call.peer)));
  renderWaiting(state.screening?.waiting ?? []);
}

// other calls ringing at the same time: each can be answered, declined or blocked
function renderWaiting(waiting) {
  show($("waiting"), waiting.length > 0);
  replaceIfChanged($("waiting"), JSON.stringify(waiting), () =>
    waiting.map((w) => h("li", { testid: `waiting-${w.peer}` }, h("strong", {}, w.peer), " is calling too ",
      h("button", { type: "button", class: "primary", onclick: (e) => act(e.currentTarget, () => api("/api/call/answer", { call_id: w.call_id })) }, "Answer"),
      h("button", { type: "button", class: "danger", onclick: (e) => act(e.currentTarget, () => api("/api/call/decline", { call_id: w.call_id })) }, "Decline"),
      h("button", { type: "button", class: "quiet", onclick: (e) => act(e.currentTarget, () => api("/api/block", { name: w.peer })) }, "Block"))));
}

function renderScreening() {
  const screening = state.screening ?? { blocked: [], silence_strangers: false };
  $("silence-strangers").checked = screening.silence_strangers;
  show($("blocked"), screening.blocked.length > 0);
  text($("blocked"), `Blocked: ${screening.blocked.join(", ")}`);
}

function isBlocked(name) {
  return (state?.screening?.blocked ?? []).includes(name);
}

function renderCall(call) {
  show($("call-panel"), Boolean(call) && call.state !== "incoming"); // the banner stands for a ringing call
  const last = state.last_call;
  show($("last-call"), !call && Boolean(last));
  if (!call) {
    if (last) text($("last-call"), describeSummary(last));
    return;
  }
  text($("call-peer"), call.peer);
  text($("call-state"), call.state);
  text($("path"), call.path ?? "–");
  text($("call-trust"), trustText(call, contactOf(call.peer)));
  renderTimer();
  const live = ACTIVE.has(call.state);
  show($("sas-box"), Boolean(call.sas));
  text($("sas"), call.sas);
  show($("sas-confirmed"), Boolean(call.sas_confirmed));
  show($("sas-actions"), !call.sas_confirmed && live);
  show($("mute"), live);
  $("mute").setAttribute("aria-pressed", String(Boolean(call.muted)));
  show($("hangup"), live);
  show($("cancel"), call.state === "outgoing");
  const silent = live && Boolean(call.stats?.reconnecting);
  show($("reconnecting"), silent);
  if (silent) text($("reconnecting"), `No audio from ${call.peer} – reconnecting… ${Math.round(call.stats.peer_silent_s ?? 0)} s`);
  renderStats(call.stats);
}

function renderTimer() {
  const call = state?.call;
  if (call) text($("call-timer"), fmt.duration(call.answered ? Date.now() / 1000 - call.answered : 0));
}

function renderStats(stats) {
  show($("quality-box"), Boolean(stats));
  if (!stats) return;
  const q = quality(stats.mos);
  text($("quality"), q);
  $("quality").className = `quality ${q}`;
  text($("stat-rtt"), fmt.num(stats.rtt_ms, 0, " ms"));
  text($("stat-loss"), fmt.num(stats.loss_percent, 1, " %"));
  const buffer = stats.jitter_buffer_ms == null ? "" : ` (buffer ${Math.round(stats.jitter_buffer_ms)} ms)`;
  text($("stat-jitter"), fmt.num(stats.jitter_ms, 1, " ms") + buffer);
  text($("stat-bitrate"), `${fmt.num(stats.tx_kbps, 0, " kbps")} sent, ${fmt.num(stats.rx_kbps, 0, " kbps")} received`);
  text($("stat-mos"), fmt.num(stats.mos, 2, ""));
  const level = Math.min(0, Math.max(-60, stats.input_level_dbfs ?? -60));
  const meter = $("level-meter");
  meter.value = level;
  text(meter, `${Math.round(level)} dBFS`);
  meter.title = `${Math.round(level)} dBFS`;
}

function renderContacts() {
  const list = $("contacts");
  const rows = new Map([...list.children].map((li) => [li.dataset.name, li]));
  const wanted = state.contacts.map((c) => c.name);
  for (const [name, li] of rows) if (!wanted.includes(name)) li.remove();
  const inCall = Boolean(state.call);
  const filter = ui.filter.trim().toLowerCase();
  state.contacts.forEach((contact, index) => {
    const li = rows.get(contact.name) ?? contactRow(contact.name);
    if (list.children[index] !== li) list.insertBefore(li, list.children[index] ?? null);
    const presence = li.querySelector(".presence");
    const shown = contact.presence_shown;
    text(presence, !shown ? "" : contact.online ? "online" : "offline");
    presence.className = `presence ${!shown ? "unknown" : contact.online ? "online" : "offline"}`;
    presence.title = shown ? "" : "shown once you have called each other";
    text(li.querySelector(".seen"), !shown || contact.online ? "" : fmt.ago(contact.last_seen));
    const b = li.querySelector(".badge");
    text(b, badge(contact));
    b.className = `badge ${badge(contact).replace(" ", "-").toLowerCase()}`;
    li.querySelector(".call").disabled = inCall;
    show(li, !filter || contact.name.toLowerCase().includes(filter));
    text(li.querySelector(".block"), isBlocked(contact.name) ? "Unblock" : "Block");
  });
  show($("contacts-empty"), state.contacts.length === 0);
  replaceIfChanged($("contact-names"), wanted.join("\n"), () => wanted.map((name) => h("option", { value: name })));
}

function contactRow(name) {
  const li = h(
    "li",
    { testid: `contact-${name}`, class: "contact" },
    h("span", { class: "who" }, h("strong", { class: "name" }, name), " ",
      h("span", { class: "presence", testid: `presence-${name}` }), " ", h("span", { class: "seen hint" })),
    h("span", { class: "badge", testid: `badge-${name}` }),
    h("span", { class: "actions" },
      h("button", { type: "button", class: "call primary", testid: `call-${name}`, "aria-label": `Call ${name}`,
        onclick: (e) => callContact(name, e.currentTarget) }, "Call"),
      h("button", { type: "button", class: "quiet", testid: `safety-${name}`, "aria-label": `Safety number with ${name}`,
        onclick: () => openSafety(name) }, "Safety number"),
      h("button", { type: "button", class: "quiet block", testid: `block-${name}`,
        onclick: (e) => act(e.currentTarget, () => api(isBlocked(name) ? "/api/unblock" : "/api/block", { name })) }, "Block")),
  );
  li.dataset.name = name;
  addDropTarget(li, () => name);
  return li;
}

function renderSafety(keyTarget) {
  const open = ui.safety && !keyTarget && contactOf(ui.safety.name);
  show($("safety"), Boolean(open));
  const slot = $("safety-slot");
  if (!open) return clear(slot);
  text($("safety-name"), ui.safety.name);
  replaceIfChanged(slot, `${ui.safety.name}:${ui.safety.number}`, () => [safetyNumberEl(ui.safety.number)]);
  const verified = contactOf(ui.safety.name).verified;
  text($("verify-contact"), verified ? "Verified ✓" : "Mark as verified");
  $("verify-contact").disabled = verified || !ui.safety.number;
}

function keyWarningTarget() {
  if (ui.keyWarningFor) return ui.keyWarningFor;
  return state.contacts.find((c) => c.key_changed && !ui.dismissedKeys.has(c.name))?.name ?? null;
}

function renderKeyWarning(target) {
  const dialog = $("key-warning");
  const slot = $("key-warning-slot");
  if (!target) {
    ui.keyShown = null;
    if (dialog.open) dialog.close();
    return clear(slot);
  }
  text($("key-warning-name"), target);
  text($("key-warning-text"), `${target}'s identity key is not the one you saved, so this may not be ${target}: ` +
    `compare the new safety number below with ${target} in person or over another channel before you accept it.`);
  const number = ui.keySafety?.name === target ? ui.keySafety.number : null;
  replaceIfChanged(slot, `${target}:${number}`, () => [safetyNumberEl(number)]);
  $("accept-key").disabled = !number;
  if (ui.keyShown !== target) {
    ui.keyShown = target;
    loadSafetyNumber(target).then((data) => {
      ui.keySafety = { name: target, number: data && (data.changed_safety_number ?? data.safety_number) };
      render();
    });
  }
  if (!dialog.open) typeof dialog.showModal === "function" ? dialog.showModal() : dialog.setAttribute("open", "");
}

function renderHistory() {
  const missed = state.missed_unseen ?? 0;
  show($("history-missed"), missed > 0);
  show($("missed-seen"), missed > 0);
  text($("history-missed"), `${missed} missed`);
  show($("history-empty"), state.history.length === 0);
  replaceIfChanged($("history"), JSON.stringify(state.history.map((c) => [c.call_id, c.result, c.duration_s])), () =>
    state.history.map((c) => {
      const result = callResult(c);
      return h("li", { testid: "history-row", class: `history-row result-${result}` },
        h("span", { class: "dir" }, h("span", { "aria-hidden": "true" }, c.direction === "incoming" ? "↙ " : "↗ "),
          c.direction),
        h("strong", { class: "peer" }, c.peer),
        h("span", { class: "result" }, result),
        h("span", { class: "dur" }, fmt.duration(c.duration_s)),
        h("time", { datetime: new Date((c.started_unix ?? 0) * 1000).toISOString() }, fmt.time(c.started_unix)));
    }));
}

function renderFiles() {
  const transfers = state.transfers ?? [];
  show($("transfers-title"), transfers.length > 0);
  replaceIfChanged($("transfers"), JSON.stringify(transfers), () =>
    transfers.map((t) => {
      const label = `${t.direction === "receive" ? "Receiving" : "Sending"} ${t.name}: ${t.error ?? t.state}`;
      return h("li", {}, h("span", { id: `transfer-${t.id}` }, label, " ", h("span", { class: "hint" },
        `${fmt.size(t.done)} of ${fmt.size(t.total)}`)),
      h("progress", { testid: "transfer-progress", max: t.total || 1, value: t.done ?? 0,
        "aria-labelledby": `transfer-${t.id}` }));
    }));
  const inbox = state.inbox ?? [];
  const rows = [...inbox];
  for (const [id, r] of ui.received) if (!inbox.some((f) => f.file_id === id)) rows.push({ file_id: id, ...r });
  show($("inbox-empty"), rows.length === 0);
  replaceIfChanged($("inbox"), JSON.stringify([rows, [...ui.received]]), () =>
    rows.map((f) => {
      const got = ui.received.get(f.file_id);
      const action = got?.downloaded
        ? h("span", { class: "ok" }, `${got.name} saved by the browser`) // the phone hands a file out once
        : got
        ? h("a", { href: downloadUrl(f.file_id), download: got.name || "", testid: `download-${f.file_id}`,
          onclick: () => setTimeout(() => ((got.downloaded = true), render()), 0) }, `Download ${got.name || "file"}`)
        : h("button", { type: "button", testid: `receive-${f.file_id}`, "aria-label": `Receive the file from ${f.sender}`,
          onclick: (e) => receiveFile(f, e.currentTarget) }, "Receive");
      return h("li", { testid: "inbox-row" }, h("span", {}, `From ${f.sender}`, " ",
        h("span", { class: "hint" }, [fmt.size(f.size), fmt.time(f.created)].filter(Boolean).join(", "))), action);
    }));
}

function downloadUrl(fileId) {
  return `/api/files/${encodeURIComponent(fileId)}/download?token=${encodeURIComponent(token)}`;
}

function deviceValue(device) {
  return typeof device === "string" ? device : String(device.name ?? device.index);
}

function renderDevices(devices) {
  for (const [id, list, current] of [["audio-in", devices?.inputs, devices?.audio_in],
    ["audio-out", devices?.outputs, devices?.audio_out]]) {
    const select = $(id);
    const values = (list ?? []).map(deviceValue);
    const chosen = current ?? "default";
    if (!values.includes(chosen)) values.unshift(chosen);
    replaceIfChanged(select, JSON.stringify(values), () => values.map((v) => h("option", { value: v }, v)));
    if (select.value !== chosen && document.activeElement !== select) select.value = chosen;
  }
  for (const [id, on] of [["echo-cancel", devices?.echo_cancel], ["noise-suppression", devices?.noise_suppression],
    ["auto-gain", devices?.auto_gain]]) {
    if (document.activeElement !== $(id)) $(id).checked = on !== false;
  }
}

// ---------------------------------------------------------------- effects

function effects(next) {
  if (next.phase !== ui.phaseShown) {
    ui.phaseShown = next.phase;
    showError("");
    const first = { setup: "setup-name", locked: "unlock-passphrase" }[next.phase];
    if (first) $(first).focus();
    else if (document.activeElement === document.body || document.activeElement?.closest("[hidden]")) $("main").focus();
  }
  const call = next.call;
  const key = call ? `${call.call_id}:${call.state}` : null;
  if (key !== ui.callKey) {
    if (call) announce(describeCall(call));
    else if (ui.callKey && next.last_call) announce(describeSummary(next.last_call));
    const wasIncoming = ui.callKey?.endsWith(":incoming");
    ui.callKey = key;
    const focusLost = document.activeElement === document.body || $("incoming").contains(document.activeElement);
    if (wasIncoming && focusLost && call && ACTIVE.has(call.state)) {
      // keep the SAS in view (it is read aloud next), even when the panel is taller than the window
      $("hangup").focus({ preventScroll: true });
      $("call-panel").scrollIntoView({ block: "start" });
    } else if (wasIncoming && focusLost) $("main").focus();
  }
  if (call?.state === "incoming") {
    if (ui.incomingId !== call.call_id) {
      ui.incomingId = call.call_id;
      $("accept").focus();
      ringer.start(call);
    }
  } else {
    ui.incomingId = null;
    ringer.stop();
  }
}

function announce(message) {
  const region = $("announce");
  region.textContent = "";
  setTimeout(() => (region.textContent = message), 50);
}

// ---------------------------------------------------------------- ringing

/** Two short beeps every few seconds, made with an oscillator (no audio files). */
const ringer = {
  context: null,
  timer: null,
  notification: null,
  audio() {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!this.context && Context) this.context = new Context();
    if (this.context?.state === "suspended") this.context.resume().catch(() => {});
    return this.context;
  },
  ring() {
    const context = this.audio();
    if (!context) return;
    for (const [offset, hz] of [[0.05, 440], [0.65, 480]]) {
      const at = context.currentTime + offset;
      const osc = context.createOscillator();
      const gain = context.createGain();
      osc.frequency.value = hz;
      gain.gain.setValueAtTime(0, at);
      gain.gain.linearRampToValueAtTime(0.15, at + 0.03); // ramps: no clicks
      gain.gain.setValueAtTime(0.15, at + 0.35);
      gain.gain.linearRampToValueAtTime(0, at + 0.4);
      osc.connect(gain);
      gain.connect(context.destination);
      osc.start(at);
      osc.stop(at + 0.45);
    }
  },
  start(call) {
    if (this.timer) return;
    this.ring();
    this.timer = setInterval(() => this.ring(), RING_EVERY_MS);
    const hidden = document.visibilityState !== "visible" || !document.hasFocus();
    if (hidden && "Notification" in window && Notification.permission === "granted") {
      try {
        this.notification = new Notification("Incoming call", { body: `${call.peer} is calling`, tag: call.call_id });
        this.notification.onclick = () => (window.focus(), $("accept").focus());
      } catch {
        // some browsers allow notifications only from a service worker
      }
    }
  },
  stop() {
    clearInterval(this.timer);
    this.timer = null;
    this.notification?.close();
    this.notification = null;
  },
};

// ---------------------------------------------------------------- actions

async function loadSafetyNumber(name) {
  try {
    return await api(`/api/contacts/${encodeURIComponent(name)}/safety-number`);
  } catch (error) {
    showError(error.message);
    return null;
  }
}

async function openSafety(name) {
  ui.safety = { name, number: null };
  render();
  $("safety").scrollIntoView?.({ block: "nearest" });
  const data = await loadSafetyNumber(name);
  if (ui.safety?.name === name) ui.safety = { name, number: data?.safety_number ?? null };
  render();
  $("verify-contact").focus();
}

async function callContact(name, button) {
  if (contactOf(name)?.key_changed) {
    ui.keyWarningFor = name; // the warning comes before any call with a changed key
    return render();
  }
  await act(button, async () => {
    try {
      await api("/api/call", { name });
    } catch (error) {
      if (!error.data?.key_changed) throw error;
      ui.keyWarningFor = name; // the dialog says it all
    }
  });
}

async function sendFile(to, file, button) {
  if (!to) {
    showError("Choose who to send the file to first.");
    return $("file-to").focus();
  }
  await act(button, () => {
    const form = new FormData();
    form.append("to", to);
    form.append("file", file, file.name);
    return api("/api/files/send", form);
  });
}

async function receiveFile(file, button) {
  const data = await act(button, () => api(`/api/files/${encodeURIComponent(file.file_id)}/receive`, {}));
  if (data === undefined) return;
  ui.received.set(file.file_id, { sender: file.sender, size: file.size, created: file.created,
    name: data.name ?? data.filename ?? "" });
  render();
  document.querySelector(`[data-testid="download-${CSS.escape(file.file_id)}"]`)?.focus();
}

function addDropTarget(el, recipient) {
  el.addEventListener("dragover", (e) => {
    if (![...e.dataTransfer.types].includes("Files")) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
    el.classList.add("dragging");
  });
  el.addEventListener("dragleave", () => el.classList.remove("dragging"));
  el.addEventListener("drop", (e) => {
    e.preventDefault();
    e.stopPropagation();
    el.classList.remove("dragging");
    const file = e.dataTransfer.files[0];
    if (file) sendFile(recipient(), file, null);
  });
}

function wire() {
  $("setup-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const form = e.currentTarget;
    const name = $("setup-name").value.trim();
    const passphrase = $("setup-passphrase").value;
    const same = passphrase === $("setup-passphrase-again").value;
    $("setup-passphrase-again").setAttribute("aria-invalid", String(!same));
    if (!name) return showError("Enter the name people will call you by.");
    if (!passphrase) return showError("Choose a passphrase.");
    if (!same) return showError("The two passphrases are not the same.");
    act(form.querySelector("button"), () =>
      api("/api/register", {
        name,
        server_url: $("setup-server").value.trim(),
        passphrase,
        weak_passphrase: $("setup-weak").checked,
      }));
  });
  $("unlock-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const field = $("unlock-passphrase");
    const done = await act(e.currentTarget.querySelector("button"), () => api("/api/unlock", { passphrase: field.value }));
    if (done === undefined) field.select();
    else field.value = "";
  });
  $("add-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = $("contact-search").value.trim();
    if (!name) return showError("Type the name of the person to add.");
    const done = await act($("contact-add"), () => api("/api/contacts", { name }));
    if (done !== undefined) {
      $("contact-search").value = "";
      ui.filter = "";
      render();
    }
  });
  $("contact-search").addEventListener("input", (e) => ((ui.filter = e.target.value), render()));
  const post = (path, body) => (e) => act(e.currentTarget, () => api(path, body ?? {}));
  $("accept").addEventListener("click", post("/api/call/accept"));
  $("reject").addEventListener("click", post("/api/call/reject"));
  $("block-caller").addEventListener("click", (e) => {
    const peer = state?.call?.peer;
    if (peer) act(e.currentTarget, () => api("/api/block", { name: peer }));
  });
  $("silence-strangers").addEventListener("change", (e) =>
    act(null, () => api("/api/silence-strangers", { on: e.currentTarget.checked })));
  $("hangup").addEventListener("click", post("/api/call/hangup"));
  $("cancel").addEventListener("click", post("/api/call/hangup"));
  $("sas-match").addEventListener("click", post("/api/call/sas", { matches: true }));
  $("sas-mismatch").addEventListener("click", post("/api/call/sas", { matches: false }));
  $("mute").addEventListener("click", (e) =>
    act(e.currentTarget, () => api("/api/call/mute", { muted: !state?.call?.muted })));
  $("missed-seen").addEventListener("click", post("/api/history/seen"));
  $("warnings-dismiss").addEventListener("click", post("/api/warnings/dismiss"));
  $("verify-contact").addEventListener("click", (e) =>
    act(e.currentTarget, () => api(`/api/contacts/${encodeURIComponent(ui.safety.name)}/verify`, {})));
  $("safety-close").addEventListener("click", () => {
    const name = ui.safety?.name;
    ui.safety = null;
    render();
    if (name) document.querySelector(`[data-testid="safety-${CSS.escape(name)}"]`)?.focus();
  });
  const dismissKey = () => {
    if (ui.keyShown) ui.dismissedKeys.add(ui.keyShown);
    ui.keyWarningFor = null;
    render();
  };
  $("dismiss-key-warning").addEventListener("click", dismissKey);
  $("key-warning").addEventListener("cancel", (e) => {
    e.preventDefault(); // Escape: same as "Not now", through our state
    dismissKey();
  });
  $("accept-key").addEventListener("click", async (e) => {
    const name = ui.keyShown;
    const done = await act(e.currentTarget, () => api(`/api/contacts/${encodeURIComponent(name)}/accept-key`, {}));
    if (done === undefined) return;
    ui.keyWarningFor = null;
    ui.dismissedKeys.delete(name);
    ui.keySafety = null;
    if (state) state.contacts = state.contacts.map((c) => (c.name === name ? { ...c, key_changed: false } : c));
    render();
  });
  $("file-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const file = $("file-input").files[0];
    if (!file) return showError("Choose a file to send.");
    sendFile($("file-to").value.trim(), file, $("file-send")).then(() => ($("file-input").value = ""));
  });
  addDropTarget($("drop-zone"), () => $("file-to").value.trim());
  document.addEventListener("dragover", (e) => { // a stray drop must not navigate away
    if (e.defaultPrevented) return; // a drop target took it
    e.preventDefault();
    e.dataTransfer.dropEffect = "none";
  });
  document.addEventListener("drop", (e) => e.preventDefault());
  const devices = () => act(null, () => api("/api/devices", { audio_in: $("audio-in").value, audio_out: $("audio-out").value }));
  $("audio-in").addEventListener("change", devices);
  $("audio-out").addEventListener("change", devices);
  const processing = () => act(null, () => api("/api/devices", {
    echo_cancel: $("echo-cancel").checked, noise_suppression: $("noise-suppression").checked, auto_gain: $("auto-gain").checked,
  }));
  for (const id of ["echo-cancel", "noise-suppression", "auto-gain"]) $(id).addEventListener("change", processing);
  $("devices-rescan").addEventListener("click", () => act(null, () => api("/api/devices", { rescan: true })));
  $("notify-enable").addEventListener("click", () => Notification.requestPermission().then(render));
  // Browsers let a page make sound only after a gesture: prepare the ringer on the first one.
  const unlockAudio = () => ringer.audio();
  document.addEventListener("pointerdown", unlockAudio, { once: true });
  document.addEventListener("keydown", unlockAudio, { once: true });
  setInterval(renderTimer, 1000);
}

// ---------------------------------------------------------------- start

async function start() {
  wire();
  render();
  token = await takeToken();
  tokenTaken = true;
  render();
  if (!token) return;
  try {
    setState(await api("/api/state"));
  } catch (error) {
    if (error.status === 401) return forgetToken();
    showError(error.message);
  }
  connect();
}

start();
