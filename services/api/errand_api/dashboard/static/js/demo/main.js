// The end-user demo: a product page ("Acme Reports") that starts a multi-step job and
// follows it with the Errand JavaScript client (`watchJob` from "errand-client", mapped
// by the page's import map to clients/js/src/index.js). Its toasts come from the user
// room's `jobs_summary` (see summary.js): finished jobs batched, failures at once.

import { ApiError, createApi } from "../lib/api.js";
import { ACTIVE, h, prettyJson, readConfig, replaceChildren, setText, shortId } from "../lib/dom.js";
import { clearKey, getKey, setKey } from "../lib/session.js";
import { confirmAction, progressBar, signIn, statusBadge, setStatus, toast } from "../lib/ui.js";
import { followSummaries } from "./summary.js";

const config = readConfig();
const main = document.getElementById("main");
const header = document.getElementById("app-header");
const indicator = document.getElementById("running-indicator");
const STORE = "errand.demoJobs";
/** Reports shown at most (older ones are forgotten). */
const KEEP = 8;

const SIZES = {
  quick: { label: "Quick (about 4 s)", seconds: 1 },
  long: { label: "Long (about 20 s)", seconds: 5 },
};
const STEP_NAMES = ["fetch", "transform", "render", "publish"];

const api = createApi(getKey, () => {
  clearKey();
  window.location.reload();
});
const cards = new Map();
/** The user-room connection whose `jobs_summary` drives the toasts (set at start). */
let summaries = null;

function remembered() {
  try {
    return JSON.parse(window.sessionStorage.getItem(STORE) || "[]");
  } catch {
    return [];
  }
}

function remember(ids) {
  window.sessionStorage.setItem(STORE, JSON.stringify(ids.slice(0, KEEP)));
}

function updateIndicator() {
  const running = [...cards.values()].filter((c) => ACTIVE.has(c.status)).length;
  indicator.dataset.active = String(running > 0);
  setText(indicator, running ? `${running} job${running === 1 ? "" : "s"} running` : "No jobs running");
}

async function showResult(id) {
  const dialog = document.getElementById("result-dialog");
  const body = document.getElementById("result-body");
  replaceChildren(body, h("p", {}, "Loading…"));
  dialog.showModal();
  try {
    const job = await api.get(`/v1/jobs/${id}`);
    replaceChildren(body,
      h("p", {}, `Report ${shortId(job.id)}: `, statusBadge(job.status)),
      h("ol", {}, job.steps.map((s) => h("li", {}, `${s.name}: ${s.status}`))),
      h("h3", {}, "Result"),
      h("pre", { tabindex: 0 }, prettyJson(job.result)));
  } catch (err) {
    replaceChildren(body, h("p", { class: "form-error" }, err.message));
  }
}

function stepLabel(card, step) {
  const index = card.steps.indexOf(step);
  return index >= 0 ? `Step ${index + 1} of ${card.steps.length}: ${step}` : `Step: ${step}`;
}

function finish(card, status, error) {
  if (card.finished) return;
  card.finished = true;
  card.status = status;
  setStatus(card.badge, status);
  card.cancel.hidden = true;
  card.view.hidden = status !== "completed";
  updateIndicator();
  if (status === "completed") {
    card.bar.set(100, status);
    setText(card.stepText, "Done");
  } else if (status === "cancelled") {
    card.bar.set(card.progress, status);
    setText(card.stepText, "Cancelled");
  } else {
    card.bar.set(card.progress, status);
    const message = (error && (error.message || error.type)) || "it could not be generated";
    setText(card.stepText, `Failed: ${message}`);
  }
  // The toast comes from jobs_summary; only without that connection is it per job.
  if (card.announce && !(summaries && summaries.live)) toastJob(card.id, status, error);
}

function jobName(id) {
  return `${cards.has(id) ? "Report" : "Job"} ${shortId(id)}`;
}

function toastJob(id, status, error) {
  const name = jobName(id);
  if (status === "completed") {
    const action = cards.has(id) ? { label: "View", onClick: () => showResult(id) } : null;
    toast(cards.has(id) ? `${name} is ready.` : `${name} finished.`, { kind: "success", action });
  } else if (status === "cancelled") {
    toast(`${name} was cancelled.`, { kind: "warning" });
  } else {
    const message = (error && (error.message || error.type)) || status;
    toast(`${name} failed: ${message}`, { kind: "error", timeoutMs: 10000 });
  }
}

/** Toasts of one `jobs_summary`: each failure and cancellation, then the completions. */
function toastSummary(summary) {
  for (const job of summary.failed || []) toastJob(job.job_id, "failed", { message: job.message });
  for (const job of summary.cancelled || []) toastJob(job.job_id, "cancelled");
  const n = summary.completed || 0;
  if (n === 1 && summary.job_ids.length === 1) {
    toastJob(summary.job_ids[0], "completed");
  } else if (n > 1) {
    toast(`${n} jobs finished.`, { kind: "success" });
  }
}

function addCard(list, id, { steps, status = "queued", announce = true } = {}) {
  const bar = progressBar(`Progress of report ${shortId(id)}`, { large: true });
  const badge = statusBadge(status);
  const stepText = h("p", { class: "current-step", "aria-live": "polite" }, "Waiting to start…");
  const cancel = h("button", { type: "button", class: "small danger", "aria-label": `Cancel report ${shortId(id)}` }, "Cancel");
  const view = h("button", { type: "button", class: "small", hidden: true, "aria-label": `View report ${shortId(id)}`,
    onclick: () => showResult(id) }, "View");
  const el = h("li", { class: "job-card", "data-job-id": id },
    h("div", { class: "top" },
      h("span", { class: "title" }, `Report ${shortId(id)}`), badge, view, cancel),
    bar.el,
    stepText);
  const card = {
    id, el, bar, badge, stepText, cancel, view, status, progress: 0, steps: steps || STEP_NAMES, finished: false, announce,
  };
  cancel.addEventListener("click", async () => {
    const ok = await confirmAction({
      title: "Cancel this report?",
      text: "The job stops at its next step; the steps done so far are kept.",
      confirmLabel: "Cancel report",
    });
    if (!ok) return;
    cancel.disabled = true;
    try {
      await api.post(`/v1/jobs/${id}/cancel`);
    } catch (err) {
      cancel.disabled = false;
      toast(`Could not cancel: ${err.message}`, { kind: "error" });
    }
  });
  cards.set(id, card);
  list.prepend(el);
  while (list.children.length > KEEP) list.lastElementChild.remove();
  updateIndicator();
  return card;
}

function follow(watchJob, card, token) {
  const show = (view) => {
    card.status = view.status;
    card.progress = view.progress;
    setStatus(card.badge, view.status);
    card.bar.set(view.progress, view.status);
    if (view.step) setText(card.stepText, stepLabel(card, view.step));
    else if (view.status === "retrying") setText(card.stepText, "Retrying after an error…");
    updateIndicator();
  };
  watchJob(card.id, {
    token,
    baseUrl: window.location.origin,
    socketUrl: config.notifier_url || undefined,
    onSnapshot(job) {
      if (!card.finished) show(job);
    },
    onEvent(event) {
      if (!card.finished) show(event);
    },
    onDone(job) {
      if (typeof job.progress === "number") card.progress = job.progress;
      finish(card, job.status, job.error);
    },
    onError(error) {
      setText(card.stepText, `Live updates stopped: ${error.message}`);
      toast(`Lost track of report ${shortId(card.id)}: ${error.message}`, { kind: "error" });
    },
  });
}

async function checkKey(key) {
  try {
    await createApi(() => key).get("/v1/keys");
    return null;
  } catch (err) {
    return err instanceof ApiError && err.status === 401 ? "This key is not valid." : err.message;
  }
}

function renderPage(watchJob, token) {
  const size = h("select", { id: "report-size", name: "size" },
    Object.entries(SIZES).map(([value, s]) => h("option", { value }, s.label)));
  const fail = h("input", { type: "checkbox", id: "report-fail", name: "fail" });
  const submit = h("button", { type: "submit", class: "primary", id: "start-report" }, "Generate report");
  const list = h("ul", { class: "job-cards", id: "reports", "aria-label": "Your reports" });
  const form = h("form", { class: "demo-form", "aria-label": "New report" },
    h("div", { class: "field" }, h("label", { for: "report-size" }, "Size"), size),
    h("label", { for: "report-fail", class: "check" }, fail, "Fail at the render step"),
    submit);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    const seconds = SIZES[size.value].seconds;
    const steps = STEP_NAMES.map((name) => ({
      name, duration_s: seconds, ticks: 5, fail_permanently: fail.checked && name === "render",
    }));
    try {
      const job = await api.post("/v1/jobs", { type: "demo.pipeline", payload: { steps } });
      remember([job.id, ...remembered()]);
      follow(watchJob, addCard(list, job.id, { steps: STEP_NAMES }), token);
    } catch (err) {
      toast(`Could not start the report: ${err.message}`, { kind: "error" });
    } finally {
      submit.disabled = false;
    }
  });
  replaceChildren(main,
    h("div", { class: "demo-hero" },
      h("div", {},
        h("section", { class: "panel", "aria-labelledby": "new-title" },
          h("h1", { id: "new-title" }, "Generate a report"),
          h("p", { class: "muted" }, "Reports take a few steps. Keep working: you will be told when one is ready."),
          form),
        h("section", { class: "panel", "aria-labelledby": "reports-title" },
          h("h2", { id: "reports-title" }, "Your reports"), list)),
      h("section", { class: "panel", "aria-labelledby": "how-title" },
        h("h2", { id: "how-title" }, "How this page uses Errand"),
        h("pre", {}, [
          'import { watchJob } from "errand-client";',
          "",
          'const job = await post("/v1/jobs", {type: "demo.pipeline", payload});',
          "watchJob(job.id, {",
          "  token, baseUrl: location.origin,",
          "  onEvent: (e) => bar.set(e.progress, e.step),",
          "  onDone: (job) => card.finish(job.status),",
          "});",
          "",
          "// Toasts: the user room batches finished jobs (2 s)",
          'socket.on("jobs_summary", (s) => toast(`${s.completed} jobs finished`));',
        ].join("\n")))));
  return list;
}

async function start() {
  if (config.client_error) {
    header.hidden = true;
    replaceChildren(main, h("p", { class: "banner", role: "alert" }, config.client_error));
    console.error(config.client_error);
    return;
  }
  let key = getKey();
  if (!key || (await checkKey(key))) {
    clearKey();
    key = await signIn(main, {
      title: "Sign in to Acme Reports",
      intro: "This demo signs in with an Errand API key (errand dev prints one).",
      label: "API key",
      validate: checkKey,
    });
    setKey(key);
  }
  const { watchJob } = await import("errand-client");
  header.hidden = false;
  document.getElementById("signout-button").addEventListener("click", () => {
    clearKey();
    window.sessionStorage.removeItem(STORE);
    window.location.reload();
  });
  summaries = followSummaries(config.notifier_url, key, {
    onSummary: toastSummary,
    onState: (live) => {
      header.dataset.summaries = live ? "live" : "offline";
    },
  });
  const list = renderPage(watchJob, key);
  // Reports started earlier in this tab: show them again and follow the unfinished.
  const ids = remembered();
  const known = [];
  for (const id of ids.slice().reverse()) {
    // A listing rather than GET /v1/jobs/{id}: a purged job is simply not found.
    const found = await api.get("/v1/jobs", { q: id, limit: 5 }).catch(() => ({ data: [] }));
    const job = found.data.find((j) => j.id === id);
    if (!job) continue;
    known.unshift(id);
    const card = addCard(list, id, { steps: job.steps.map((s) => s.name), status: job.status, announce: false });
    card.progress = job.progress;
    card.bar.set(job.progress, job.status);
    if (ACTIVE.has(job.status)) {
      card.announce = true;
      follow(watchJob, card, key);
    } else {
      finish(card, job.status, job.error);
    }
  }
  remember(known);
}

start();
