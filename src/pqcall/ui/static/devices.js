// pqcall web UI: the Audio devices panel: the phone's microphones and speakers
// (PortAudio names, pulse:NAME, files), its processing switches, and where the
// ring of an incoming call plays (the page's own sound, see ringer.js).

import { $, h, replaceIfChanged, text } from "./dom.js";

function deviceValue(device) {
  return typeof device === "string" ? device : String(device.name ?? device.index);
}

/** Show `devices` (State.devices); `ringSink` is the browser output the ring plays on, or null. */
export function renderDevices(devices, ringSink) {
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
  const disguise = $("voice-disguise");
  const presets = [["off", "Off"], ...(devices?.voice_disguise_presets ?? []).map((p) => [p.name, `${p.name}: ${p.description}`])];
  replaceIfChanged(disguise, JSON.stringify(presets), () => presets.map(([v, label]) => h("option", { value: v }, label)));
  const chosenDisguise = devices?.voice_disguise ?? "off";
  if (disguise.value !== chosenDisguise && document.activeElement !== disguise) disguise.value = chosenDisguise;
  text($("ring-output"), ringSink ? `The ring plays on ${ringSink}, the speaker chosen above.`
    : "The ring plays on the browser's default speaker (the browser does not name the one chosen above).");
}
