// One job: live status and progress, the step timeline, attempts with errors and
// tracebacks, the audit history, payload and result, the trace link, and actions.

import {
  ACTIVE, between, fmtDuration, fmtFullTime, fmtTime, h, prettyJson, replaceChildren, setText, shortId, throttle,
} from "../lib/dom.js";
import { confirmAction, progressBar, setStatus, statusBadge, toast } from "../lib/ui.js";
import { renderAttempts, renderEvents, renderSteps, traceLink } from "./job_parts.js";

const RETRYABLE = new Set(["failed", "dead", "cancelled"]);
/** Events read per request of the audit history (the API allows up to 1,000). */
const EVENTS_PAGE = 500;
/** A failed history read is tried again after this, doubling up to the maximum. */
const EVENTS_RETRY_MS = 1000;
const EVENTS_RETRY_MAX_MS = 30_000;
const HISTORY_PROBLEM = "Could not read the history";
/** A history read not answered in this long fails (and is tried again). */
const EVENTS_TIMEOUT_MS = 15_000;
/** How often the page checks itself against the job (see the timer in renderJob). */
const SELF_CHECK_S = 5;

/** The job as listings show it (masked payload), or null. */
async function readJob(api, id) {
  const found = await api.get("/v1/jobs", { q: id, limit: 5 });
  return found.data.find((job) => job.id === id) || null;
}

function stepSummary(job) {
  const total = job.steps.length;
  const index = job.steps.findIndex((s) => s.name === job.step);
  const where = job.step ? `${job.step}${index >= 0 ? ` (${index + 1} of ${total})` : ""}` : "";
  if (job.status === "completed") return `All ${total} step${total === 1 ? "" : "s"} done`;
  if (ACTIVE.has(job.status)) return where ? `Current step: ${where}` : "Waiting for a worker";
  return where ? `Stopped in step ${where}` : "\u00a0";
}

export function renderJob(ctx, route) {
  const { api, live, main } = ctx;
  const id = route.id;
  const badge = statusBadge("queued");
  const progress = progressBar("Job progress", { large: true });
  const currentStep = h("p", { class: "muted small", id: "current-step" }, "\u00a0");
  const buttons = {
    cancel: h("button", { type: "button", class: "danger", id: "action-cancel", disabled: true }, "Cancel job"),
    retry: h("button", { type: "button", id: "action-retry", disabled: true }, "Retry"),
    retryFromStart: h("button", { type: "button", id: "action-retry-start", disabled: true }, "Retry from start"),
    requeue: h("button", { type: "button", id: "action-requeue", disabled: true }, "Requeue from DLQ"),
    purge: h("button", { type: "button", class: "danger", id: "action-purge", disabled: true }, "Purge"),
  };
  const facts = h("dl", { class: "facts" });
  const steps = h("ol", { class: "timeline", id: "steps", "aria-label": "Steps" });
  const payload = h("pre", { id: "payload", tabindex: 0, "aria-label": "Payload" }, "…");
  const result = h("pre", { id: "result", tabindex: 0, "aria-label": "Result" }, "…");
  const errorBox = h("div", { id: "job-error" });
  const attempts = h("div", { class: "table-wrap", id: "attempts" });
  const events = h("div", { class: "table-wrap events", id: "events", tabindex: 0, "aria-label": "Audit history" });
  const showTicks = h("input", { type: "checkbox", id: "show-ticks" });
  const problem = h("p", { class: "page-alert", role: "alert" });

  replaceChildren(main,
    h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")),
    problem,
    h("section", { class: "panel", "aria-labelledby": "job-title" },
      h("div", { class: "job-head" },
        h("h1", { id: "job-title" }, "Job ", h("span", { class: "mono" }, id)),
        badge),
      progress.el,
      currentStep,
      h("div", { class: "button-row", role: "group", "aria-label": "Actions" }, Object.values(buttons)),
    ),
    h("section", { class: "panel", "aria-labelledby": "facts-title" },
      h("h2", { id: "facts-title", class: "visually-hidden" }, "Details"), facts),
    h("div", { class: "grid-2" },
      h("section", { class: "panel", "aria-labelledby": "steps-title" }, h("h2", { id: "steps-title" }, "Steps"), steps),
      h("section", { class: "panel", "aria-labelledby": "data-title" },
        h("h2", { id: "data-title" }, "Payload and result"),
        errorBox,
        h("h3", {}, "Payload"), payload,
        h("h3", { class: "spaced-top" }, "Result"), result)),
    h("section", { class: "panel", "aria-labelledby": "attempts-title" },
      h("h2", { id: "attempts-title" }, "Attempts"), attempts),
    h("section", { class: "panel", "aria-labelledby": "events-title" },
      h("div", { class: "panel-head" },
        h("h2", { id: "events-title" }, "Audit history"),
        h("span", { class: "spacer" }),
        h("label", { for: "show-ticks", class: "small" }, showTicks, " Show progress ticks")),
      events),
  );

  let job = null;
  let history = [];
  let closed = false;

  const durationEl = h("span", { id: "job-duration" });
  const drawDuration = () => setText(durationEl, fmtDuration(between(job.started_at, job.finished_at)));
  const drawFacts = () => {
    drawDuration();
    const fact = (label, value) => h("div", {}, h("dt", {}, label), h("dd", {}, value));
    replaceChildren(facts,
      fact("Type", job.type),
      fact("Queue", job.queue),
      fact("Priority", job.priority),
      fact("Owner", h("span", { class: "mono", title: job.owner }, shortId(job.owner))),
      fact("Attempt", `${job.attempt} of ${job.max_attempts}`),
      fact("Created", h("span", { title: fmtFullTime(job.created_at) }, fmtTime(job.created_at))),
      fact("Started", h("span", { title: fmtFullTime(job.started_at) }, fmtTime(job.started_at))),
      fact("Finished", h("span", { title: fmtFullTime(job.finished_at) }, fmtTime(job.finished_at))),
      fact("Duration", durationEl),
      fact("Trace", traceLink(job, ctx.grafanaUrl())),
    );
  };

  const drawHead = () => {
    setStatus(badge, job.status);
    progress.set(job.progress, job.status);
    setText(currentStep, stepSummary(job));
    buttons.cancel.disabled = !ACTIVE.has(job.status);
    buttons.retry.disabled = !RETRYABLE.has(job.status);
    buttons.retryFromStart.disabled = !RETRYABLE.has(job.status);
    buttons.requeue.disabled = job.status !== "dead";
    buttons.purge.disabled = job.status !== "dead";
  };

  const drawAll = () => {
    drawHead();
    drawFacts();
    renderSteps(steps, job);
    setText(payload, prettyJson(job.payload));
    setText(result, job.result === null || job.result === undefined ? "No result yet." : prettyJson(job.result));
    replaceChildren(errorBox, job.error
      ? [h("h3", {}, "Error"), h("pre", { class: "attempt-error", id: "error" }, prettyJson(job.error))]
      : []);
  };

  const refreshJob = throttle(async () => {
    try {
      const fresh = await readJob(api, id);
      if (closed || !fresh) return;
      if (!job || fresh.seq >= job.seq) {
        job = fresh;
        drawAll();
      }
      // A read can overtake the live events it includes (they are then skipped as
      // old): the history catches up from the job's own seq.
      if (historyBehind()) refreshEvents();
    } catch (err) {
      setText(problem, `Could not read the job: ${err.message}`);
    }
  }, 300);

  const refreshAttempts = throttle(async () => {
    try {
      renderAttempts(attempts, await api.get(`/v1/jobs/${id}/attempts`));
    } catch (err) {
      setText(problem, `Could not read the attempts: ${err.message}`);
    }
  }, 500);

  // The highest seq of the progress ticks that came live right after what the history
  // holds: folded, they need no read.
  let foldedTo = 0;
  /** The seq of the last event the history has read (0: none yet). */
  const lastRead = () => (history.length ? history[history.length - 1].seq : 0);
  const covered = () => Math.max(lastRead(), foldedTo);
  /** Whether the job has events the history has not read (folded live ticks aside). */
  const historyBehind = () => Boolean(job) && job.seq > covered();

  // One read at a time, each after the last seq seen, page by page: no gaps, no
  // repeats. A failed read (or one the API never answers: the client gives up on it)
  // is tried again, later each time, so one bad read cannot leave the history stale.
  let reading = Promise.resolve();
  let retryDelay = EVENTS_RETRY_MS;
  let retryTimer = null;
  const readEvents = async () => {
    try {
      for (;;) {
        const after = lastRead();
        const more = await api.get(
          `/v1/jobs/${id}/events`, { after_seq: after, limit: EVENTS_PAGE }, { timeoutMs: EVENTS_TIMEOUT_MS });
        if (closed) return;
        history = history.concat(more.filter((e) => e.seq > after));
        renderEvents(events, history, showTicks.checked);
        if (more.length < EVENTS_PAGE) break;
      }
      retryDelay = EVENTS_RETRY_MS;
      if (problem.textContent.startsWith(HISTORY_PROBLEM)) setText(problem, "");
    } catch (err) {
      if (closed) return;
      setText(problem, `${HISTORY_PROBLEM}: ${err.message}`);
      clearTimeout(retryTimer);
      retryTimer = setTimeout(() => {
        retryTimer = null;
        refreshEvents();
      }, retryDelay);
      retryDelay = Math.min(retryDelay * 2, EVENTS_RETRY_MAX_MS);
    }
  };
  // At most one read waits behind the one under way (it reads everything new).
  let queued = false;
  const refreshEvents = throttle(() => {
    if (queued) return;
    queued = true;
    reading = reading.then(() => {
      queued = false;
      return readEvents();
    });
  }, 400);
  showTicks.addEventListener("change", () => {
    renderEvents(events, history, showTicks.checked);
    refreshEvents();
  });

  const onEvent = (event) => {
    if (event.job_id !== id || !job || event.seq <= job.seq) return;
    if (event.type === "progress") {
      // Ticks are frequent: update in place.
      if (event.seq === covered() + 1) foldedTo = event.seq;
      job.seq = event.seq;
      job.progress = event.progress;
      job.step = event.step;
      drawHead();
      const stepItem = steps.querySelector(`li[data-step="${CSS.escape(event.step || "")}"]`);
      if (stepItem && event.data && typeof event.data.step_progress === "number") {
        stepItem.stepProgress.set(event.data.step_progress, "running");
      }
      // Folded ticks need no new read; shown ones do.
      if (showTicks.checked) refreshEvents();
    } else {
      refreshJob();
      refreshAttempts();
      refreshEvents();
    }
  };

  const act = async (name, run, message) => {
    for (const b of Object.values(buttons)) b.disabled = true;
    try {
      await run();
      toast(message, { kind: "success" });
      ctx.refreshDlqCount();
    } catch (err) {
      toast(`Could not ${name}: ${err.message}`, { kind: "error" });
    }
    refreshJob();
  };
  buttons.cancel.addEventListener("click", async () => {
    const ok = await confirmAction({
      title: "Cancel this job?",
      text: `Job ${shortId(id)} (${job.type}) stops at its next step boundary or progress report.`,
      confirmLabel: "Cancel job",
    });
    if (ok) act("cancel", () => api.post(`/v1/jobs/${id}/cancel`), "Cancellation requested.");
  });
  buttons.retry.addEventListener("click", () =>
    act("retry", () => api.post(`/v1/jobs/${id}/retry`, {}), "Retrying from the unfinished step."));
  buttons.retryFromStart.addEventListener("click", async () => {
    const ok = await confirmAction({
      title: "Run every step again?",
      text: "Steps that already completed run again; their side effects may repeat.",
      confirmLabel: "Retry from start",
    });
    if (ok) act("retry", () => api.post(`/v1/jobs/${id}/retry`, { from_start: true }), "Retrying from the first step.");
  });
  buttons.requeue.addEventListener("click", () =>
    act("requeue", () => api.post("/v1/admin/dlq/requeue", { job_ids: [id] }), "Requeued from the dead-letter queue."));
  buttons.purge.addEventListener("click", async () => {
    const ok = await confirmAction({
      title: "Purge this dead job?",
      text: "The job and its history are deleted. This cannot be undone.",
      confirmLabel: "Purge",
    });
    if (!ok) return;
    try {
      await api.post("/v1/admin/dlq/purge", { job_ids: [id] });
      toast("Purged.", { kind: "success" });
      ctx.refreshDlqCount();
      window.location.hash = "#/dlq";
    } catch (err) {
      toast(`Could not purge: ${err.message}`, { kind: "error" });
    }
  });

  const subscribe = async () => {
    const ack = await live.subscribe(id, job ? job.seq : null);
    if (closed || !ack || !ack.ok) return;
    if (!job || ack.job.seq >= job.seq) {
      job = ack.job;
      drawAll();
      // The ack's job already holds what its missed events did (onEvent skips them
      // as old now): the attempts and the history are read for them here.
      if (historyBehind()) {
        refreshAttempts();
        refreshEvents();
      }
    }
    for (const event of ack.missed || []) onEvent(event);
  };

  (async () => {
    try {
      job = await readJob(api, id);
    } catch (err) {
      setText(problem, `Could not read the job: ${err.message}`);
      return;
    }
    if (closed) return;
    if (!job) {
      replaceChildren(main, h("h1", {}, "Job not found"),
        h("p", {}, `There is no job ${id}.`), h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")));
      return;
    }
    drawAll();
    refreshAttempts();
    refreshEvents();
    subscribe();
  })();

  const offEvent = live.on("job_event", onEvent);
  const offConnect = live.on("connect", subscribe);
  // The duration of a running job keeps growing. And every few seconds the page checks
  // itself, so whatever path a change took (a lost frame, a subscription that timed
  // out) it shows up: an active job is read again (which reads the history when the
  // job is ahead of it); a finished one's history catches up if it is behind (unless
  // a failed read's retry is already set).
  let ticks = 0;
  const timer = setInterval(() => {
    if (job && job.status === "running") drawDuration();
    ticks += 1;
    if (ticks % SELF_CHECK_S !== 0 || !job) return;
    if (ACTIVE.has(job.status)) refreshJob();
    else if (historyBehind() && retryTimer === null) refreshEvents();
  }, 1000);
  return () => {
    closed = true;
    offEvent();
    offConnect();
    clearInterval(timer);
    clearTimeout(retryTimer);
    live.unsubscribe(id);
  };
}
