// pqcall web UI: renders the State the softphone pushes over one WebSocket and
// sends the person's actions to its REST API. Rendering is a function of
// `state` (from the server) and `ui` (small local state); transitions with side
// effects (ringing, focus, announcements, notifications, the tab's title) live in
// `effects`. The link to the phone (token, API, socket) is link.js; words and
// numbers words.js; DOM helpers dom.js; the ring ringer.js; the keyboard
// shortcuts shortcuts.js; the Files and device panels files.js, devices.js; group calls group.js.

import { $, clear, h, replaceIfChanged, show, text } from "./dom.js";
import { makeFiles } from "./files.js";
import { makeGroup } from "./group.js";
import { ApiError, api, connect, forgetToken as dropToken, link, takeToken } from "./link.js";
import { renderDevices } from "./devices.js";
import { makeRinger } from "./ringer.js";
import { wireShortcuts } from "./shortcuts.js";
import {
  badge, callSeconds, callStateText, describeCall, describeSummary, fmt, iconUrl, outcome, outcomeDetail,
  outcomeKind, quality, tabFor, trustText,
} from "./words.js";

const ACTIVE = new Set(["connecting", "active"]);

// ---------------------------------------------------------------- state

let tokenTaken = false; // takeToken() has answered (until then the page is loading)

function forgetToken() {
  dropToken();
  render();
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

let state = null; // the last State from the server
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

Object.assign(link.hooks, {
  onState: setState,
  version: () => state?.version,
  onError: showError,
  onChange: render,
  onForbidden: forgetToken,
});

const files = makeFiles({ getState: () => state, received: ui.received, act, render, showError });
const group = makeGroup({ getState: () => state, act, render });

// ---------------------------------------------------------------- rendering

function safetyNumberEl(number) {
  return h("p", { testid: "safety-number", class: "safety-number" }, number ?? "Loading…");
}

function contactOf(name) {
  return state?.contacts.find((c) => c.name === name) ?? null;
}

function render() {
  const phase = !tokenTaken ? "loading" : !link.token ? "no-token" : state ? state.phase : "loading";
  show($("no-token"), phase === "no-token");
  show($("setup"), phase === "setup");
  show($("unlock"), phase === "locked");
  show($("ready"), phase === "ready");
  renderHeader();
  renderTab(phase === "ready" ? state.call : null, phase === "ready" ? state.missed_unseen : 0);
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
  group.render();
  renderContacts();
  renderScreening();
  renderSafety(target);
  renderHistory();
  files.render();
  renderDevices(state.devices, ui.ringSink);
}

function renderHeader() {
  const account = state?.account;
  show($("who"), Boolean(account));
  text($("me"), account?.username);
  text($("my-fingerprint"), account?.fingerprint);
  const online = link.socketOpen && Boolean(state?.connected);
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
  show($("peer-disguised"), live && Boolean(call.peer_voice_disguised));
  text($("peer-disguised"), `${call.peer}'s voice is disguised`);
  show($("own-disguised"), live && Boolean(call.voice_disguised));
  renderStats(call.stats);
}

function renderTimer() {
  const ready = state?.phase === "ready";
  const call = ready ? state.call : null;
  if (call) text($("call-timer"), fmt.duration(callSeconds(call, Date.now() / 1000)));
  renderTab(call, ready ? state.missed_unseen : 0);
}

/** The tab's title and icon say what the phone is doing while the page is behind another tab. */
function renderTab(call, missed) {
  const tab = group.tab() ?? tabFor(call, Date.now() / 1000, missed ?? 0);
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
  const inCall = Boolean(state.call) || group.inCall();
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
  files.addDropTarget(li, () => name);
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
  replaceIfChanged($("history"), JSON.stringify(state.history.map((c) => [c.call_id, c.outcome, c.reason, c.duration_s])), () =>
    state.history.map((c, index) => {
      const detail = outcomeDetail(c);
      return h("li", { testid: "history-row", class: `history-row result-${outcomeKind(c)}` },
        h("span", { class: "dir" }, h("span", { "aria-hidden": "true" }, c.direction === "incoming" ? "↙ " : "↗ "),
          c.direction),
        h("strong", { class: "peer" }, c.peer),
        h("span", { class: "result", testid: "history-result" }, outcome(c),
          detail ? h("span", { class: "hint" }, ` (${detail})`) : null),
        h("span", { class: "dur" }, c.answered_unix ? fmt.duration(c.duration_s) : "–"),
        h("time", { datetime: new Date((c.started_unix ?? 0) * 1000).toISOString() }, fmt.time(c.started_unix)),
        h("button", { type: "button", class: "quiet call-back", testid: `call-back-${index}`,
          "aria-label": `Call ${c.peer} back`, onclick: (e) => callContact(c.peer, e.currentTarget) }, "Call back"));
    }));
  for (const button of $("history").querySelectorAll(".call-back")) button.disabled = Boolean(state.call);
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
  files.wire();
  group.wire();
  const devices = () => act(null, () => api("/api/devices", { audio_in: $("audio-in").value, audio_out: $("audio-out").value }));
  $("audio-in").addEventListener("change", devices);
  $("audio-out").addEventListener("change", devices);
  const processing = () => act(null, () => api("/api/devices", {
    echo_cancel: $("echo-cancel").checked, noise_suppression: $("noise-suppression").checked, auto_gain: $("auto-gain").checked,
  }));
  for (const id of ["echo-cancel", "noise-suppression", "auto-gain"]) $(id).addEventListener("change", processing);
  $("voice-disguise").addEventListener("change", () => act(null, () => api("/api/devices", { voice_disguise: $("voice-disguise").value })));
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
  wireShortcuts(() => state?.phase === "ready");
  setInterval(renderTimer, 1000);
}

// ---------------------------------------------------------------- start

async function start() {
  wire();
  render();
  await takeToken();
  tokenTaken = true;
  render();
  if (!link.token) return;
  try {
    setState(await api("/api/state"));
  } catch (error) {
    if (error.status === 401) return forgetToken();
    showError(error.message);
  }
  connect();
}

start();
