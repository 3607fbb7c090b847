// Building DOM nodes without innerHTML: every string from the API lands as text, never as markup.

/** h("td", {class: "num", onclick: fn}, "text", childNode, ...) */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (v === true) node.setAttribute(k, "");
    else node.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function statusBadge(status) {
  return h("span", { class: `status ${status}`, "data-testid": "status" }, status);
}

export function errorBox(error) {
  return h("div", { class: "error-box", role: "alert" }, error.message || String(error));
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function formatTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

/** Seconds a job has run: to its end, or to now while it runs. */
export function jobDuration(job) {
  if (!job.started_at) return null;
  const end = job.finished_at ? new Date(job.finished_at) : new Date();
  return (end - new Date(job.started_at)) / 1000;
}

export function jobMethod(spec) {
  const mix = spec.mixup && spec.mixup.method;
  return mix ? `${spec.objective.loss} + ${mix}` : spec.objective.loss;
}

export function jobDataset(spec) {
  return spec.dataset.name || spec.dataset.id || "–";
}

/** The metric a job is judged by: the first one its spec asked for that it has, else any. */
export function headlineMetric(job) {
  const names = Object.keys(job.metrics || {});
  if (!names.length) return null;
  const asked = (job.spec.eval && job.spec.eval.metrics) || [];
  for (const m of asked) {
    // recall_at_k is reported as recall_at_1, recall_at_4, ...
    const found = m in job.metrics ? m : names.find((n) => m.endsWith("_at_k") && n.startsWith(m.slice(0, -1)));
    if (found) return { name: found, value: job.metrics[found] };
  }
  return { name: names[0], value: job.metrics[names[0]] };
}

// Metrics where smaller is better; everything else (precision, recall, accuracy, r2, ...) is higher-better.
const LOWER_IS_BETTER = new Set(["train/loss", "alignment", "uniformity", "mae", "rmse", "ece"]);
export function lowerIsBetter(name) {
  return LOWER_IS_BETTER.has(name.replace(/^eval\//, "")) || name.endsWith("loss");
}

export const ACTIVE = new Set(["queued", "running", "cancelling"]);
