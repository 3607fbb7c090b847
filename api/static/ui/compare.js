// Compare runs: their curves overlaid, one chart per series, and their final metrics side by side.
import { api, apiAll } from "./api.js";
import { formatNumber, lineChart, PALETTE } from "./charts.js";
import { formatDuration, h, jobDataset, jobDuration, jobMethod, lowerIsBetter, statusBadge } from "./dom.js";

const MAX_JOBS = 8;

export async function comparePage(page, params) {
  const ids = (params.get("ids") || "").split(",").filter(Boolean).slice(0, MAX_JOBS);
  page.append(h("h1", {}, "Compare runs"));
  const recent = await api("/v1/jobs?limit=50");
  const chosen = new Set(ids);
  const picker = h("div", { class: "checks", "data-testid": "compare-picker" }, recent.data.map((j) => h("label", {},
    h("input", { type: "checkbox", value: j.id, checked: chosen.has(j.id), onchange: (e) => { e.target.checked ? chosen.add(j.id) : chosen.delete(j.id); } }),
    ` ${j.name} `, h("span", { class: "muted" }, `(${j.status}, ${j.id.slice(-6)})`))));
  const apply = h("button", { class: "primary", onclick: () => { location.hash = `#/compare?ids=${[...chosen].join(",")}`; } }, "Compare");
  page.append(h("div", { class: "card" }, h("h2", {}, "Runs"), picker, h("div", { class: "row" }, apply)));
  if (!ids.length) {
    page.append(h("p", { class: "muted" }, "Pick two or more runs above (or tick them in the jobs table)."));
    return;
  }
  const jobs = await Promise.all(ids.map((id) => api(`/v1/jobs/${encodeURIComponent(id)}`)));
  const series = await Promise.all(jobs.map((j) => apiAll(`/v1/jobs/${j.id}/metrics`)));
  page.append(metricsTable(jobs), h("div", { class: "grid2", "data-testid": "compare-charts" }, charts(jobs, series)));
}

// Each run's label: its name, and where two runs share one, the end of its id too, so neither is mistaken for the other.
export function runLabels(jobs) {
  const counts = new Map();
  jobs.forEach((j) => counts.set(j.name, (counts.get(j.name) || 0) + 1));
  return jobs.map((j) => (counts.get(j.name) > 1 ? `${j.name} · ${j.id.slice(-6)}` : j.name));
}

function metricsTable(jobs) {
  const labels = runLabels(jobs);
  const names = [...new Set(jobs.flatMap((j) => Object.keys(j.metrics || {})))].sort();
  const head = h("tr", {}, h("th", {}, ""), jobs.map((j, i) => h("th", { class: "num" },
    swatch(PALETTE[i]),
    h("a", { href: `#/jobs/${j.id}` }, labels[i]))));
  const facts = [
    ["status", (j) => statusBadge(j.status)], ["method", (j) => jobMethod(j.spec)], ["dataset", (j) => jobDataset(j.spec)],
    ["encoder", (j) => `${j.spec.model.encoder} ${j.spec.model.embedding_dim}-d`],
    ["epochs / batch / lr", (j) => `${j.spec.train.epochs} / ${j.spec.train.batch_size} / ${j.spec.train.lr}`],
    ["duration", (j) => formatDuration(jobDuration(j))],
  ].map(([label, fn]) => h("tr", {}, h("td", { class: "muted" }, label), jobs.map((j) => h("td", { class: "num" }, fn(j)))));
  const rows = names.map((n) => {
    const values = jobs.map((j) => (j.metrics || {})[n]);
    const present = values.filter((v) => v !== undefined);
    const best = present.length > 1 ? (lowerIsBetter(n) ? Math.min(...present) : Math.max(...present)) : null;
    return h("tr", { "data-metric": n }, h("td", {}, n),
      values.map((v) => h("td", { class: `num ${v !== undefined && v === best ? "best" : ""}` }, v === undefined ? "–" : formatNumber(v))));
  });
  return h("div", { class: "card" }, h("h2", {}, "Final metrics (best in bold)"),
    h("table", { "data-testid": "compare-table" }, h("thead", {}, head), h("tbody", {}, facts, rows)));
}

function swatch(colour) {
  const node = h("span", { class: "swatch" });
  node.style.background = colour; // through the CSSOM: the page's CSP refuses style attributes
  return node;
}

function charts(jobs, series) {
  const labels = runLabels(jobs);
  const names = [...new Set(series.flat().map((p) => p.name))].sort((a, b) => (a === "train/loss" ? -1 : b === "train/loss" ? 1 : a.localeCompare(b)));
  return names.map((name) => {
    const box = h("div", { class: "card" }, h("h2", {}, name));
    const chart = lineChart(box, { yLabel: name, testId: `compare-${name}` });
    chart.update(jobs.map((j, i) => ({
      label: labels[i], color: PALETTE[i],
      points: series[i].filter((p) => p.name === name).map((p) => [p.step, p.value]),
    })));
    return box;
  });
}
