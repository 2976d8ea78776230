// Small DOM and formatting helpers. Text always goes in as text nodes (never HTML), so
// payloads, errors and job types from users cannot inject markup.

/**
 * Create an element: h("button", {class: "primary", onclick: fn}, "Save").
 * Attributes starting with "on" become listeners; `null`/`false` attributes are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function replaceChildren(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Set text only when it changed (avoids needless reflow and screen-reader chatter). */
export function setText(el, text) {
  const value = String(text ?? "");
  if (el.textContent !== value) el.textContent = value;
}

const number = new Intl.NumberFormat(undefined);

/** 12345 -> "12,345"; null -> "—". */
export function fmtNumber(value) {
  return value === null || value === undefined ? "—" : number.format(value);
}

/** Milliseconds as "850 ms", "12.3 s", "4 min 05 s", "2 h 03 min". */
export function fmtDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

/** Duration between two ISO times (to now when the end is missing). */
export function between(startIso, endIso) {
  if (!startIso) return null;
  const end = endIso ? Date.parse(endIso) : Date.now();
  return Math.max(0, end - Date.parse(startIso));
}

const timeFormat = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit", minute: "2-digit", second: "2-digit",
});
const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
});

/** An ISO time as local "14:03:07" (today) or a full date and time. */
export function fmtTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  const today = new Date().toDateString() === date.toDateString();
  return (today ? timeFormat : dateTimeFormat).format(date);
}

/** A full local date and time, for title tooltips. */
export function fmtFullTime(iso) {
  return iso ? dateTimeFormat.format(new Date(iso)) : "";
}

/** "0f8fad5b-d9cb-…" -> "0f8fad5b". */
export function shortId(id) {
  return String(id).slice(0, 8);
}

/** Pretty JSON for display. */
export function prettyJson(value) {
  return JSON.stringify(value, null, 2);
}

/**
 * Call `fn` at once, then at most once per `ms`: calls in between collapse into one
 * more call (with the latest arguments) when the interval ends.
 */
export function throttle(fn, ms) {
  let timer = null;
  let pending = null;
  const tick = () => {
    if (!pending) {
      timer = null;
      return;
    }
    const call = pending;
    pending = null;
    fn(...call);
    timer = setTimeout(tick, ms);
  };
  return (...args) => {
    if (timer) {
      pending = args;
      return;
    }
    fn(...args);
    timer = setTimeout(tick, ms);
  };
}

/** Call `fn` once `ms` after the last call. */
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/** Read the page configuration the server put in <script id="errand-config">. */
export function readConfig() {
  const el = document.getElementById("errand-config");
  try {
    return JSON.parse(el ? el.textContent : "{}") || {};
  } catch {
    return {};
  }
}

/** Statuses after which a job no longer changes (until a retry). */
export const FINAL = new Set(["completed", "failed", "dead", "cancelled"]);
/** Statuses of a job that has not finished. */
export const ACTIVE = new Set(["scheduled", "blocked", "queued", "running", "retrying"]);
/** Every job status, in lifecycle order. */
export const STATUSES = [
  "scheduled", "blocked", "queued", "running", "retrying",
  "completed", "failed", "dead", "cancelled",
];
