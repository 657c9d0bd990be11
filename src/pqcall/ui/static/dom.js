// pqcall web UI: small DOM helpers (no state): find, set text, show, build, replace.

export const $ = (id) => document.getElementById(id);

export function text(el, value) {
  const v = String(value ?? "");
  if (el.textContent !== v) el.textContent = v;
}

export function show(el, visible) {
  if (el.hidden === visible) el.hidden = !visible;
}

export function h(tag, attrs = {}, ...children) {
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
export function replaceIfChanged(el, key, build) {
  if (el.dataset.key === key) return;
  el.dataset.key = key;
  const focused = el.contains(document.activeElement) ? document.activeElement.dataset.testid : null;
  el.replaceChildren(...build());
  if (focused) el.querySelector(`[data-testid="${CSS.escape(focused)}"]`)?.focus();
}

export function clear(el) {
  delete el.dataset.key;
  el.replaceChildren();
}
