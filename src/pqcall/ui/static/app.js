// pqcall web UI: renders the State the softphone pushes over one WebSocket and
// sends the person's actions to its REST API. Rendering is a function of
// `state` (from the server) and `ui` (small local state); transitions with side
// effects (ringing, focus, announcements, notifications, the tab's title) live in
// `effects`. Words and numbers come from words.js, the ring from ringer.js, the
// keyboard shortcuts from shortcuts.js.

import { listenForShortcuts } from "./shortcuts.js";
import { makeRinger } from "./ringer.js";
import {
  SHORTCUTS, badge, callSeconds, callStateText, describeCall, describeSummary, fmt, iconUrl, outcome, outcomeDetail,
  outcomeKind, quality, tabFor, trustText,
} from "./words.js";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "pqcall-token";
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10000;
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
  ringBlocked: false, // the browser refused to play the ring (no click on the page yet)
  ringSink: null, // label of the browser output the ring plays on (null: the default)
  peerMuted: undefined, // the peer said it is muted (announced when it changes)
};

const ringer = makeRinger({
  onBlocked: (blocked) => ((ui.ringBlocked = blocked), render()),
  onSink: (label) => ((ui.ringSink = label), render()),
});

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
  renderTab(phase === "ready" ? state.call : null);
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
  text($("my-fingerprint"), account?.fingerprint);
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
  show($("ring-blocked"), ui.ringBlocked);
  $("incoming").dataset.sound = ui.ringBlocked ? "blocked" : ringer.playing ? "on" : "off";
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
  text($("call-state"), callStateText(call));
  $("call-state").dataset.state = call.state;
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
  show($("peer-muted"), live && Boolean(call.peer_muted));
  text($("peer-muted"), `${call.peer} muted their microphone`);
  renderStats(call.stats);
}

function renderTimer() {
  const call = state?.phase === "ready" ? state.call : null;
  if (call) text($("call-timer"), fmt.duration(callSeconds(call, Date.now() / 1000)));
  renderTab(call);
}

/** The tab's title and icon say what the phone is doing while the page is behind another tab. */
function renderTab(call) {
  const tab = tabFor(call, Date.now() / 1000);
  if (document.title !== tab.title) document.title = tab.title;
  const icon = $("favicon");
  if (icon.dataset.state !== tab.icon) {
    icon.dataset.state = tab.icon;
    icon.href = iconUrl(tab.icon);
  }
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
    text(li.querySelector(".seen"), !shown || contact.online ? "" : fmt.ago(contact.last_seen, Date.now() / 1000));
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

// After a key change the panel shows the NEW number (the one to compare) and
// offers to accept the key; the old verification no longer counts.
function renderSafety(keyTarget) {
  const contact = ui.safety && !keyTarget ? contactOf(ui.safety.name) : null;
  show($("safety"), Boolean(contact));
  const slot = $("safety-slot");
  if (!contact) return clear(slot);
  const name = contact.name;
  const changed = Boolean(contact.key_changed);
  if (ui.safety.keyChanged !== changed && ui.safety.number !== null) loadSafety(name); // the key moved on
  const number = changed ? ui.safety.changed : ui.safety.number;
  text($("safety-name"), name);
  replaceIfChanged(slot, `${name}:${changed}:${number}`, () => [safetyNumberEl(number)]);
  show($("safety-changed"), changed);
  text($("safety-changed"), `${name}'s key changed: this is the new safety number. ${name} is no longer ` +
    "verified — compare and accept.");
  show($("safety-help"), !changed);
  show($("verify-contact"), !changed);
  show($("safety-accept-key"), changed);
  $("safety-accept-key").disabled = !number;
  text($("verify-contact"), contact.verified ? "Verified ✓" : "Mark as verified");
  $("verify-contact").disabled = contact.verified || !number;
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
  replaceIfChanged($("history"), JSON.stringify(state.history.map((c) => [c.call_id, c.result, c.reason, c.duration_s])), () =>
    state.history.map((c, index) => {
      const detail = outcomeDetail(c);
      return h("li", { testid: "history-row", class: `history-row result-${outcomeKind(c)}` },
        h("span", { class: "dir" }, h("span", { "aria-hidden": "true" }, c.direction === "incoming" ? "↙ " : "↗ "),
          c.direction),
        h("strong", { class: "peer" }, c.peer),
        h("span", { class: "result", testid: "history-result" }, outcome(c),
          detail ? h("span", { class: "hint" }, ` (${detail})`) : null),
        h("span", { class: "dur" }, fmt.duration(c.duration_s)),
        h("time", { datetime: new Date((c.started_unix ?? 0) * 1000).toISOString() }, fmt.time(c.started_unix)),
        h("button", { type: "button", class: "quiet call-back", testid: `call-back-${index}`,
          "aria-label": `Call ${c.peer} back`, onclick: (e) => callContact(c.peer, e.currentTarget) }, "Call back"));
    }));
  for (const button of $("history").querySelectorAll(".call-back")) button.disabled = Boolean(state.call);
}

function renderFiles() {
  const transfers = state.transfers ?? [];
  show($("transfers-title"), transfers.length > 0);
  replaceIfChanged($("transfers"), JSON.stringify(transfers), () =>
    transfers.map((t) => {
      const verb = t.direction === "receive" ? (t.state === "done" ? "Received" : "Receiving") : t.state === "done" ? "Sent" : "Sending";
      const label = `${verb} ${t.name}: ${t.error ? `failed: ${t.error}` : t.state}`;
      return h("li", { testid: "transfer-row" }, h("span", { id: `transfer-${t.id}` }, label, " ", h("span", { class: "hint" },
        `${fmt.size(t.done)} of ${fmt.size(t.total)}`)),
      h("progress", { testid: "transfer-progress", max: t.total || 1, value: t.done ?? 0,
        "aria-labelledby": `transfer-${t.id}` }),
      t.saved_path ? h("p", { class: "ok received-details" }, receivedText(t)) : null);
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
        h("span", { class: "hint" }, [fmt.size(f.size), fmt.time(f.created)].filter(Boolean).join(", "))), action,
      got?.saved_path ? h("p", { class: "ok received-details", testid: `received-${f.file_id}` }, receivedText(got)) : null);
    }));
}

/** What a received file's checks found and where the phone saved it. */
function receivedText(r) {
  const trust = r.signer_verified ? "verified" : "key saved, not verified";
  return `Signature checked: signed by ${r.signed_by} (${trust}). Saved in ${r.saved_path}`;
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
  text($("ring-output"), ui.ringSink ? `The ring plays on ${ui.ringSink}, the speaker chosen above.`
    : "The ring plays on the browser's default speaker (the browser does not name the one chosen above).");
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
      ringer.start(call, () => (window.focus(), $("accept").focus()));
      render(); // the banner says whether the ring is heard
    }
  } else {
    ui.incomingId = null;
    ringer.stop();
  }
  const peerMuted = Boolean(call && ACTIVE.has(call.state) && call.peer_muted);
  if (peerMuted !== ui.peerMuted) {
    if (call && ui.peerMuted !== undefined) announce(`${call.peer} ${peerMuted ? "muted" : "unmuted"} their microphone`);
    ui.peerMuted = peerMuted;
  }
  if (next.devices) ringer.useSink(next.devices.audio_out);
}

function announce(message) {
  const region = $("announce");
  region.textContent = "";
  setTimeout(() => (region.textContent = message), 50);
}

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
  ui.safety = { name, number: null, changed: null, keyChanged: Boolean(contactOf(name)?.key_changed) };
  render();
  $("safety").scrollIntoView?.({ block: "nearest" });
  await loadSafety(name);
  (contactOf(name)?.key_changed ? $("safety-accept-key") : $("verify-contact")).focus();
}

/** Fetch the safety numbers for the open panel: the saved key's, and the new key's after a change. */
async function loadSafety(name) {
  if (ui.safety?.name !== name) return;
  ui.safety.keyChanged = Boolean(contactOf(name)?.key_changed);
  const data = await loadSafetyNumber(name);
  if (ui.safety?.name !== name) return;
  Object.assign(ui.safety, { number: data?.safety_number ?? null, changed: data?.changed_safety_number ?? null });
  render();
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

/** The person compared the new safety number with `name`: save the new key. */
async function acceptKey(name, button) {
  if (!name) return;
  const done = await act(button, () => api(`/api/contacts/${encodeURIComponent(name)}/accept-key`, {}));
  if (done === undefined) return;
  ui.keyWarningFor = null;
  ui.dismissedKeys.delete(name);
  ui.keySafety = null;
  if (state) state.contacts = state.contacts.map((c) => (c.name === name ? { ...c, key_changed: false } : c));
  render();
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
    name: data.name ?? data.filename ?? "", saved_path: data.saved_path, signed_by: data.signed_by,
    signer_verified: data.signer_verified });
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
  $("accept-key").addEventListener("click", (e) => acceptKey(ui.keyShown, e.currentTarget));
  $("safety-accept-key").addEventListener("click", (e) => acceptKey(ui.safety?.name, e.currentTarget));
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
  // Browsers let a page make sound only after a gesture: prepare the ringer on each one until it plays.
  const unlockAudio = () => {
    if (!ringer.isRunning()) ringer.unlock();
  };
  document.addEventListener("pointerdown", unlockAudio);
  document.addEventListener("keydown", unlockAudio);
  $("ring-enable").addEventListener("click", () => {
    ringer.unlock();
    $("accept").focus();
  });
  wireShortcuts();
  setInterval(renderTimer, 1000);
}

// ---------------------------------------------------------------- keyboard shortcuts

/** A, D, M, H and ? (see words.js SHORTCUTS); each acts only when its button is shown and enabled. */
function wireShortcuts() {
  replaceIfChanged($("shortcuts-list"), "list", () =>
    SHORTCUTS.flatMap(([key, what]) => [h("dt", {}, h("kbd", {}, key)), h("dd", {}, what)]));
  const press = (id) => () => {
    const button = $(id);
    if (state?.phase !== "ready" || button.disabled || button.closest("[hidden]")) return false;
    button.click();
    return true;
  };
  const dialog = $("shortcuts");
  const toggleList = () => (dialog.open ? dialog.close() : dialog.showModal());
  listenForShortcuts({
    a: press("accept"),
    d: press("reject"),
    m: press("mute"),
    h: () => press("hangup")() || press("cancel")(),
    "?": toggleList,
  }, () => $("key-warning").open || dialog.open);
  $("shortcuts-open").addEventListener("click", toggleList);
  $("shortcuts-close").addEventListener("click", () => dialog.close());
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
