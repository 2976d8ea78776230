// Flow control on the overview: pause and resume queues or job types, and circuit
// breakers. Shown only when this API has those endpoints (the server says so in the
// page configuration), so no request can 404.

import { fmtNumber, fmtTime, h, replaceChildren, setText } from "../lib/dom.js";
import { statusBadge } from "../lib/ui.js";

const KIND_LABEL = { queue: "queue", job_type: "job type" };

function unixTime(seconds) {
  return seconds ? new Date(seconds * 1000).toISOString() : null;
}

function pausePanel(ctx, { act, canPause }) {
  const kind = h("select", { id: "pause-kind", name: "kind" },
    h("option", { value: "queue" }, "Queue"), h("option", { value: "job_type" }, "Job type"));
  const name = h("input", { id: "pause-name", name: "name", required: true, autocomplete: "off", list: "pause-names" });
  const names = h("datalist", { id: "pause-names" });
  const body = h("tbody", {});
  const form = canPause && h("form", {
    class: "filters",
    "aria-label": "Pause a queue or job type",
    onsubmit: async (event) => {
      event.preventDefault();
      const target = { kind: kind.value, name: name.value.trim() };
      if (target.name && (await act("pause", target))) name.value = "";
    },
  },
  h("div", { class: "field" }, h("label", { for: "pause-kind" }, "Pause a"), kind),
  h("div", { class: "field" }, h("label", { for: "pause-name" }, "Name"), name, names),
  h("div", { class: "field" }, h("button", { type: "submit", id: "pause-submit" }, "Pause")));
  // Suggest the queues and types the statistics know.
  ctx.api.get("/v1/stats").then((stats) => {
    const values = new Set(stats.data.flatMap((row) => [row.queue, row.type]));
    replaceChildren(names, [...values].sort().map((v) => h("option", { value: v })));
  }).catch(() => {});
  const el = h("section", { class: "panel", "aria-labelledby": "pauses-title" },
    h("div", { class: "panel-head" }, h("h2", { id: "pauses-title" }, "Paused queues and job types")),
    form || null,
    h("div", { class: "table-wrap spaced-top" },
      h("table", { id: "pauses-table" },
        h("caption", { class: "visually-hidden" }, "Paused queues and job types"),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Kind"), h("th", { scope: "col" }, "Name"),
          h("th", { scope: "col", class: "num" }, "Waiting"),
          h("th", { scope: "col", class: "hide-sm" }, "Paused by"),
          h("th", { scope: "col", class: "col-time hide-sm" }, "Since"),
          h("th", { scope: "col" }, "Action"))),
        body)));
  const draw = (rows) => {
    if (!rows.length) {
      replaceChildren(body, h("tr", {}, h("td", { colspan: 6, class: "empty" }, "Nothing is paused.")));
      return;
    }
    replaceChildren(body, rows.map((row) => h("tr", { "data-paused": `${row.kind}:${row.name}` },
      h("td", {}, KIND_LABEL[row.kind] || row.kind),
      h("th", { scope: "row" }, row.name),
      h("td", { class: "num" }, fmtNumber(row.waiting)),
      h("td", { class: "hide-sm" }, row.paused_by || "—"),
      h("td", { class: "col-time hide-sm" }, fmtTime(row.paused_at)),
      h("td", {}, canPause
        ? h("button", { type: "button", class: "small", onclick: () => act("resume", row) }, `Resume ${row.name}`)
        : "—"))));
  };
  return { el, draw };
}

function breakerPanel({ canClose, closeBreaker }) {
  const body = h("tbody", {});
  const el = h("section", { class: "panel", "aria-labelledby": "breakers-title" },
    h("div", { class: "panel-head" }, h("h2", { id: "breakers-title" }, "Circuit breakers")),
    h("div", { class: "table-wrap" },
      h("table", { id: "breakers-table" },
        h("caption", { class: "visually-hidden" }, "Circuit breakers that have seen failures"),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Breaker"), h("th", { scope: "col", class: "col-status" }, "State"),
          h("th", { scope: "col", class: "num" }, "Failures"),
          h("th", { scope: "col", class: "num hide-sm" }, "Opened"),
          h("th", { scope: "col", class: "col-time hide-sm" }, "Open until"),
          h("th", { scope: "col" }, "Action"))),
        body)));
  const draw = (rows) => {
    if (!rows.length) {
      replaceChildren(body, h("tr", {}, h("td", { colspan: 6, class: "empty" }, "Every breaker is closed.")));
      return;
    }
    replaceChildren(body, rows.map((row) => h("tr", { "data-breaker": row.key },
      h("th", { scope: "row" }, row.key),
      h("td", { class: "col-status" }, statusBadge(row.state)),
      h("td", { class: "num" }, fmtNumber(row.failures)),
      h("td", { class: "num hide-sm" }, `${fmtNumber(row.times_opened)}×`),
      h("td", { class: "col-time hide-sm" }, row.state === "closed" ? "—" : fmtTime(unixTime(row.open_until))),
      h("td", {}, canClose && row.state !== "closed"
        ? h("button", { type: "button", class: "small", onclick: () => closeBreaker(row.key) }, `Close ${row.key}`)
        : "—"))));
  };
  return { el, draw };
}

export function renderControls(ctx, container, { onPauses, confirmAction, toast }) {
  const { api, features } = ctx;
  const canPause = Boolean(features.pause && features.resume);
  const message = h("p", { class: "page-alert", role: "alert" });

  async function act(action, target) {
    const label = `${KIND_LABEL[target.kind] || target.kind} ${target.name}`;
    if (action === "pause") {
      const ok = await confirmAction({
        title: `Pause ${label}?`,
        text: "Its jobs wait (nothing is lost) and running ones stop at their next step, until it is resumed.",
        confirmLabel: "Pause",
      });
      if (!ok) return false;
    }
    try {
      await api.post(`/v1/admin/${action}`, { [target.kind]: target.name });
      toast(`${action === "pause" ? "Paused" : "Resumed"} ${label}.`, { kind: "success" });
      await refresh();
      return true;
    } catch (err) {
      toast(`Could not ${action} ${label}: ${err.message}`, { kind: "error" });
      return false;
    }
  }

  async function closeBreaker(key) {
    const ok = await confirmAction({
      title: `Close breaker ${key}?`,
      text: "Its waiting jobs run at once, even if what they call is still failing.",
      confirmLabel: "Close breaker",
    });
    if (!ok) return;
    try {
      await api.delete(`/v1/admin/breakers/${encodeURIComponent(key)}`);
      toast(`Closed breaker ${key}.`, { kind: "success" });
      await refresh();
    } catch (err) {
      toast(`Could not close ${key}: ${err.message}`, { kind: "error" });
    }
  }

  const pauses = features.pauses ? pausePanel(ctx, { act, canPause }) : null;
  const breakers = features.breakers ? breakerPanel({ canClose: features.close_breaker, closeBreaker }) : null;
  if (pauses || breakers) replaceChildren(container, message, pauses && pauses.el, breakers && breakers.el);

  async function refresh() {
    try {
      if (pauses) {
        const rows = await api.get("/v1/admin/pauses");
        pauses.draw(rows);
        onPauses(new Set(rows.map((r) => `${r.kind}:${r.name}`)));
      }
      if (breakers) breakers.draw(await api.get("/v1/admin/breakers"));
      setText(message, "");
    } catch (err) {
      setText(message, `Could not read flow control: ${err.message}`);
    }
  }
  refresh();
  return { refresh };
}
