// Parts of the job page: the step timeline, the attempts, the audit history, the trace.

import { between, fmtDuration, fmtFullTime, fmtTime, h, replaceChildren } from "../lib/dom.js";
import { progressBar, statusBadge } from "../lib/ui.js";

function errorText(error) {
  if (!error) return "";
  if (typeof error === "string") return error;
  const kind = error.type || error.error_type || "";
  const message = error.message || error.error_message || error.detail || "";
  return [kind, message].filter(Boolean).join(": ") || JSON.stringify(error);
}

/** The step timeline: one item per step, with its own progress bar. */
export function renderSteps(list, job) {
  if (!job.steps.length) {
    replaceChildren(list, h("li", {}, h("span", {}), h("span", { class: "muted" }, "No steps planned yet."), h("span", {})));
    return;
  }
  replaceChildren(list, job.steps.map((step, index) => {
    const bar = progressBar(`Progress of step ${step.name}`);
    bar.set(step.progress, step.status);
    const duration = between(step.started_at, step.finished_at);
    const item = h("li", { "data-step": step.name, "data-status": step.status },
      h("span", { class: "dot", "aria-hidden": "true" }),
      h("div", {},
        h("span", { class: "step-name" }, `${index + 1}. ${step.name}`), " ",
        statusBadge(step.status)),
      bar.el,
      h("div", { class: "step-meta" },
        step.started_at
          ? `${fmtTime(step.started_at)} · ${fmtDuration(duration)} · ${step.attempts} attempt${step.attempts === 1 ? "" : "s"}`
          : "Not started"),
      step.error && h("div", { class: "step-error" }, errorText(step.error)),
    );
    item.stepProgress = bar;
    return item;
  }));
}

/** Every attempt at every step, with its error and (folded) traceback. */
export function renderAttempts(container, attempts) {
  if (!attempts.length) {
    replaceChildren(container, h("p", { class: "muted empty-note" }, "No attempts yet."));
    return;
  }
  replaceChildren(container, h("table", { id: "attempts-table" },
    h("caption", { class: "visually-hidden" }, "Attempts"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col", class: "num hide-sm" }, "Run"),
      h("th", { scope: "col" }, "Step"),
      h("th", { scope: "col", class: "num" }, "Attempt"),
      h("th", { scope: "col", class: "col-status" }, "Outcome"),
      h("th", { scope: "col", class: "num hide-sm" }, "Duration"),
      h("th", { scope: "col", class: "hide-sm" }, "Worker"),
      h("th", { scope: "col" }, "Error"))),
    h("tbody", {}, attempts.map((a) => h("tr", {},
      h("td", { class: "num hide-sm" }, String(a.run)),
      h("td", {}, a.step ?? String(a.step_index)),
      h("td", { class: "num" }, String(a.attempt)),
      h("td", { class: "col-status" }, statusBadge(a.outcome || "running")),
      h("td", { class: "num hide-sm" }, fmtDuration(a.duration_ms ?? between(a.started_at, a.finished_at))),
      h("td", { class: "hide-sm mono" }, a.worker),
      h("td", {},
        a.error_type || a.error_message
          ? h("div", { class: "attempt-error" }, [a.error_type, a.error_message].filter(Boolean).join(": "))
          : "—",
        a.traceback && h("details", {}, h("summary", {}, "Traceback"), h("pre", { tabindex: 0 }, a.traceback))),
    )))));
}

/** The audit history (progress ticks folded unless asked for). */
export function renderEvents(container, events, showTicks) {
  const shown = showTicks ? events : events.filter((e) => e.type !== "progress");
  const hidden = events.length - shown.length;
  // The box scrolls; it follows the newest event unless the reader scrolled up.
  const first = !container.firstChild;
  const atBottom = container.scrollTop + container.clientHeight >= container.scrollHeight - 8;
  replaceChildren(container, h("table", { id: "events-table" },
    h("caption", { class: "visually-hidden" }, "Audit history"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col", class: "num" }, "Seq"),
      h("th", { scope: "col", class: "col-time" }, "At"),
      h("th", { scope: "col" }, "Event"),
      h("th", { scope: "col", class: "hide-sm" }, "Status"),
      h("th", { scope: "col" }, "Detail"),
      h("th", { scope: "col", class: "hide-sm" }, "By"))),
    h("tbody", {},
      shown.map((e) => h("tr", { "data-seq": e.seq },
        h("td", { class: "num" }, String(e.seq)),
        h("td", { class: "col-time", title: fmtFullTime(e.at) }, fmtTime(e.at)),
        h("td", {}, e.type),
        h("td", { class: "hide-sm" }, e.from_status ? `${e.from_status} → ${e.status}` : e.status),
        h("td", {}, [e.step, e.message].filter(Boolean).join(" · ") || "—"),
        h("td", { class: "hide-sm mono" }, e.actor))),
      hidden > 0 && h("tr", {}, h("td", { colspan: 6, class: "empty" },
        `${hidden} progress tick${hidden === 1 ? "" : "s"} folded.`)))));
  if (first || atBottom) container.scrollTop = container.scrollHeight;
}

/** A link to the job's trace in Grafana (Tempo), or why there is none. */
export function traceLink(job, grafanaUrl) {
  if (!job.trace_id) return h("span", { class: "muted" }, "Not traced (tracing is off)");
  if (!grafanaUrl) {
    return h("span", {}, h("span", { class: "mono" }, job.trace_id.slice(0, 16)), " ",
      h("span", { class: "muted small" }, "(set the Grafana URL in Settings to link it)"));
  }
  const from = Date.parse(job.created_at) - 5 * 60_000;
  const to = (job.finished_at ? Date.parse(job.finished_at) : Date.now()) + 5 * 60_000;
  const panes = {
    trace: {
      datasource: "tempo",
      queries: [{ refId: "A", datasource: { type: "tempo", uid: "tempo" }, queryType: "traceql", query: job.trace_id }],
      range: { from: String(from), to: String(to) },
    },
  };
  const url = `${grafanaUrl}/explore?schemaVersion=1&orgId=1&panes=${encodeURIComponent(JSON.stringify(panes))}`;
  return h("a", { href: url, target: "_blank", rel: "noopener noreferrer", id: "trace-link" }, "Open trace in Grafana ↗");
}
