// The jobs table: status filter, name filter, sortable columns, cursor paging, pick jobs to compare.
import { api } from "./api.js";
import { formatNumber } from "./charts.js";
import { ACTIVE, formatDuration, formatTime, h, headlineMetric, jobDataset, jobDuration, jobMethod, statusBadge } from "./dom.js";

const PAGE_SIZE = 20;
const STATUSES = ["", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"];
const COLUMNS = [
  { key: "name", label: "Job", value: (j) => j.name },
  { key: "status", label: "Status", value: (j) => j.status },
  { key: "method", label: "Method", value: (j) => jobMethod(j.spec) },
  { key: "dataset", label: "Dataset", value: (j) => jobDataset(j.spec) },
  { key: "metric", label: "Headline metric", value: (j) => (headlineMetric(j) || { value: -Infinity }).value, num: true },
  { key: "duration", label: "Duration", value: (j) => jobDuration(j) ?? -1, num: true },
  { key: "created", label: "Created", value: (j) => j.created_at },
];

export async function jobsPage(page, params) {
  const pageSize = Math.min(100, Math.max(1, Number(params.get("limit")) || PAGE_SIZE)); // #/jobs?limit=50
  const state = { status: params.get("status") || "", text: "", sort: "created", desc: true, cursors: [null], index: 0, jobs: [], hasMore: false };
  const selected = new Set();
  const statusSelect = h("select", { "data-testid": "status-filter" }, STATUSES.map((s) => h("option", { value: s }, s || "any status")));
  statusSelect.value = state.status;
  const textFilter = h("input", { type: "search", placeholder: "filter by name, method, dataset", "data-testid": "text-filter", size: 30 });
  const compareButton = h("button", { disabled: true, "data-testid": "compare-selected" }, "Compare selected");
  const table = h("table", { "data-testid": "jobs-table" });
  const prev = h("button", { "data-testid": "newer" }, "‹ Newer");
  const next = h("button", { "data-testid": "older" }, "Older ›");
  const pageLabel = h("span", { class: "muted" });
  const message = h("div");
  page.append(
    h("div", { class: "row" }, h("h1", {}, "Jobs"), h("span", { class: "spacer" }), h("a", { class: "button", href: "#/new" }, "New job")),
    h("div", { class: "card" },
      h("div", { class: "row" }, statusSelect, textFilter, h("span", { class: "spacer" }), compareButton),
      message, table,
      h("div", { class: "row" }, prev, next, pageLabel)));

  async function load() {
    const cursor = state.cursors[state.index];
    let url = `/v1/jobs?limit=${pageSize}`;
    if (state.status) url += `&status=${state.status}`;
    if (cursor) url += `&cursor=${encodeURIComponent(cursor)}`;
    try {
      const body = await api(url);
      state.jobs = body.data;
      state.hasMore = body.has_more;
      state.cursors[state.index + 1] = body.next_cursor;
      message.replaceChildren();
    } catch (error) {
      message.replaceChildren(h("div", { class: "error-box" }, error.message));
    }
    draw();
  }

  function draw() {
    const text = state.text.toLowerCase();
    const column = COLUMNS.find((c) => c.key === state.sort);
    const rows = state.jobs
      .filter((j) => !text || [j.name, j.id, jobMethod(j.spec), jobDataset(j.spec)].some((v) => v.toLowerCase().includes(text)))
      .sort((a, b) => {
        const [x, y] = [column.value(a), column.value(b)];
        const order = x < y ? -1 : x > y ? 1 : 0;
        return state.desc ? -order : order;
      });
    const head = h("tr", {}, h("th", {}, ""), COLUMNS.map((c) => h("th", {
      class: `sortable ${c.num ? "num" : ""} ${c.key === state.sort ? (state.desc ? "sorted-desc" : "sorted-asc") : ""}`,
      "data-sort": c.key,
      onclick: () => { state.desc = state.sort === c.key ? !state.desc : c.num || c.key === "created"; state.sort = c.key; draw(); },
    }, c.label)));
    const body = rows.map((j) => {
      const metric = headlineMetric(j);
      const box = h("input", { type: "checkbox", "aria-label": `select ${j.name}`, checked: selected.has(j.id),
        onchange: (e) => { e.target.checked ? selected.add(j.id) : selected.delete(j.id); compareButton.disabled = selected.size < 2; } });
      return h("tr", { "data-job-id": j.id },
        h("td", {}, box),
        h("td", {}, h("a", { href: `#/jobs/${j.id}` }, j.name), h("div", { class: "muted" }, j.id)),
        h("td", {}, statusBadge(j.status), ACTIVE.has(j.status) && j.progress.total_steps ? h("div", { class: "muted" }, `${Math.round(j.progress.fraction * 100)} %`) : null),
        h("td", {}, jobMethod(j.spec)),
        h("td", {}, jobDataset(j.spec)),
        h("td", { class: "num" }, metric ? `${metric.name} ${formatNumber(metric.value)}` : "–"),
        h("td", { class: "num" }, formatDuration(jobDuration(j))),
        h("td", {}, formatTime(j.created_at)));
    });
    table.replaceChildren(h("thead", {}, head), h("tbody", {}, body.length ? body : h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No jobs here yet."))));
    prev.disabled = state.index === 0;
    next.disabled = !state.hasMore;
    pageLabel.textContent = `page ${state.index + 1}`;
  }

  statusSelect.addEventListener("change", () => { state.status = statusSelect.value; state.cursors = [null]; state.index = 0; load(); });
  textFilter.addEventListener("input", () => { state.text = textFilter.value; draw(); });
  prev.addEventListener("click", () => { state.index -= 1; load(); });
  next.addEventListener("click", () => { state.index += 1; load(); });
  compareButton.addEventListener("click", () => { location.hash = `#/compare?ids=${[...selected].join(",")}`; });
  await load();
  // Keep statuses and progress current while something is queued or running.
  const timer = setInterval(() => { if (state.jobs.some((j) => ACTIVE.has(j.status))) load(); }, 3000);
  return () => clearInterval(timer);
}
