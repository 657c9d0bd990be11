// pqcall web UI: the Files panel. Sending (a form, or a file dropped on the panel
// or on a contact), the transfers' progress, and the files waiting for us: each
// is received (downloaded, its signature checked, decrypted and saved by the
// phone) and then handed to the browser once.

import { $, h, replaceIfChanged, show } from "./dom.js";
import { api, downloadUrl } from "./link.js";
import { fmt } from "./words.js";

/** What a received file's checks found and where the phone saved it. */
function receivedText(r) {
  const trust = r.signer_verified ? "verified" : "key saved, not verified";
  return `Signature checked: signed by ${r.signed_by} (${trust}). Saved in ${r.saved_path}`;
}

/**
 * The panel over the page's State (`getState()`), the files received in this
 * page (`received`: file_id -> what the phone answered), and the page's `act`,
 * `render` and `showError`.
 */
export function makeFiles({ getState, received, act, render, showError }) {
  function renderFiles() {
    const transfers = getState().transfers ?? [];
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
    const inbox = getState().inbox ?? [];
    const rows = [...inbox];
    for (const [id, r] of received) if (!inbox.some((f) => f.file_id === id)) rows.push({ file_id: id, ...r });
    show($("inbox-empty"), rows.length === 0);
    replaceIfChanged($("inbox"), JSON.stringify([rows, [...received]]), () =>
      rows.map((f) => {
        const got = received.get(f.file_id);
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
    received.set(file.file_id, { sender: file.sender, size: file.size, created: file.created,
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

  /** The send form, the drop zone, and no navigation away on a stray drop. */
  function wire() {
    $("file-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const file = $("file-input").files[0];
      if (!file) return showError("Choose a file to send.");
      sendFile($("file-to").value.trim(), file, $("file-send")).then(() => ($("file-input").value = ""));
    });
    addDropTarget($("drop-zone"), () => $("file-to").value.trim());
    document.addEventListener("dragover", (e) => {
      if (e.defaultPrevented) return; // a drop target took it
      e.preventDefault();
      e.dataTransfer.dropEffect = "none";
    });
    document.addEventListener("drop", (e) => e.preventDefault());
  }

  return { render: renderFiles, addDropTarget, wire };
}
