// pqcall web UI: the account panel (ui/linked_devices.py, decision 1020). This
// account's linked devices (name, short id, "this device"), approving a new
// device by the code it shows, unlinking one (after a confirmation), a new key
// for this device, and a new account's recovery words, shown once. It follows
// the page's State through link.hooks (app.js installs them first) and talks
// to /api/account/* on its own.

import { $, h, show, text } from "./dom.js";
import { ApiError, api, link } from "./link.js";

let ready = false; // the account is unlocked (State.phase "ready")
let devices = null; // the last GET /api/account/devices answer

function say(message, isError = false) {
  const out = $("account-message");
  text(out, message);
  out.classList.toggle("error", isError);
}

async function run(button, action) {
  say("");
  if (button) button.disabled = true;
  try {
    return await action();
  } catch (error) {
    say(error instanceof ApiError ? error.message : String(error), true);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

function renderDevices() {
  const list = $("linked-devices");
  list.replaceChildren(
    ...(devices?.devices ?? []).map((d) =>
      h(
        "li",
        { testid: `linked-device-${d.short_id}`, "data-device-id": d.device_id, class: "linked-device" },
        h("strong", {}, d.name),
        " ",
        h("code", { title: d.device_id }, d.short_id),
        d.this_device ? h("span", { class: "badge", testid: "this-device" }, "this device") : null,
        d.this_device
          ? null
          : h("button", { type: "button", testid: `unlink-${d.short_id}`, "aria-label": `Unlink ${d.name}`,
            onclick: (e) => unlink(d, e.target) },
            "Unlink"),
      ),
    ),
  );
  text($("linked-version"), devices ? `list version ${devices.version}` : "");
}

async function refresh() {
  const data = await run(null, () => api("/api/account/devices"));
  if (data) {
    devices = data;
    renderDevices();
  }
}

async function unlink(device, button) {
  if (!confirm(`Unlink ${device.name} (${device.short_id})? It can no longer log in to this account.`)) return;
  const data = await run(button, () => api("/api/account/devices/unlink", { device: device.device_id }));
  if (data) {
    devices = data;
    renderDevices();
    say(`${device.name} was unlinked. It still knows the account key: if it was stolen, recover the account.`);
  }
}

async function approve(event) {
  event.preventDefault();
  const input = $("link-code");
  const data = await run($("link-approve"), () => api("/api/account/devices/approve", { code: input.value }));
  if (data) {
    input.value = "";
    devices = data;
    renderDevices();
    say(`${data.linked.name} (${data.linked.short_id}) is now a device of this account.`);
  }
}

async function rotate(event) {
  event.preventDefault();
  const input = $("rotate-passphrase");
  const data = await run($("rotate-submit"), () => api("/api/account/devices/rotate", { passphrase: input.value }));
  input.value = "";
  if (data) {
    devices = data;
    renderDevices();
    say(`This device has a new key (${data.fingerprint}); your contacts follow without a warning.`);
  }
}

async function takeWords() {
  const data = await run(null, () => api("/api/account/recovery-words", {}));
  if (!data?.words) return;
  text($("recovery-words-text"), data.words);
  show($("recovery-words"), true);
}

function onState(state) {
  const nowReady = state?.phase === "ready";
  show($("account-panel"), nowReady);
  if (nowReady && !ready) {
    takeWords();
    refresh();
  }
  ready = nowReady;
}

const pageOnState = link.hooks.onState;
link.hooks.onState = (state) => {
  pageOnState(state);
  onState(state);
};

$("link-form").addEventListener("submit", approve);
$("rotate-form").addEventListener("submit", rotate);
$("linked-refresh").addEventListener("click", () => refresh());
$("recovery-words-done").addEventListener("click", () => {
  text($("recovery-words-text"), "");
  show($("recovery-words"), false);
});
