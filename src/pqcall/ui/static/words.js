// pqcall web UI: the words and numbers the page shows, as pure functions of the
// State's parts (no DOM, no clock except where `now` is passed in).
//
// One set of words for how a call went, the same as the CLI's and the history's
// (issue 21): answered, cancelled, declined, no answer, missed, busy, blocked,
// failed: <reason>. The phone computes the word (`outcome` of each history row
// and of `last_call`, client/call_outcome.py outcome_word); the page only shows
// it. Sizes are decimal (B, kB, MB, GB), as the CLI prints them.

const NO_ANSWER = "no answer";

export const fmt = {
  duration(seconds) {
    const s = Math.max(0, Math.floor(seconds ?? 0));
    const mm = String(Math.floor(s / 60) % 60);
    const ss = String(s % 60).padStart(2, "0");
    return s >= 3600 ? `${Math.floor(s / 3600)}:${mm.padStart(2, "0")}:${ss}` : `${mm}:${ss}`;
  },
  time(unix) {
    return unix ? new Date(unix * 1000).toLocaleString([], { dateStyle: "short", timeStyle: "short" }) : "";
  },
  ago(unix, now) {
    if (!unix) return "";
    const minutes = Math.round((now - unix) / 60);
    if (minutes < 1) return "last seen just now";
    if (minutes < 60) return `last seen ${minutes} min ago`;
    if (minutes < 48 * 60) return `last seen ${Math.round(minutes / 60)} h ago`;
    return `last seen ${fmt.time(unix)}`;
  },
  /** Decimal units, as `pqcall` prints them (cli/output.py byte_size): 512 B, 1.50 MB, 24.0 MB. */
  size(bytes) {
    if (bytes == null) return "";
    for (const [unit, scale] of [["GB", 1e9], ["MB", 1e6], ["kB", 1e3]]) {
      if (bytes >= scale) {
        const value = bytes / scale;
        return `${value.toFixed(value < 10 ? 2 : 1)} ${unit}`;
      }
    }
    return `${Math.trunc(bytes)} B`;
  },
  num(value, digits, unit) {
    return value == null ? "–" : `${Number(value).toFixed(digits)}${unit}`;
  },
};

export function quality(mos) {
  if (mos == null) return "measuring";
  return mos >= 4 ? "good" : mos >= 3.6 ? "fair" : "poor";
}

/** How a finished call went, in one of the shared words (computed by the phone). */
export function outcome(summary) {
  return summary.outcome ?? summary.result ?? "unknown";
}

/** The outcome's word without its reason, for a CSS class: `failed`, `no-answer`... */
export function outcomeKind(summary) {
  return outcome(summary).split(":")[0].replace(/\s+/g, "-");
}

/** Why nobody answered, when the history knows (`bob was offline`), else "". */
export function outcomeDetail(summary) {
  const reason = summary.reason ?? "";
  if (summary.result === "missed" && reason.startsWith(`${NO_ANSWER}: `)) return reason.slice(NO_ANSWER.length + 2);
  if (summary.result === "missed" && summary.direction === "incoming" && reason === "missed while offline") {
    return "while this phone was offline";
  }
  return "";
}

export function trustText(call, contact) {
  if (contact?.key_changed) return "KEY CHANGED: compare the safety number";
  if (contact?.suspicious) return "Marked suspicious after a mismatch";
  if (call.sas_confirmed) return "Numbers confirmed for this call";
  return { new: "New contact: compare the number aloud", pinned: "Key saved, not yet verified", verified: "Verified contact" }[
    call.peer_trust] ?? "";
}

/** A contact's trust in one or two words ("key saved": we keep the key they first showed). */
export function badge(contact) {
  if (contact.key_changed) return "KEY CHANGED";
  if (contact.suspicious) return "suspicious";
  return contact.verified ? "verified" : "key saved";
}

/** The call panel's state line: "Ringing bob…", "Connecting…", "In call". */
export function callStateText(call) {
  return {
    outgoing: `Ringing ${call.peer}…`,
    incoming: `${call.peer} is calling`,
    connecting: "Connecting…",
    active: "In call",
  }[call.state] ?? call.state;
}

/** Seconds to show beside the call: since it started ringing, then since the answer. */
export function callSeconds(call, now) {
  if (call.state === "outgoing" || call.state === "incoming") return now - (call.started ?? now);
  return call.answered ? now - call.answered : 0;
}

export function describeCall(call) {
  return {
    outgoing: `Ringing ${call.peer}…`,
    incoming: `${call.peer} is calling`,
    connecting: `Connecting to ${call.peer}…`,
    active: `In call with ${call.peer}`,
  }[call.state] ?? `Call with ${call.peer}: ${call.state}`;
}

export function describeSummary(summary) {
  const where = summary.direction === "incoming" ? "from" : "to";
  const detail = outcomeDetail(summary);
  return `Call ${where} ${summary.peer} ended: ${outcome(summary)}${detail ? ` (${detail})` : ""}, ` +
    fmt.duration(summary.duration_s);
}

const APP_TITLE = "pqcall";

/**
 * The tab's title and icon for `call` at `now` (unix seconds), and the count of
 * missed calls not yet seen: what a person sees in the tab strip while the
 * page is behind another one.
 */
export function tabFor(call, now, missed = 0) {
  if (!call && missed > 0) return { title: `${missed} missed call${missed > 1 ? "s" : ""} – ${APP_TITLE}`, icon: "idle" };
  if (!call) return { title: APP_TITLE, icon: "idle" };
  const time = fmt.duration(callSeconds(call, now));
  if (call.state === "incoming") return { title: `${call.peer} is calling – ${APP_TITLE}`, icon: "ringing" };
  if (call.state === "outgoing") return { title: `Ringing ${call.peer}… ${time} – ${APP_TITLE}`, icon: "ringing" };
  if (call.state === "connecting") return { title: `Connecting to ${call.peer}… – ${APP_TITLE}`, icon: "call" };
  if (call.stats?.reconnecting) return { title: `Reconnecting to ${call.peer}… – ${APP_TITLE}`, icon: "ringing" };
  const muted = call.muted ? " (muted)" : "";
  return { title: `In call with ${call.peer} ${time}${muted} – ${APP_TITLE}`, icon: "call" };
}

const ICON_COLORS = { idle: "#1f5fbf", ringing: "#c26a00", call: "#1e6b34" };

/** The tab icon as a data: URL (the page's CSP allows data: images): a handset on a coloured disc. */
export function iconUrl(kind) {
  const fill = ICON_COLORS[kind] ?? ICON_COLORS.idle;
  const waves = kind === "ringing"
    ? '<path d="M21 7a8 8 0 0 1 4 4M21 3a12 12 0 0 1 8 8" stroke="#fff" stroke-width="2.4" fill="none" stroke-linecap="round"/>'
    : "";
  const svg = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">' +
    `<circle cx="16" cy="16" r="16" fill="${fill}"/>` +
    '<path d="M10.5 7.5l3 3.8-1.8 2.2a12 12 0 0 0 6.8 6.8l2.2-1.8 3.8 3-1.6 3a3 3 0 0 1-3 1.3C13.6 24.7 7.3 18.4 6.2 12.1' +
    'a3 3 0 0 1 1.3-3z" fill="#fff"/>' + waves + "</svg>";
  return `data:image/svg+xml,${encodeURIComponent(svg)}`;
}

/** The keyboard shortcuts: key, what it does (listed by "?"). */
export const SHORTCUTS = [
  ["A", "accept the ringing call"],
  ["D", "decline the ringing call"],
  ["M", "mute or unmute the microphone"],
  ["H", "hang up (or cancel a call that is still ringing, or leave a group call)"],
  ["?", "show these shortcuts"],
];
