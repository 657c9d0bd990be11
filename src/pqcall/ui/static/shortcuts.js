// pqcall web UI: single-key shortcuts for the call (A accept, D decline, M mute,
// H hang up, ? lists them). A key typed into a field, or pressed with Ctrl, Alt
// or Meta, is never taken; nor is any key while a modal dialog (the key-change
// warning) asks for a decision. A key presses its button, and only when that
// button is shown and enabled: one code path for the mouse, Enter and the key.

import { $, h, replaceIfChanged } from "./dom.js";
import { SHORTCUTS } from "./words.js";

const TYPING = new Set(["INPUT", "TEXTAREA", "SELECT"]);

function isTyping(target) {
  return Boolean(target && (TYPING.has(target.tagName) || target.isContentEditable));
}

/**
 * Listen for the shortcuts on `document`. `actions` maps a key ("a", "d", "m",
 * "h", "?") to a function; a function that returns false did nothing (the key
 * then keeps its usual meaning).
 */
function listenForShortcuts(actions, isModalOpen) {
  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.repeat || event.ctrlKey || event.altKey || event.metaKey) return;
    if (isTyping(event.target) || isModalOpen()) return;
    const action = actions[event.key.toLowerCase()];
    if (action && action() !== false) event.preventDefault();
  });
}

/** Wire A, D, M, H and ? (the list in the "shortcuts" dialog); `isReady()`: the phone is unlocked. */
export function wireShortcuts(isReady) {
  replaceIfChanged($("shortcuts-list"), "list", () =>
    SHORTCUTS.flatMap(([key, what]) => [h("dt", {}, h("kbd", {}, key)), h("dd", {}, what)]));
  const press = (id) => () => {
    const button = $(id);
    if (!isReady() || button.disabled || button.closest("[hidden]")) return false;
    button.click();
    return true;
  };
  const dialog = $("shortcuts");
  const toggleList = () => (dialog.open ? dialog.close() : dialog.showModal());
  listenForShortcuts({
    a: () => press("accept")() || press("group-accept")(),
    d: () => press("reject")() || press("group-decline")(),
    m: () => press("mute")() || press("group-mute")(),
    h: () => press("hangup")() || press("cancel")() || press("group-leave")(),
    "?": toggleList,
  }, () => $("key-warning").open || dialog.open);
  $("shortcuts-open").addEventListener("click", toggleList);
  $("shortcuts-close").addEventListener("click", () => dialog.close());
}
