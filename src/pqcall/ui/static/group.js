// pqcall web UI: group calls. Choosing two or more contacts and starting the
// call, the invitation that rings (join or decline), and the call itself: the
// group code every member must see alike, the roster (each person's state, trust
// badge, mute state and a speaking indicator), inviting one more person, mute
// and leave. Everything shown comes from `State.group` and `State.group_last`
// (ui/groups.py); the ring is a ringer.js ringer of its own.

import { $, h, replaceIfChanged, show, text } from "./dom.js";
import { api } from "./link.js";
import { makeRinger } from "./ringer.js";

const LIVE = new Set(["joining", "active"]);
const APP_TITLE = "pqcall";
const STATE_WORDS = {
  invited: "ringing…",
  joined: "in the call",
  declined: "declined",
  busy: "busy",
  no_answer: "no answer",
  left: "left",
  gone: "connection lost",
};
const TRUST_WORDS = {
  verified: "verified",
  "key saved": "not verified",
  "new key": "key saved, not verified",
};
const TRUST_TITLES = {
  verified: "You compared the safety number with this person",
  "key saved": "Key saved, safety number not compared",
  "new key": "First contact: key saved now, safety number not compared",
};

/** A list of names as words: "bob", "bob and carol", "bob, carol and dave". */
function names(list) {
  if (list.length < 2) return list.join("");
  return `${list.slice(0, -1).join(", ")} and ${list[list.length - 1]}`;
}

/** How the last group call ended here, in a sentence. */
function lastText(last) {
  if (last.reason === "left") return `You left the group call with ${names(last.others)}.`;
  if (!last.joined) return `Missed group call from ${last.inviter} (${last.reason ?? "ended"}).`;
  return `Group call with ${names(last.others)} ended (${last.reason ?? "ended"}).`;
}

function memberRow(m) {
  const trust = m.trust ?? "checking";
  return h(
    "li",
    { testid: `member-${m.name}`, class: `member state-${m.state}`, "data-state": m.state,
      "data-speaking": String(Boolean(m.speaking)), "data-muted": String(Boolean(m.muted)) },
    m.me ? h("span", { class: "speaking self", "aria-hidden": "true" }) // others' audio only
      : h("span", { class: `speaking ${m.speaking ? "on" : "off"}`, testid: `speaking-${m.name}`, role: "img",
        "aria-label": m.speaking ? `${m.name} is speaking` : `${m.name} is not speaking` }),
    h("strong", { class: "name" }, m.me ? `${m.name} (you)` : m.name),
    h("span", { class: "member-state hint", testid: `member-state-${m.name}` }, STATE_WORDS[m.state] ?? m.state),
    m.me ? null : h("span", { class: `badge trust-${trust.replace(" ", "-")}`, testid: `trust-${m.name}`,
      title: TRUST_TITLES[m.trust] ?? "Waiting for the secure channel" }, TRUST_WORDS[m.trust] ?? "checking key…"),
    h("span", { class: "member-muted", testid: `muted-${m.name}`, hidden: !m.muted }, "muted"),
    m.vouched === false
      ? h("span", { class: "warn-text", testid: `unvouched-${m.name}` }, "added by the server, not by a member: gets no key")
      : null,
    !m.me && m.state === "joined" && m.has_key === false ? h("span", { class: "hint" }, "connecting…") : null,
  );
}

/**
 * The group screens over the page's State (`getState()`), with the page's
 * `act` (run an action, show its error) and `render`.
 */
export function makeGroup({ getState, act, render }) {
  const picked = new Set(); // contacts ticked for the next group call
  const local = { ringBlocked: false, ringingId: null, announced: null };
  const ringer = makeRinger({ onBlocked: (blocked) => ((local.ringBlocked = blocked), render()), onSink: () => {} });

  const ready = () => getState()?.phase === "ready";
  const current = () => (ready() ? getState().group ?? null : null);
  const inCall = () => LIVE.has(current()?.state);

  function renderGroup() {
    const g = current();
    const ringing = g?.state === "invited";
    show($("group-incoming"), ringing);
    if (ringing) {
      text($("group-incoming-from"), g.inviter);
      text($("group-incoming-with"), `with ${names(g.others.filter((n) => n !== g.inviter))}`);
    }
    show($("group-ring-blocked"), ringing && local.ringBlocked);
    $("group-incoming").dataset.sound = local.ringBlocked ? "blocked" : ringer.playing ? "on" : "off";
    renderWaiting(g?.invites ?? []);
    const live = LIVE.has(g?.state);
    show($("group-panel"), live);
    if (live) renderCall(g);
    const last = getState()?.group_last;
    show($("group-last"), !g && Boolean(last));
    if (!g && last) text($("group-last"), lastText(last));
    renderPicks();
    effects(g);
  }

  function renderCall(g) {
    const joined = g.members.filter((m) => m.state === "joined").length;
    text($("group-state"), g.state === "joining" ? "joining…" : `${joined} in the call`);
    text($("group-code"), g.group_code ?? "waiting for everyone's keys…");
    $("group-code").dataset.ready = String(Boolean(g.group_code));
    replaceIfChanged($("group-roster"), JSON.stringify(g.members), () => g.members.map(memberRow));
    $("group-mute").setAttribute("aria-pressed", String(Boolean(g.muted)));
    text($("group-mute"), g.muted ? "Unmute" : "Mute");
  }

  // other invitations ringing at the same time: each can be joined or declined
  function renderWaiting(invites) {
    show($("group-waiting"), invites.length > 0);
    replaceIfChanged($("group-waiting"), JSON.stringify(invites), () =>
      invites.map((i) => h("li", { testid: `group-waiting-${i.call_id}` },
        `${i.inviter} invites you to a group call with ${names(i.others.filter((n) => n !== i.inviter))} `,
        h("button", { type: "button", class: "primary",
          onclick: (e) => act(e.currentTarget, () => api("/api/group/accept", { call_id: i.call_id })) }, "Join"),
        h("button", { type: "button", class: "danger",
          onclick: (e) => act(e.currentTarget, () => api("/api/group/decline", { call_id: i.call_id })) }, "Decline"))));
  }

  function renderPicks() {
    const contacts = getState()?.contacts ?? [];
    for (const name of [...picked]) if (!contacts.some((c) => c.name === name)) picked.delete(name);
    replaceIfChanged($("group-picks"), contacts.map((c) => c.name).join("\n"), () =>
      contacts.map((c) => h("li", {}, h("label", { class: "check" },
        h("input", { type: "checkbox", testid: `group-pick-${c.name}`, checked: picked.has(c.name),
          onchange: (e) => ((e.currentTarget.checked ? picked.add(c.name) : picked.delete(c.name)), render()) }),
        ` ${c.name}`))));
    $("group-call").disabled = Boolean(getState()?.call) || Boolean(current()) || picked.size < 2;
  }

  function effects(g) {
    if (g?.state === "invited") {
      if (local.ringingId !== g.call_id) {
        local.ringingId = g.call_id;
        ringer.start({ peer: g.inviter, call_id: g.call_id }, () => (window.focus(), $("group-accept").focus()));
        $("group-accept").focus();
        setTimeout(render, 500); // the banner says whether the ring is heard (the browser may refuse)
      }
    } else if (local.ringingId !== null) {
      local.ringingId = null;
      ringer.stop();
    }
    const key = g ? `${g.call_id}:${g.state}:${g.group_code}` : null;
    if (key !== local.announced) {
      local.announced = key;
      if (g?.state === "invited") announce(`${g.inviter} invites you to a group call`);
      else if (g?.state === "active") announce(g.group_code ? `Group code ${g.group_code}` : "In the group call");
    }
  }

  function announce(message) {
    const region = $("announce");
    region.textContent = "";
    setTimeout(() => (region.textContent = message), 50);
  }

  /** The tab's title and icon while a group call rings or runs (null: the page's own). */
  function tab() {
    const g = current();
    if (!g) return null;
    if (g.state === "invited") return { title: `${g.inviter} invites you to a group call – ${APP_TITLE}`, icon: "ringing" };
    if (!LIVE.has(g.state)) return null;
    const joined = g.members.filter((m) => m.state === "joined").length;
    return { title: `Group call, ${joined} people${g.muted ? " (muted)" : ""} – ${APP_TITLE}`, icon: "call" };
  }

  function wire() {
    const current_id = () => ({ call_id: current()?.call_id ?? null });
    $("group-accept").addEventListener("click", (e) => act(e.currentTarget, () => api("/api/group/accept", current_id())));
    $("group-decline").addEventListener("click", (e) => act(e.currentTarget, () => api("/api/group/decline", current_id())));
    $("group-leave").addEventListener("click", (e) => act(e.currentTarget, () => api("/api/group/leave", {})));
    $("group-mute").addEventListener("click", (e) =>
      act(e.currentTarget, () => api("/api/group/mute", { muted: !current()?.muted })));
    $("group-call").addEventListener("click", async (e) => {
      const done = await act(e.currentTarget, () => api("/api/group/call", { names: [...picked] }));
      if (done !== undefined) {
        picked.clear();
        $("group-picks").dataset.key = ""; // rebuilt unticked
        render();
      }
    });
    $("group-invite-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const name = $("group-invite-name").value.trim();
      if (!name) return;
      const done = await act($("group-invite"), () => api("/api/group/invite", { name }));
      if (done !== undefined) $("group-invite-name").value = "";
    });
    const unlockAudio = () => {
      if (!ringer.isRunning()) ringer.unlock();
    };
    document.addEventListener("pointerdown", unlockAudio);
    document.addEventListener("keydown", unlockAudio);
  }

  return { render: renderGroup, wire, tab, inCall };
}
