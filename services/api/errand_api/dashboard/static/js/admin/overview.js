// Overview: totals, the last hour in four charts, one row per queue, pauses, breakers.

import { fmtDuration, fmtNumber, h, replaceChildren, setText, throttle } from "../lib/dom.js";
import { confirmAction, statusBadge, toast } from "../lib/ui.js";
import { lineChart } from "./charts.js";
import { History } from "./history.js";
import { renderControls } from "./controls.js";

const CARDS = [
  ["queued", "Queued"],
  ["running", "Running"],
  ["retrying", "Retrying"],
  ["dead", "Dead letters"],
  ["completed_last_minute", "Completed / min"],
  ["failed_last_minute", "Failed / min"],
];

function totals(rows) {
  const sum = Object.fromEntries(CARDS.map(([key]) => [key, 0]));
  for (const row of rows) for (const key of Object.keys(sum)) sum[key] += row[key];
  return sum;
}

function byQueue(rows) {
  const queues = new Map();
  for (const row of rows) {
    const q = queues.get(row.queue) || {
      queue: row.queue, types: [], queued: 0, running: 0, retrying: 0, dead: 0,
      completed_last_minute: 0, failed_last_minute: 0, p50: null, p95: null,
    };
    q.types.push(row.type);
    for (const key of ["queued", "running", "retrying", "dead", "completed_last_minute", "failed_last_minute"]) {
      q[key] += row[key];
    }
    // The slowest type's percentiles stand for the queue.
    if (row.duration_p50_ms != null) q.p50 = Math.max(q.p50 ?? 0, row.duration_p50_ms);
    if (row.duration_p95_ms != null) q.p95 = Math.max(q.p95 ?? 0, row.duration_p95_ms);
    queues.set(row.queue, q);
  }
  return [...queues.values()].sort((a, b) => a.queue.localeCompare(b.queue));
}

export function renderOverview(ctx) {
  const { api, live, main } = ctx;
  const cardValues = {};
  const cards = h("div", { class: "cards", role: "list", "aria-label": "Totals over all queues" },
    CARDS.map(([key, label]) => {
      cardValues[key] = h("div", { class: "value", id: `total-${key}` }, "—");
      return h("div", { class: key.startsWith("failed") || key === "dead" ? "card bad" : "card", role: "listitem", id: `card-${key}` },
        h("div", { class: "label" }, label), cardValues[key]);
    }));
  const charts = {
    depth: lineChart({ id: "chart-depth", title: "Queue depth", format: (v) => fmtNumber(v) }),
    running: lineChart({ id: "chart-running", title: "Running", format: (v) => fmtNumber(v) }),
    throughput: lineChart({ id: "chart-throughput", title: "Completed per minute", format: (v) => fmtNumber(v) }),
    failure: lineChart({
      id: "chart-failure", title: "Failure rate", tone: "bad",
      format: (v) => (v === null || v === undefined ? "—" : `${v.toFixed(1)} %`),
    }),
  };
  const historyNote = h("p", { class: "muted small", id: "history-note" }, "Loading the last hour…");
  const queueBody = h("tbody", {}, h("tr", {}, h("td", { colspan: 11, class: "empty" }, "Loading…")));
  const error = h("p", { class: "page-alert", role: "alert" });
  const controls = h("div", {});

  replaceChildren(
    main,
    h("h1", {}, "Overview"),
    error,
    cards,
    h("section", { class: "panel", "aria-labelledby": "charts-title" },
      h("div", { class: "panel-head" }, h("h2", { id: "charts-title" }, "Last hour, all queues"), historyNote),
      h("div", { class: "charts" }, Object.values(charts).map((c) => c.el))),
    h("section", { class: "panel", "aria-labelledby": "queues-title" },
      h("div", { class: "panel-head" }, h("h2", { id: "queues-title" }, "Queues")),
      h("div", { class: "table-wrap" },
        h("table", { id: "queues-table" },
          h("caption", { class: "visually-hidden" }, "Queues: depth, running, throughput and durations"),
          h("thead", {}, h("tr", {},
            h("th", { scope: "col" }, "Queue"),
            h("th", { scope: "col", class: "hide-sm" }, "Job types"),
            h("th", { scope: "col", class: "num" }, "Queued"),
            h("th", { scope: "col", class: "num" }, "Running"),
            h("th", { scope: "col", class: "num hide-sm" }, "Retrying"),
            h("th", { scope: "col", class: "num" }, "Dead"),
            h("th", { scope: "col", class: "num" }, "Done/min"),
            h("th", { scope: "col", class: "num hide-sm" }, "Failed/min"),
            h("th", { scope: "col", class: "num hide-sm" }, "p50"),
            h("th", { scope: "col", class: "num hide-sm" }, "p95"),
            h("th", { scope: "col" }, "State"))),
          queueBody))),
    controls,
  );

  const history = new History();
  let historyReady = false;
  let lastStats = [];
  let paused = new Set();

  const drawCharts = () => {
    if (!historyReady) return;
    const series = history.series();
    // The newest point is the exact current count, not the reconstruction.
    const sum = totals(lastStats);
    series.depth[series.depth.length - 1] = sum.queued;
    series.running[series.running.length - 1] = sum.running;
    for (const [name, chart] of Object.entries(charts)) chart.update(series[name]);
  };

  const drawQueues = () => {
    const rows = byQueue(lastStats);
    if (!rows.length) {
      replaceChildren(queueBody, h("tr", {}, h("td", { colspan: 11, class: "empty" }, "No jobs yet.")));
      return;
    }
    replaceChildren(queueBody, rows.map((q) => h("tr", { "data-queue": q.queue },
      h("th", { scope: "row" }, q.queue),
      h("td", { class: "hide-sm" }, q.types.map((t, i) => [
        i ? ", " : "", h("a", { href: `#/jobs?type=${encodeURIComponent(t)}` }, t),
        paused.has(`job_type:${t}`) ? " (paused)" : ""])),
      h("td", { class: "num" }, fmtNumber(q.queued)),
      h("td", { class: "num" }, fmtNumber(q.running)),
      h("td", { class: "num hide-sm" }, fmtNumber(q.retrying)),
      h("td", { class: "num" }, q.dead ? h("a", { href: "#/dlq" }, fmtNumber(q.dead)) : "0"),
      h("td", { class: "num" }, fmtNumber(q.completed_last_minute)),
      h("td", { class: "num hide-sm" }, fmtNumber(q.failed_last_minute)),
      h("td", { class: "num hide-sm" }, fmtDuration(q.p50)),
      h("td", { class: "num hide-sm" }, fmtDuration(q.p95)),
      h("td", {}, statusBadge(paused.has(`queue:${q.queue}`) ? "paused" : "active")),
    )));
  };

  // Duration percentiles come from GET /v1/stats only (the live tick leaves them out).
  const percentiles = new Map();
  const applyStats = (rows) => {
    for (const row of rows) {
      const key = `${row.queue}\u0000${row.type}`;
      if ("duration_p50_ms" in row) percentiles.set(key, [row.duration_p50_ms, row.duration_p95_ms]);
      else [row.duration_p50_ms, row.duration_p95_ms] = percentiles.get(key) || [null, null];
    }
    lastStats = rows;
    const sum = totals(rows);
    for (const [key] of CARDS) {
      setText(cardValues[key], fmtNumber(sum[key]));
      cardValues[key].parentElement.classList.toggle("nonzero", sum[key] > 0);
    }
    drawQueues();
    drawCharts();
  };

  const refreshStats = async () => {
    try {
      const stats = await api.get("/v1/stats");
      setText(error, "");
      applyStats(stats.data);
    } catch (err) {
      setText(error, `Could not read the statistics: ${err.message}`);
    }
  };
  const refreshSoon = throttle(refreshStats, 1000);

  const controlPanel = renderControls(ctx, controls, {
    onPauses: (queues) => {
      paused = queues;
      drawQueues();
    },
    confirmAction,
    toast,
  });

  history.load(api).then(() => {
    historyReady = true;
    setText(historyNote, history.truncated
      ? "Rebuilt from the 5,000 newest jobs of the hour, then live."
      : "Rebuilt from this hour's jobs, then live.");
    drawCharts();
  }).catch((err) => setText(historyNote, `Could not read the last hour: ${err.message}`));
  refreshStats();

  // The notifier sends queue_stats to the admin room every second; without those ticks
  // (an older notifier, or offline) events trigger a throttled read instead.
  let lastTick = 0;
  const ticking = () => Date.now() - lastTick < 3000;
  const controlsSoon = throttle(() => controlPanel.refresh(), 1000);
  const offEvent = live.on("job_event", (event) => {
    history.apply(event);
    if (!ticking()) refreshSoon();
    if (event.type === "queued" || event.type === "started") controlsSoon();
  });
  const offTick = live.on("queue_stats", (payload) => {
    if (!payload || !Array.isArray(payload.data)) return;
    lastTick = Date.now();
    applyStats(payload.data);
  });
  const offConnect = live.on("connect", refreshSoon);
  // Time moves the charts even when nothing happens; percentiles and flow control are
  // read every few seconds.
  let beats = 0;
  const timer = setInterval(() => {
    beats += 1;
    if (!ticking() || beats % 6 === 0) refreshStats();
    drawCharts();
    controlPanel.refresh();
  }, 5000);
  return () => {
    offEvent();
    offTick();
    offConnect();
    clearInterval(timer);
  };
}
