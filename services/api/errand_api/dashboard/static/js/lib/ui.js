// Shared widgets: toasts, the confirmation dialog, status badges, progress bars, sign-in.

import { h, replaceChildren, setText } from "./dom.js";

/**
 * Show a toast in the live region. Toasts with an action stay until dismissed or
 * acted on (so keyboard users can reach the button); others leave after `timeoutMs`.
 * @returns {HTMLElement} the toast
 */
export function toast(message, { kind = "info", action = null, timeoutMs = 6000 } = {}) {
  const region = document.getElementById("toasts");
  const close = () => el.remove();
  const el = h(
    "div",
    { class: "toast", role: kind === "error" ? "alert" : "status", "data-kind": kind },
    h("span", { class: "msg" }, message),
    action &&
      h("button", {
        type: "button",
        class: "small",
        onclick: () => {
          close();
          action.onClick();
        },
      }, action.label),
    h("button", { type: "button", class: "close", "aria-label": "Dismiss notification", onclick: close }, "×"),
  );
  region.append(el);
  while (region.children.length > 5) region.firstElementChild.remove();
  if (!action && timeoutMs) setTimeout(close, timeoutMs);
  return el;
}

/**
 * Ask before a destructive action, in a modal dialog (focus moves to "Keep").
 * @returns {Promise<boolean>}
 */
export function confirmAction({ title, text, confirmLabel = "Confirm", danger = true }) {
  const dialog = document.getElementById("confirm-dialog");
  setText(dialog.querySelector("#confirm-title"), title);
  setText(dialog.querySelector("#confirm-text"), text);
  const yes = dialog.querySelector("#confirm-yes");
  setText(yes, confirmLabel);
  yes.className = danger ? "danger" : "primary";
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    dialog.querySelector("#confirm-no").focus();
  });
}

/** A status badge; update it with setStatus(). */
export function statusBadge(status) {
  const el = h("span", { class: "status" });
  setStatus(el, status);
  return el;
}

export function setStatus(el, status) {
  if (el.dataset.status !== status) el.dataset.status = status;
  setText(el, status);
}

/**
 * A labelled progress bar (role=progressbar) with a percentage beside it.
 * @returns {{el: HTMLElement, set: (percent: number, status?: string) => void}}
 */
export function progressBar(label, { large = false } = {}) {
  const fill = h("div", { class: "fill" });
  const bar = h("div", {
    class: "bar",
    role: "progressbar",
    "aria-label": label,
    "aria-valuemin": 0,
    "aria-valuemax": 100,
    "aria-valuenow": 0,
  }, fill);
  const pct = h("span", { class: "pct", "aria-hidden": "true" }, "0%");
  const el = h("div", { class: large ? "progress large" : "progress" }, bar, pct);
  const set = (percent, status) => {
    const value = Math.max(0, Math.min(100, Math.round(percent || 0)));
    if (bar.getAttribute("aria-valuenow") !== String(value)) {
      bar.setAttribute("aria-valuenow", String(value));
      fill.style.width = `${value}%`;
      setText(pct, `${value}%`);
    }
    if (status && el.dataset.status !== status) el.dataset.status = status;
  };
  return { el, set };
}

/**
 * Render a sign-in form into `main` and resolve with a key that `validate` accepts.
 * `validate(key)` returns null when the key is good, or a message to show.
 */
export function signIn(main, { title, intro, label, validate }) {
  return new Promise((resolve) => {
    const error = h("p", { class: "form-error", id: "signin-error", role: "alert" });
    const input = h("input", {
      id: "api-key",
      name: "api_key",
      type: "password",
      autocomplete: "off",
      spellcheck: "false",
      required: true,
      "aria-describedby": "signin-help signin-error",
    });
    const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
    const form = h(
      "form",
      {
        onsubmit: async (event) => {
          event.preventDefault();
          const key = input.value.trim();
          if (!key) return;
          submit.disabled = true;
          setText(error, "");
          const problem = await validate(key);
          submit.disabled = false;
          if (problem) {
            setText(error, problem);
            input.focus();
            return;
          }
          resolve(key);
        },
      },
      h("div", { class: "field" }, h("label", { for: "api-key" }, label), input),
      h("p", { class: "muted small", id: "signin-help" },
        "The key stays in this browser tab only (sessionStorage) and is sent to this server."),
      error,
      submit,
    );
    replaceChildren(
      main,
      h("section", { class: "panel signin", "aria-labelledby": "signin-title" },
        h("h1", { id: "signin-title" }, title),
        intro && h("p", { class: "muted" }, intro),
        form),
    );
    input.focus();
  });
}
