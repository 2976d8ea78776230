// The job table: filters and search (kept in the URL hash), cursor pagination, and
// rows that update in place from live events. New jobs are announced, not inserted,
// so the rows under the reader's eyes never move.

import {
  STATUSES, between, debounce, fmtDuration, fmtFullTime, fmtTime, h, replaceChildren, setText, shortId,
} from "../lib/dom.js";
import { progressBar, setStatus, statusBadge } from "../lib/ui.js";

const PRIORITIES = ["low", "normal", "high", "critical"];
const PAGE_SIZES = ["25", "50", "100"];

function select(id, label, options, value) {
  return h("div", { class: "field" },
    h("label", { for: id }, label),
    h("select", { id, name: id.replace("filter-", "") },
      options.map(([v, text]) => h("option", { value: v, selected: v === value }, text))));
}

function jobRow(job) {
  const badge = statusBadge(job.status);
  const progress = progressBar(`Progress of job ${shortId(job.id)}`);
  progress.set(job.progress, job.status);
  const step = h("td", { class: "hide-sm" }, job.step || "—");
  const duration = h("td", { class: "num hide-sm" }, fmtDuration(between(job.started_at, job.finished_at)));
  const tr = h("tr", { "data-job-id": job.id },
    h("td", { class: "id" },
      h("a", { href: `#/jobs/${job.id}`, class: "mono", title: job.id, "aria-label": `Job ${job.id}` }, shortId(job.id)),
      h("span", { class: "sub", "aria-hidden": "true" }, job.type)),
    h("td", { class: "hide-sm" }, job.type),
    h("td", { class: "col-status" }, badge),
    h("td", { class: "col-progress" }, progress.el),
    step,
    h("td", { class: "hide-sm" }, job.priority),
    h("td", { class: "col-time hide-sm", title: fmtFullTime(job.created_at) }, fmtTime(job.created_at)),
    duration,
  );
  return { tr, job, badge, progress, step, duration };
}

export function renderJobs(ctx, route) {
  const { api, live, main } = ctx;
  const params = route.params;
  const filters = {
    q: params.get("q") || "",
    status: params.get("status") || "",
    type: params.get("type") || "",
    priority: params.get("priority") || "",
    sort: params.get("sort") || "created_desc",
    limit: PAGE_SIZES.includes(params.get("limit")) ? params.get("limit") : "25",
  };
  const search = h("input", {
    id: "filter-q", name: "q", type: "search", value: filters.q, autocomplete: "off",
    placeholder: "Job id, type or error text",
  });
  const typeInput = h("input", { id: "filter-type", name: "type", value: filters.type, list: "job-types", autocomplete: "off" });
  const typeList = h("datalist", { id: "job-types" });
  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter jobs" },
    h("div", { class: "field wide" }, h("label", { for: "filter-q" }, "Search"), search),
    select("filter-status", "Status", [["", "Any status"], ...STATUSES.map((s) => [s, s])], filters.status),
    h("div", { class: "field" }, h("label", { for: "filter-type" }, "Job type"), typeInput, typeList),
    select("filter-priority", "Priority", [["", "Any priority"], ...PRIORITIES.map((p) => [p, p])], filters.priority),
    select("filter-sort", "Order", [["created_desc", "Newest first"], ["created_asc", "Oldest first"]], filters.sort),
    select("filter-limit", "Per page", PAGE_SIZES.map((n) => [n, n]), filters.limit),
  );
  const tbody = h("tbody", {});
  const status = h("p", { class: "muted small", role: "status", "aria-live": "polite", id: "jobs-status" });
  const newer = h("button", { type: "button", id: "page-newer" }, "← Previous page");
  const older = h("button", { type: "button", id: "page-older" }, "Next page →");
  const notice = h("div", { class: "notice-slot" });

  replaceChildren(main,
    h("h1", {}, "Jobs"),
    h("section", { class: "panel" }, form),
    notice,
    h("div", { class: "table-wrap" },
      h("table", { id: "jobs-table" },
        h("caption", { class: "visually-hidden" }, "Jobs matching the filters"),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Job"),
          h("th", { scope: "col", class: "hide-sm" }, "Type"),
          h("th", { scope: "col", class: "col-status" }, "Status"),
          h("th", { scope: "col", class: "col-progress" }, "Progress"),
          h("th", { scope: "col", class: "hide-sm" }, "Step"),
          h("th", { scope: "col", class: "hide-sm" }, "Priority"),
          h("th", { scope: "col", class: "col-time hide-sm" }, "Created"),
          h("th", { scope: "col", class: "num hide-sm" }, "Duration"))),
        tbody)),
    h("div", { class: "table-foot" }, status, h("div", { class: "button-row" }, newer, older)),
  );

  const rows = new Map();
  const cursors = [null];
  let page = 0;
  let nextCursor = null;
  let newJobs = 0;

  const showNotice = () => {
    if (!newJobs) {
      notice.replaceChildren();
      return;
    }
    const text = `${newJobs} new job${newJobs === 1 ? "" : "s"} since this page loaded`;
    const existing = notice.querySelector("button");
    if (existing) setText(existing, `${text}: show`);
    else notice.append(h("button", { type: "button", class: "link", id: "show-new", onclick: () => {
      cursors.length = 1;
      page = 0;
      load();
    } }, `${text}: show`));
  };

  async function load() {
    setText(status, "Loading…");
    try {
      const result = await api.get("/v1/jobs", {
        q: filters.q, status: filters.status, type: filters.type, priority: filters.priority,
        sort: filters.sort, limit: filters.limit, cursor: cursors[page],
      });
      rows.clear();
      newJobs = 0;
      showNotice();
      nextCursor = result.next_cursor;
      if (!result.data.length) {
        replaceChildren(tbody, h("tr", {}, h("td", { colspan: 8, class: "empty" }, "No jobs match.")));
      } else {
        replaceChildren(tbody, result.data.map((job) => {
          const row = jobRow(job);
          rows.set(job.id, row);
          return row.tr;
        }));
      }
      setText(status, `Page ${page + 1} · ${result.count} job${result.count === 1 ? "" : "s"}`);
      newer.disabled = page === 0;
      older.disabled = !nextCursor;
    } catch (err) {
      setText(status, `Could not load jobs: ${err.message}`);
    }
  }

  const applyFilters = () => {
    const next = new URLSearchParams();
    filters.q = search.value.trim();
    filters.type = typeInput.value.trim();
    for (const name of ["status", "priority", "sort", "limit"]) filters[name] = form.elements[name].value;
    for (const [name, value] of Object.entries(filters)) {
      if (value && !(name === "sort" && value === "created_desc") && !(name === "limit" && value === "25")) {
        next.set(name, value);
      }
    }
    // Keep the filters linkable without re-rendering the view (and losing focus).
    const hash = `#/jobs${next.toString() ? `?${next}` : ""}`;
    window.history.replaceState(null, "", hash);
    cursors.length = 1;
    page = 0;
    load();
  };
  form.addEventListener("change", applyFilters);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    applyFilters();
  });
  search.addEventListener("input", debounce(applyFilters, 300));
  newer.addEventListener("click", () => {
    page = Math.max(0, page - 1);
    load();
  });
  older.addEventListener("click", () => {
    if (!nextCursor) return;
    cursors[page + 1] = nextCursor;
    page += 1;
    load();
  });

  api.get("/v1/stats").then((stats) => {
    replaceChildren(typeList, [...new Set(stats.data.map((r) => r.type))].sort().map((t) => h("option", { value: t })));
  }).catch(() => {});

  const offEvent = live.on("job_event", (event) => {
    const row = rows.get(event.job_id);
    if (!row) {
      if (event.type === "queued" && event.seq === 1 && page === 0 && filters.sort === "created_desc") {
        newJobs += 1;
        showNotice();
      }
      return;
    }
    if (event.seq <= row.job.seq) return;
    row.job.seq = event.seq;
    row.job.status = event.status;
    setStatus(row.badge, event.status);
    row.progress.set(event.progress, event.status);
    setText(row.step, event.step || "—");
    if (event.type === "started") row.job.started_at = row.job.started_at || event.at;
    if (["completed", "failed", "dead", "cancelled"].includes(event.type)) row.job.finished_at = event.at;
    if (event.type === "queued") row.job.finished_at = null;
    setText(row.duration, fmtDuration(between(row.job.started_at, row.job.finished_at)));
    // Still shown, but dimmed, when it no longer matches the status filter.
    row.tr.classList.toggle("stale", Boolean(filters.status) && event.status !== filters.status);
  });
  load();
  return () => offEvent();
}
