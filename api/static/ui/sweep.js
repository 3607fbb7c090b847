// Sweeps: the list (#/sweeps) and one sweep's page (#/sweeps/<id>): its trials, the best value
// over trials, and each parameter against the metric, with links to the trial jobs.
import { api, apiAll } from "./api.js";
import { formatNumber, lineChart, PALETTE } from "./charts.js";
import { formatTime, h, statusBadge } from "./dom.js";

const REFRESH_MS = 3000;
const LIVE = new Set(["queued", "running"]);

export async function sweepsPage(page) {
  page.append(h("h1", {}, "Sweeps"));
  const sweeps = await apiAll("/v1/sweeps?limit=100", 5);
  if (!sweeps.length) {
    page.append(h("p", { class: "muted" }, "No sweeps yet: `embedmix sweep submit BODY.json` starts one."));
    return;
  }
  const rows = sweeps.map((s) => h("tr", { "data-sweep": s.id },
    h("td", {}, h("a", { href: `#/sweeps/${s.id}` }, s.name)),
    h("td", {}, statusBadge(s.status)),
    h("td", {}, `${s.metric} (${s.direction})`),
    h("td", { class: "num" }, `${s.trial_states.complete + s.trial_states.pruned + s.trial_states.failed} / ${s.trials}`),
    h("td", { class: "num" }, s.best ? formatNumber(s.best.value) : "–"),
    h("td", {}, formatTime(s.created_at))));
  page.append(h("div", { class: "card" }, h("table", { "data-testid": "sweeps-table" },
    h("thead", {}, h("tr", {}, ["name", "status", "metric", "trials done", "best", "created"].map((c) => h("th", {}, c)))),
    h("tbody", {}, rows))));
}

export async function sweepPage(page, sweepId) {
  const path = `/v1/sweeps/${encodeURIComponent(sweepId)}`;
  const header = h("div");
  const tableBox = h("div", { class: "card" });
  const bestBox = h("div", { class: "card" }, h("h2", {}, "Best value over trials"));
  const paramsBox = h("div", { class: "grid2", "data-testid": "sweep-param-charts" });
  page.append(header, bestBox, paramsBox, tableBox);
  const bestChart = lineChart(bestBox, { xLabel: "trial", testId: "sweep-best-chart" });
  let paramCharts = null;
  let timer = null;

  async function refresh() {
    const [sweep, trials] = await Promise.all([api(path), apiAll(`${path}/trials?limit=100`)]);
    header.replaceChildren(summary(sweep));
    tableBox.replaceChildren(h("h2", {}, "Trials"), trialsTable(sweep, trials));
    bestChart.update(bestSeries(sweep, trials));
    paramCharts = paramCharts || Object.keys(sweep.space).map((p) => paramChart(paramsBox, sweep, p));
    for (const chart of paramCharts) chart.redraw(trials);
    if (!LIVE.has(sweep.status) && timer) { clearInterval(timer); timer = null; }
    return sweep;
  }

  const sweep = await refresh();
  if (LIVE.has(sweep.status)) timer = setInterval(() => refresh().catch(() => {}), REFRESH_MS);
  return () => { if (timer) clearInterval(timer); };
}

function summary(sweep) {
  const states = Object.entries(sweep.trial_states).map(([s, n]) => `${n} ${s}`).join(", ");
  const best = sweep.best;
  return h("div", { class: "card", "data-testid": "sweep-summary" },
    h("h1", {}, sweep.name, " ", statusBadge(sweep.status)),
    h("p", { class: "muted" }, `${sweep.sampler} sampler, ${sweep.pruner} pruner, ${sweep.trials} trials, ${sweep.parallel} at a time; `,
      `${sweep.direction} ${sweep.metric}. Trials: ${states}.`),
    best ? h("p", { "data-testid": "sweep-best" }, `Best: trial ${best.trial}, ${sweep.metric} ${formatNumber(best.value)}, `,
      h("code", {}, JSON.stringify(best.params)), " — ", h("a", { href: `#/jobs/${best.job_id}` }, "its job")) : null,
    sweep.error ? h("p", { class: "error-box" }, sweep.error.message) : null);
}

function trialsTable(sweep, trials) {
  const paths = Object.keys(sweep.space);
  const bestTrial = sweep.best ? sweep.best.trial : null;
  const rows = trials.map((t) => h("tr", { class: t.number === bestTrial ? "best" : "", "data-trial": t.number },
    h("td", { class: "num" }, t.number),
    h("td", {}, statusBadge(t.state)),
    h("td", { class: "num" }, formatNumber(t.value)),
    h("td", { class: "num" }, t.intermediate.length ? `${t.intermediate.length}` : "–"),
    paths.map((p) => h("td", { class: "num" }, String(t.params[p]))),
    h("td", {}, t.job_id ? h("a", { href: `#/jobs/${t.job_id}` }, t.job_id) : (t.error ? t.error.message : "–"))));
  return h("table", { "data-testid": "sweep-trials" },
    h("thead", {}, h("tr", {}, ["trial", "state", sweep.metric, "evaluations", ...paths, "job"].map((c) => h("th", {}, c)))),
    h("tbody", {}, rows));
}

function bestSeries(sweep, trials) {
  const better = sweep.direction === "maximize" ? (a, b) => a > b : (a, b) => a < b;
  const done = trials.filter((t) => t.state === "complete" && t.value !== null);
  let best = null;
  const running = done.map((t) => { if (best === null || better(t.value, best)) best = t.value; return [t.number, best]; });
  return [
    { label: "best so far", color: PALETTE[0], points: running },
    { label: "trial value", color: PALETTE[1], points: done.map((t) => [t.number, t.value]) },
  ];
}

/** One small chart: the parameter's value (x) against the trial's value (y); choices are placed by index. */
function paramChart(container, sweep, path) {
  const param = sweep.space[path];
  const choices = param.type === "categorical" ? param.choices.map(String) : null;
  const title = choices ? `${path} (${choices.map((c, i) => `${i}=${c}`).join(", ")})` : path;
  const box = h("div", { class: "card", "data-param": path }, h("h2", {}, title));
  container.append(box);
  const chart = lineChart(box, { xLabel: path, yLabel: sweep.metric, testId: `sweep-param-${path}` });
  const x = (v) => (choices ? choices.indexOf(String(v)) : (param.log ? Math.log10(v) : v));
  return {
    redraw(trials) {
      const points = trials.filter((t) => t.value !== null && path in t.params)
        .map((t) => [x(t.params[path]), t.value]).sort((a, b) => a[0] - b[0]);
      chart.update([{ label: param.log ? `${sweep.metric} by log10 ${path}` : sweep.metric, color: PALETTE[2], points }]);
    },
  };
}
