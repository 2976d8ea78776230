// The dead-letter queue: dead jobs by type, error text and age; requeue or purge one,
// the selected ones, or all that match. Purges and bulk actions ask first.

import { debounce, fmtFullTime, fmtTime, h, replaceChildren, setText, shortId } from "../lib/dom.js";
import { confirmAction, setStatus, statusBadge, toast } from "../lib/ui.js";

const PAGE = 100;
const MAX = 1000;

function errorText(error) {
  if (!error) return "—";
  return [error.type, error.message].filter(Boolean).join(": ") || JSON.stringify(error);
}

export function renderDlq(ctx) {
  const { api, live, main } = ctx;
  const field = (id, label, attrs) => h("div", { class: "field" }, h("label", { for: id }, label), h("input", { id, ...attrs }));
  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter dead jobs" },
    field("dlq-type", "Job type", { name: "type", autocomplete: "off" }),
    h("div", { class: "field wide" }, h("label", { for: "dlq-error" }, "Error contains"),
      h("input", { id: "dlq-error", name: "error", type: "search", autocomplete: "off" })),
    field("dlq-min-age", "Dead for at least (min)", { name: "min_age", type: "number", min: 0, step: "any", inputmode: "decimal" }),
    field("dlq-max-age", "Dead for at most (min)", { name: "max_age", type: "number", min: 0, step: "any", inputmode: "decimal" }),
  );
  const selectAll = h("input", { type: "checkbox", id: "dlq-select-all", "aria-label": "Select every dead job shown" });
  const tbody = h("tbody", {});
  const status = h("p", { class: "muted small", role: "status", "aria-live": "polite", id: "dlq-status" });
  const notice = h("div", { class: "notice-slot" });
  const more = h("button", { type: "button", id: "dlq-more", hidden: true }, "Show more");
  const buttons = {
    requeueSelected: h("button", { type: "button", class: "primary", id: "requeue-selected", disabled: true }, "Requeue selected"),
    purgeSelected: h("button", { type: "button", class: "danger", id: "purge-selected", disabled: true }, "Purge selected"),
    requeueAll: h("button", { type: "button", id: "requeue-all" }, "Requeue all matching"),
    purgeAll: h("button", { type: "button", class: "danger", id: "purge-all" }, "Purge all matching"),
  };

  replaceChildren(main,
    h("h1", {}, "Dead letters"),
    h("p", { class: "muted" }, "Jobs whose attempts ran out. Requeue runs them again with a fresh attempt budget."),
    h("section", { class: "panel" }, form),
    h("div", { class: "button-row spaced", role: "group", "aria-label": "Dead-letter actions" },
      Object.values(buttons)),
    notice,
    h("div", { class: "table-wrap" },
      h("table", { id: "dlq-table" },
        h("caption", { class: "visually-hidden" }, "Dead jobs, oldest first"),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col", class: "col-check" }, selectAll),
          h("th", { scope: "col" }, "Job"),
          h("th", { scope: "col" }, "Type"),
          h("th", { scope: "col", class: "col-status" }, "Status"),
          h("th", { scope: "col" }, "Error"),
          h("th", { scope: "col", class: "num hide-sm" }, "Attempts"),
          h("th", { scope: "col", class: "col-time hide-sm" }, "Died"),
          h("th", { scope: "col" }, "Actions"))),
        tbody)),
    h("div", { class: "table-foot" }, status, more),
  );

  const selected = new Set();
  const rows = new Map();
  let limit = PAGE;
  let newDead = 0;

  const filters = () => {
    const minutes = (name) => {
      const value = form.elements[name].value;
      return value === "" ? undefined : Math.max(0, Number(value) * 60);
    };
    return {
      type: form.elements.type.value.trim() || undefined,
      error: form.elements.error.value.trim() || undefined,
      min_age_s: minutes("min_age"),
      max_age_s: minutes("max_age"),
    };
  };

  const syncSelection = () => {
    for (const id of [...selected]) if (!rows.has(id) || rows.get(id).done) selected.delete(id);
    const count = selected.size;
    setText(buttons.requeueSelected, count ? `Requeue selected (${count})` : "Requeue selected");
    setText(buttons.purgeSelected, count ? `Purge selected (${count})` : "Purge selected");
    buttons.requeueSelected.disabled = !count;
    buttons.purgeSelected.disabled = !count;
    const open = [...rows.values()].filter((r) => !r.done);
    selectAll.checked = open.length > 0 && open.every((r) => selected.has(r.job.id));
    selectAll.indeterminate = count > 0 && !selectAll.checked;
  };

  const markDone = (id, label) => {
    const row = rows.get(id);
    if (!row || row.done) return;
    row.done = true;
    row.requeued = label !== "purged";
    row.tr.classList.add("stale");
    setStatus(row.badge, label);
    row.check.checked = false;
    row.check.disabled = true;
    for (const b of row.actions) b.disabled = true;
    selected.delete(id);
    syncSelection();
  };

  const act = async (action, body, { confirm, done }) => {
    if (confirm && !(await confirmAction(confirm))) return;
    try {
      const result = await api.post(`/v1/admin/dlq/${action}`, body);
      for (const id of result.job_ids) markDone(id, action === "purge" ? "purged" : "queued");
      toast(`${action === "purge" ? "Purged" : "Requeued"} ${result.count} job${result.count === 1 ? "" : "s"}.`, {
        kind: "success",
      });
      ctx.refreshDlqCount();
      if (done) done(result);
    } catch (err) {
      toast(`Could not ${action}: ${err.message}`, { kind: "error" });
    }
  };

  const row = (job) => {
    const check = h("input", { type: "checkbox", "aria-label": `Select job ${job.id}` });
    check.addEventListener("change", () => {
      if (check.checked) selected.add(job.id);
      else selected.delete(job.id);
      syncSelection();
    });
    const requeue = h("button", { type: "button", class: "small", "aria-label": `Requeue job ${job.id}`,
      onclick: () => act("requeue", { job_ids: [job.id] }, {}) }, "Requeue");
    const purge = h("button", { type: "button", class: "small danger", "aria-label": `Purge job ${job.id}`,
      onclick: () => act("purge", { job_ids: [job.id] }, {
        confirm: { title: "Purge this dead job?", text: `Job ${shortId(job.id)} (${job.type}) and its history are deleted. This cannot be undone.`, confirmLabel: "Purge" },
      }) }, "Purge");
    const badge = statusBadge(job.status);
    const tr = h("tr", { "data-job-id": job.id },
      h("td", { class: "col-check" }, check),
      h("td", { class: "id mono" }, h("a", { href: `#/jobs/${job.id}`, title: job.id }, shortId(job.id))),
      h("td", {}, job.type),
      h("td", { class: "col-status" }, badge),
      h("td", { class: "attempt-error" }, errorText(job.error)),
      h("td", { class: "num hide-sm" }, `${job.attempt}/${job.max_attempts}`),
      h("td", { class: "col-time hide-sm", title: fmtFullTime(job.finished_at) }, fmtTime(job.finished_at)),
      h("td", {}, h("div", { class: "button-row" }, requeue, purge)));
    return { tr, job, check, badge, actions: [requeue, purge], done: false };
  };

  async function load() {
    setText(status, "Loading…");
    try {
      const result = await api.get("/v1/admin/dlq", { ...filters(), limit });
      rows.clear();
      newDead = 0;
      notice.replaceChildren();
      if (!result.data.length) {
        replaceChildren(tbody, h("tr", {}, h("td", { colspan: 8, class: "empty" }, "No dead jobs match. ")));
      } else {
        replaceChildren(tbody, result.data.map((job) => {
          const r = row(job);
          rows.set(job.id, r);
          if (selected.has(job.id)) r.check.checked = true;
          return r.tr;
        }));
      }
      syncSelection();
      more.hidden = result.count < limit || limit >= MAX;
      setText(status, `${result.count} dead job${result.count === 1 ? "" : "s"} shown${result.count >= limit ? " (more match)" : ""}`);
    } catch (err) {
      setText(status, `Could not load the dead-letter queue: ${err.message}`);
    }
  }

  selectAll.addEventListener("change", () => {
    for (const r of rows.values()) {
      if (r.done) continue;
      r.check.checked = selectAll.checked;
      if (selectAll.checked) selected.add(r.job.id);
      else selected.delete(r.job.id);
    }
    syncSelection();
  });
  buttons.requeueSelected.addEventListener("click", () => {
    const ids = [...selected];
    act("requeue", { job_ids: ids }, ids.length > 1 ? {
      confirm: { title: `Requeue ${ids.length} jobs?`, text: "They run again with a fresh attempt budget.", confirmLabel: "Requeue", danger: false },
    } : {});
  });
  buttons.purgeSelected.addEventListener("click", () => {
    const ids = [...selected];
    act("purge", { job_ids: ids }, {
      confirm: { title: `Purge ${ids.length} job${ids.length === 1 ? "" : "s"}?`, text: "They and their history are deleted. This cannot be undone.", confirmLabel: "Purge" },
    });
  });
  const describe = () => {
    const f = filters();
    const parts = [f.type && `of type ${f.type}`, f.error && `with “${f.error}” in the error`,
      f.min_age_s !== undefined && "older than the minimum age", f.max_age_s !== undefined && "younger than the maximum age"];
    const text = parts.filter(Boolean).join(", ");
    return text ? `every dead job ${text}` : "every dead job";
  };
  buttons.requeueAll.addEventListener("click", () => act("requeue", { ...filters(), all: true }, {
    confirm: { title: "Requeue all matching?", text: `This requeues ${describe()}.`, confirmLabel: "Requeue all", danger: false },
    done: () => load(),
  }));
  buttons.purgeAll.addEventListener("click", () => act("purge", { ...filters(), all: true }, {
    confirm: { title: "Purge all matching?", text: `This deletes ${describe()}. This cannot be undone.`, confirmLabel: "Purge all" },
    done: () => load(),
  }));
  more.addEventListener("click", () => {
    limit = Math.min(MAX, limit + PAGE);
    load();
  });
  const reload = debounce(() => {
    limit = PAGE;
    load();
  }, 300);
  form.addEventListener("input", reload);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    reload();
  });

  const offEvent = live.on("job_event", (event) => {
    const listed = rows.get(event.job_id);
    if (listed && event.type === "queued") markDone(event.job_id, "queued");
    // A requeued job stays in view, its status following it live (queued → completed).
    if (listed && listed.done && listed.requeued) setStatus(listed.badge, event.status);
    if (event.type === "dead" && !rows.has(event.job_id)) {
      newDead += 1;
      const text = `${newDead} new dead job${newDead === 1 ? "" : "s"}: show`;
      const existing = notice.querySelector("button");
      if (existing) setText(existing, text);
      else notice.append(h("button", { type: "button", class: "link", id: "show-new-dead", onclick: load }, text));
    }
  });
  load();
  return () => offEvent();
}
