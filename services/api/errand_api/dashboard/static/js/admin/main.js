// The admin dashboard: sign in with an admin key, then hash routes:
//   #/            overview (queues, charts, DLQ size, pauses and breakers)
//   #/jobs?...    the job table (filters in the hash, so views can be linked)
//   #/jobs/<id>   one job
//   #/dlq         the dead-letter queue

import { ApiError, createApi } from "../lib/api.js";
import { readConfig, throttle } from "../lib/dom.js";
import { clearKey, getKey, getPref, setKey, setPref } from "../lib/session.js";
import { signIn, toast } from "../lib/ui.js";
import { renderDlq } from "./dlq.js";
import { renderJob } from "./job.js";
import { renderJobs } from "./jobs.js";
import { Live } from "./live.js";
import { renderOverview } from "./overview.js";

const config = readConfig();
const main = document.getElementById("main");
const header = document.getElementById("app-header");

function signOut() {
  clearKey();
  window.location.reload();
}

const api = createApi(getKey, () => {
  if (getKey()) {
    clearKey();
    toast("Your key is no longer valid; sign in again.", { kind: "error" });
    setTimeout(() => window.location.reload(), 1500);
  }
});

async function checkAdminKey(key) {
  const probe = createApi(() => key);
  try {
    await probe.get("/v1/admin/users");
    return null;
  } catch (err) {
    if (err instanceof ApiError && err.status === 403) return "This key works, but it is not an admin key.";
    if (err instanceof ApiError && err.status === 401) return "This key is not valid.";
    return err.message;
  }
}

/** Everything views share. */
function createContext(live) {
  return {
    api,
    live,
    config,
    main,
    grafanaUrl: () => getPref("grafanaUrl") || config.grafana_url || "",
    features: config.features || {},
    // Views call this after changing data, so the header's DLQ count follows.
    refreshDlqCount: throttle(() => refreshDlqCount(), 500),
  };
}

async function refreshDlqCount() {
  const badge = document.getElementById("dlq-badge");
  try {
    const stats = await api.get("/v1/stats");
    const dead = stats.data.reduce((sum, row) => sum + row.dead, 0);
    badge.textContent = String(dead);
    badge.classList.toggle("alert", dead > 0);
  } catch {
    // The overview shows API errors; the badge keeps its last value.
  }
}

function parseRoute() {
  const hash = window.location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = hash.split("?");
  const params = new URLSearchParams(query);
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "jobs" && parts[1]) return { name: "job", id: decodeURIComponent(parts[1]), params };
  if (parts[0] === "jobs") return { name: "jobs", params };
  if (parts[0] === "dlq") return { name: "dlq", params };
  return { name: "overview", params };
}

function startRouter(ctx) {
  let cleanup = null;
  const show = () => {
    if (cleanup) cleanup();
    cleanup = null;
    const route = parseRoute();
    for (const link of document.querySelectorAll("[data-nav]")) {
      const current = link.dataset.nav === route.name || (route.name === "job" && link.dataset.nav === "jobs");
      if (current) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    main.replaceChildren();
    const views = { overview: renderOverview, jobs: renderJobs, job: renderJob, dlq: renderDlq };
    cleanup = views[route.name](ctx, route) || null;
    window.scrollTo(0, 0);
  };
  window.addEventListener("hashchange", () => {
    show();
    main.focus({ preventScroll: true });
  });
  show();
}

function setUpSettings() {
  const dialog = document.getElementById("settings-dialog");
  const input = document.getElementById("grafana-url");
  document.getElementById("settings-button").addEventListener("click", () => {
    input.value = getPref("grafanaUrl") || config.grafana_url || "";
    dialog.showModal();
  });
  dialog.addEventListener("close", () => {
    if (dialog.returnValue === "save") {
      setPref("grafanaUrl", input.value.trim().replace(/\/+$/, ""));
      toast("Settings saved.", { kind: "success" });
    }
  });
}

// The skip link must not change the hash (the hash is the route).
document.querySelector(".skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});

async function start() {
  let key = getKey();
  let signedInNow = false;
  if (!key || (await checkAdminKey(key))) {
    clearKey();
    key = await signIn(main, {
      title: "Sign in to Errand admin",
      intro: "Use an admin API key (errand dev prints one; errand users create makes others).",
      label: "Admin API key",
      validate: checkAdminKey,
    });
    setKey(key);
    signedInNow = true;
  }
  header.hidden = false;
  // After signing in, the content takes the focus the form had.
  if (signedInNow) main.focus({ preventScroll: true });
  document.getElementById("signout-button").addEventListener("click", signOut);
  setUpSettings();
  const live = new Live(config.notifier_url || "", key, {
    onRefused: () => toast("The live connection was refused for this key.", { kind: "error" }),
  });
  const ctx = createContext(live);
  live.on("job_event", (event) => {
    if (["dead", "queued", "failed"].includes(event.type)) ctx.refreshDlqCount();
  });
  refreshDlqCount();
  startRouter(ctx);
}

start();
