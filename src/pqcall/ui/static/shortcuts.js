// pqcall web UI: single-key shortcuts for the call (A accept, D decline, M mute,
// H hang up, ? lists them). A key typed into a field, or pressed with Ctrl, Alt
// or Meta, is never taken; nor is any key while a modal dialog (the key-change
// warning) asks for a decision.

const TYPING = new Set(["INPUT", "TEXTAREA", "SELECT"]);

function isTyping(target) {
  return Boolean(target && (TYPING.has(target.tagName) || target.isContentEditable));
}

/**
 * Listen for the shortcuts on `document`. `actions` maps a key ("a", "d", "m",
 * "h", "?") to a function; a function that returns false did nothing (the key
 * then keeps its usual meaning).
 */
export function listenForShortcuts(actions, isModalOpen) {
  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.repeat || event.ctrlKey || event.altKey || event.metaKey) return;
    if (isTyping(event.target) || isModalOpen()) return;
    const action = actions[event.key.toLowerCase()];
    if (action && action() !== false) event.preventDefault();
  });
}
