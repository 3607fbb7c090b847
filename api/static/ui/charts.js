// Plain SVG charts: line charts for metric series, a scatter plot for embedding maps.

const SVG_NS = "http://www.w3.org/2000/svg";
// Ten well-separated hues first (classes 0-9 are the common case), then darker and lighter variants.
export const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
  "#ff9da7", "#9c755f", "#79706e", "#2b5d8a", "#b85f00", "#a8323a", "#3f8580", "#2f6b2a", "#a8900f",
  "#7a4a6f", "#c4606c", "#6b4f3d", "#bab0ac"];

function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

/** Round tick values (1, 2, 5 x 10^k) covering [lo, hi]. */
function ticks(lo, hi, count = 5) {
  if (!(hi > lo)) { hi = lo + 1; lo = lo - 1; }
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

export function formatNumber(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
  return String(+v.toPrecision(4));
}

/**
 * A line chart in `container`. series: [{label, color, points: [[x, y], ...]}].
 * Returns {update(series)}; redraws are batched to one per animation frame.
 */
export function lineChart(container, { xLabel = "step", yLabel = "", testId = "" } = {}) {
  const svg = el("svg", { class: "chart", viewBox: "0 0 640 240", preserveAspectRatio: "none" });
  if (testId) svg.dataset.testid = testId;
  container.appendChild(svg);
  const legend = document.createElement("div");
  legend.className = "legend";
  container.appendChild(legend);
  let pending = null;
  let current = [];

  function draw() {
    pending = null;
    svg.replaceChildren();
    const W = 640, H = 240, L = 52, R = 12, T = 10, B = 28;
    const all = current.flatMap((s) => s.points);
    svg.dataset.points = String(all.length);
    if (!all.length) {
      el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, svg).textContent = "no points yet";
      legend.replaceChildren();
      return;
    }
    let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
    let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
    if (x1 === x0) { x1 = x0 + 1; }
    if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
    const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    for (const t of ticks(y0, y1)) {
      el("line", { class: "grid", x1: L, x2: W - R, y1: sy(t), y2: sy(t) }, svg);
      el("text", { x: L - 6, y: sy(t) + 4, "text-anchor": "end" }, svg).textContent = formatNumber(t);
    }
    for (const t of ticks(x0, x1, 6)) {
      el("text", { x: sx(t), y: H - 10, "text-anchor": "middle" }, svg).textContent = formatNumber(t);
    }
    el("text", { x: L - 6, y: H - 10, "text-anchor": "end" }, svg).textContent = xLabel;
    el("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }, svg);
    el("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }, svg);
    for (const s of current) {
      if (!s.points.length) continue;
      const d = s.points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
      el("path", { d, fill: "none", stroke: s.color, "stroke-width": 1.6, "vector-effect": "non-scaling-stroke" }, svg);
      if (s.points.length < 40) {
        for (const p of s.points) el("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.2, fill: s.color }, svg);
      }
    }
    legend.replaceChildren(...current.map((s) => {
      const item = document.createElement("span");
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = s.color;
      const last = s.points.length ? s.points[s.points.length - 1][1] : null;
      item.append(sw, `${s.label}${last === null ? "" : ` (${formatNumber(last)})`}`);
      return item;
    }));
    if (yLabel || xLabel) svg.setAttribute("aria-label", `${yLabel} by ${xLabel}`);
  }

  return {
    update(series) {
      current = series;
      if (!pending) pending = requestAnimationFrame(draw);
    },
  };
}

function viridisLike(t) {
  // A perceptually ordered blue -> green -> yellow ramp for continuous labels.
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const x = Math.min(0.9999, Math.max(0, t)) * (stops.length - 1);
  const i = Math.floor(x), f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

/** A scatter plot of an embedding map: coords [[x, y]], labels (classes or values) colour the points. */
export function scatter(container, { coords, labels, labelKind, classNames }) {
  const W = 640, H = 420, P = 16;
  const svg = el("svg", { class: "map", viewBox: `0 0 ${W} ${H}`, "data-testid": "embedding-map" });
  svg.dataset.points = String(coords.length);
  const xs = coords.map((c) => c[0]), ys = coords.map((c) => c[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (x) => P + ((x - x0) / ((x1 - x0) || 1)) * (W - 2 * P);
  const sy = (y) => H - P - ((y - y0) / ((y1 - y0) || 1)) * (H - 2 * P);
  let colour = () => PALETTE[0];
  let lo = 0, hi = 1;
  if (labelKind === "class") colour = (v) => PALETTE[v % PALETTE.length];
  if (labelKind === "value") {
    lo = Math.min(...labels); hi = Math.max(...labels);
    colour = (v) => viridisLike((v - lo) / ((hi - lo) || 1));
  }
  coords.forEach((c, i) => {
    const label = labels ? labels[i] : null;
    const dot = el("circle", { cx: sx(c[0]).toFixed(1), cy: sy(c[1]).toFixed(1), r: 3, fill: colour(label), "fill-opacity": 0.75 }, svg);
    if (label !== null) el("title", {}, dot).textContent = labelKind === "class" ? className(label, classNames) : formatNumber(label);
  });
  container.appendChild(svg);
  const legend = document.createElement("div");
  legend.className = "legend";
  if (labelKind === "class") {
    const classes = [...new Set(labels)].sort((a, b) => a - b);
    for (const k of classes) {
      const item = document.createElement("span");
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = colour(k);
      item.append(sw, className(k, classNames));
      legend.appendChild(item);
    }
  } else if (labelKind === "value") {
    legend.textContent = `colour: target value from ${formatNumber(lo)} (dark) to ${formatNumber(hi)} (light)`;
  }
  container.appendChild(legend);
}

function className(k, names) {
  return names && names[k] !== undefined ? `${names[k]}` : `class ${k}`;
}
