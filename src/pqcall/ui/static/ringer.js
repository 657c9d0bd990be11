// pqcall web UI: the ring of an incoming call, made with an oscillator (no audio files).
//
// It plays on the speaker the phone uses for calls when the browser can name it
// (AudioContext.setSinkId, matched by the device's label), else on the
// browser's default output. Browsers let a page make sound only after a click
// or a key press on it: when the ring cannot start, `onBlocked(true)` is called
// so the page can ask for a click ("Click to enable ringing"); the next gesture
// calls `unlock()` and the ring is heard.

const RING_EVERY_MS = 3000;
const BLOCKED_AFTER_MS = 400; // a resume() that has not started the audio by then was refused

/** The browser's audio output whose label names the phone's speaker `wanted`, or null. */
async function findSink(wanted) {
  if (!wanted || wanted === "default" || !navigator.mediaDevices?.enumerateDevices) return null;
  const name = wanted.replace(/^pulse:/, "").toLowerCase();
  try {
    const outputs = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "audiooutput" && d.label);
    const found = outputs.find((d) => {
      const label = d.label.toLowerCase();
      return label === name || label.includes(name) || name.includes(label);
    });
    return found ? { id: found.deviceId, label: found.label } : null;
  } catch {
    return null;
  }
}

export function makeRinger({ onBlocked, onSink }) {
  return {
    context: null,
    timer: null,
    notification: null,
    blocked: false,
    wantedSink: null, // the phone's speaker, as the State names it
    sinkLabel: null, // the browser output the ring plays on (null: the default)
    audio() {
      const Context = window.AudioContext || window.webkitAudioContext;
      if (!this.context && Context) {
        this.context = new Context();
        this.context.addEventListener("statechange", () => this.setBlocked(this.timer !== null && !this.isRunning()));
        this.useSink(this.wantedSink, true);
      }
      if (this.context?.state === "suspended") this.context.resume().catch(() => {});
      return this.context;
    },
    isRunning() {
      return this.context?.state === "running";
    },
    /** The user clicked or pressed a key: the browser now lets the page play sound. */
    unlock() {
      this.audio();
      if (this.isRunning()) this.setBlocked(false);
    },
    setBlocked(blocked) {
      if (blocked === this.blocked) return;
      this.blocked = blocked;
      onBlocked(blocked);
    },
    /** Play the ring on the browser output named like the phone's speaker `wanted`, where supported. */
    async useSink(wanted, force = false) {
      if (wanted === this.wantedSink && !force) return;
      this.wantedSink = wanted;
      const context = this.context;
      if (!context || typeof context.setSinkId !== "function") return;
      const sink = await findSink(wanted);
      if (!sink && this.sinkLabel === null) return onSink(null); // already on the default output
      try {
        await context.setSinkId(sink ? sink.id : "");
        this.sinkLabel = sink ? sink.label : null;
      } catch {
        this.sinkLabel = null;
      }
      onSink(this.sinkLabel);
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
    get playing() {
      return this.timer !== null && this.isRunning();
    },
    start(call, onNotificationClick) {
      if (this.timer) return;
      this.ring();
      this.timer = setInterval(() => this.ring(), RING_EVERY_MS);
      setTimeout(() => this.setBlocked(this.timer !== null && !this.isRunning()), BLOCKED_AFTER_MS);
      const hidden = document.visibilityState !== "visible" || !document.hasFocus();
      if (hidden && "Notification" in window && Notification.permission === "granted") {
        try {
          this.notification = new Notification("Incoming call", { body: `${call.peer} is calling`, tag: call.call_id });
          this.notification.onclick = onNotificationClick;
        } catch {
          // some browsers allow notifications only from a service worker
        }
      }
    },
    stop() {
      clearInterval(this.timer);
      this.timer = null;
      this.setBlocked(false);
      this.notification?.close();
      this.notification = null;
    },
  };
}
