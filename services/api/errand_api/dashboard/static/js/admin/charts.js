// Small SVG line charts with a fixed size: updating one changes only path data and
// text, never the layout.

import { h, setText } from "../lib/dom.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 600;
const HEIGHT = 120;

function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  return el;
}

/**
 * A chart panel. `format(value)` renders a value ("12", "3.5 %").
 * @returns {{el: HTMLElement, update: (values: (number|null)[]) => void}}
 */
export function lineChart({ id, title, format, tone = "" }) {
  const line = svg("path", { class: "line", d: "" });
  const area = svg("path", { class: "area", d: "" });
  const grid = [0.25, 0.5, 0.75].map((f) =>
    svg("line", { class: "grid", x1: 0, x2: WIDTH, y1: HEIGHT * f, y2: HEIGHT * f }));
  const plot = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    preserveAspectRatio: "none",
    role: "img",
    "aria-labelledby": `${id}-title ${id}-summary`,
  });
  plot.append(...grid, area, line);
  const now = h("span", { class: "now" }, "—");
  const peak = h("span", {}, "peak —");
  const summary = h("span", { id: `${id}-summary`, class: "visually-hidden" });
  const el = h(
    "figure",
    { class: `chart ${tone}`, id },
    h("h3", { id: `${id}-title` }, h("span", {}, title), now),
    plot,
    summary,
    h("div", { class: "axis", "aria-hidden": "true" }, h("span", {}, "60 min ago"), peak, h("span", {}, "now")),
  );

  const update = (values) => {
    const known = values.filter((v) => v !== null);
    const max = Math.max(1, ...known);
    const step = WIDTH / Math.max(1, values.length - 1);
    // Unknown values (null) leave gaps; a lone point is drawn as a short dash.
    let d = "";
    let fill = "";
    let run = [];
    const flush = () => {
      if (run.length === 1) run = [[run[0][0] - 3, run[0][1]], [run[0][0] + 3, run[0][1]]];
      if (run.length) {
        const path = run.map(([x, y], j) => `${j ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`).join("");
        d += path;
        fill += `${path}L${run[run.length - 1][0].toFixed(1)},${HEIGHT}L${run[0][0].toFixed(1)},${HEIGHT}Z`;
      }
      run = [];
    };
    values.forEach((v, i) => {
      if (v === null || v === undefined) {
        flush();
        return;
      }
      run.push([i * step, HEIGHT - (v / max) * (HEIGHT - 4) - 2]);
    });
    flush();
    line.setAttribute("d", d);
    area.setAttribute("d", fill);
    const latest = values[values.length - 1];
    setText(now, format(latest));
    setText(peak, `peak ${format(known.length ? Math.max(...known) : null)}`);
    setText(summary, `Over the last hour: now ${format(latest)}, peak ${format(known.length ? Math.max(...known) : null)}.`);
  };
  return { el, update };
}
