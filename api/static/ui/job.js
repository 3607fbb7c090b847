// One job followed live: progress and ETA, loss and evaluation curves from the event stream,
// the events log, checkpoints, final metrics, model card, downloads and the embedding map.
import { api, ApiError, apiAll, download, followStream } from "./api.js";
import { formatNumber, lineChart, PALETTE, scatter } from "./charts.js";
import { ACTIVE, errorBox, formatDuration, formatTime, h, jobDataset, jobDuration, jobMethod, statusBadge } from "./dom.js";

export async function jobPage(page, jobId) {
  let job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
  const series = new Map(); // name -> [[step, value], ...]
  const rate = []; // recent (time, step) samples for the ETA
  const controller = new AbortController();

  const title = h("h1", {}, job.name);
  const badge = h("span");
  const cancelButton = h("button", { class: "danger", "data-testid": "cancel-job" }, "Cancel");
  const bar = h("div");
  const progressText = h("span", { class: "muted", "data-testid": "progress-text" });
  const facts = h("dl", { class: "kv" });
  const errorSlot = h("div");
  const lossBox = h("div");
  const evalBox = h("div");
  const eventsBody = h("tbody");
  const checkpoints = h("div");
  const finalMetrics = h("div", { "data-testid": "final-metrics" });
  const downloads = h("div", { class: "row", "data-testid": "downloads" });
  const card = h("div");
  const mapBox = h("div", { "data-testid": "map-box" });
  for (const box of [finalMetrics, downloads, mapBox, checkpoints, card]) box.append(h("p", { class: "muted" }, "When the job ends."));

  page.append(
    h("div", { class: "row" }, title, badge, h("span", { class: "spacer" }),
      h("a", { class: "button", href: `#/compare?ids=${job.id}` }, "Compare…"), cancelButton),
    h("div", { class: "card" },
      h("div", { class: "row" }, h("div", { class: "progress", "data-testid": "progress-bar" }, bar), progressText),
      errorSlot, facts),
    h("div", { class: "grid2" },
      h("div", { class: "card" }, h("h2", {}, "Training loss"), lossBox),
      h("div", { class: "card" }, h("h2", {}, "Evaluation"), evalBox)),
    h("div", { class: "grid2" },
      h("div", { class: "card" }, h("h2", {}, "Final metrics"), finalMetrics, h("h2", {}, "Downloads"), downloads),
      h("div", { class: "card" }, h("h2", {}, "Embedding map of the test set"), mapBox)),
    h("div", { class: "card" }, h("h2", {}, "Events"), h("div", { class: "log" }, h("table", { "data-testid": "events" }, eventsBody))),
    h("div", { class: "grid2" },
      h("div", { class: "card" }, h("h2", {}, "Checkpoints"), checkpoints),
      h("div", { class: "card" }, h("h2", {}, "Model card"), card)));

  const lossChart = lineChart(lossBox, { yLabel: "loss", testId: "loss-chart" });
  const evalChart = lineChart(evalBox, { yLabel: "metric", testId: "eval-chart" });

  cancelButton.addEventListener("click", async () => {
    cancelButton.disabled = true;
    try {
      showJob(await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" }));
    } catch (error) {
      errorSlot.replaceChildren(errorBox(error));
      cancelButton.disabled = false;
    }
  });

  function showJob(next) {
    job = next;
    badge.replaceChildren(statusBadge(job.status));
    cancelButton.hidden = !ACTIVE.has(job.status);
    cancelButton.disabled = job.status === "cancelling";
    showProgress(job.progress);
    const spec = job.spec;
    facts.replaceChildren(...[
      ["id", job.id], ["method", jobMethod(spec)], ["dataset", jobDataset(spec)],
      ["encoder", `${spec.model.encoder}, ${spec.model.embedding_dim}-d`],
      ["training", `${spec.train.epochs} epochs, batch ${spec.train.batch_size}, lr ${spec.train.lr}`],
      ["created", formatTime(job.created_at)], ["duration", formatDuration(jobDuration(job))],
      ["attempts", `${job.attempts} of ${job.max_attempts}`],
    ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    errorSlot.replaceChildren(...(job.error ? [errorBox(new Error(`${job.error.code}: ${job.error.message}`))] : []));
    if (!ACTIVE.has(job.status)) showOutputs();
  }

  function showProgress(progress) {
    const fraction = progress.fraction || (job.status === "succeeded" ? 1 : 0);
    bar.style.width = `${(fraction * 100).toFixed(1)}%`;
    const now = Date.now() / 1000;
    if (progress.step > 0) rate.push([now, progress.step]); // before step 1 the data is still loading
    while (rate.length > 2 && now - rate[0][0] > 30) rate.shift();
    let eta = "";
    if (job.status === "running" && progress.total_steps && rate.length >= 2) {
      const [[t0, s0], [t1, s1]] = [rate[0], rate[rate.length - 1]];
      if (s1 > s0) eta = `, about ${formatDuration(((progress.total_steps - s1) * (t1 - t0)) / (s1 - s0))} left`;
    }
    const total = progress.total_steps ? ` / ${progress.total_steps}` : "";
    progressText.textContent = `step ${progress.step}${total}, epoch ${progress.epoch} (${Math.round(fraction * 100)} %)${eta}`;
  }

  function addPoints(points) {
    for (const p of points) {
      if (!series.has(p.name)) series.set(p.name, []);
      const list = series.get(p.name);
      const at = list.findIndex((q) => q[0] >= p.step);
      if (at >= 0 && list[at][0] === p.step) list[at] = [p.step, p.value]; // a replayed step overwrites
      else if (at >= 0) list.splice(at, 0, [p.step, p.value]);
      else list.push([p.step, p.value]);
    }
    lossChart.update([...series].filter(([n]) => !n.startsWith("eval/")).map(([n, pts], i) => ({ label: n, color: PALETTE[i], points: pts })));
    evalChart.update([...series].filter(([n]) => n.startsWith("eval/")).map(([n, pts], i) => ({ label: n.slice(5), color: PALETTE[i], points: pts })));
  }

  function addEvent(e) {
    eventsBody.append(h("tr", { class: `level-${e.level}` },
      h("td", { class: "muted" }, new Date(e.time).toLocaleTimeString()), h("td", {}, e.type), h("td", {}, e.message)));
    eventsBody.parentElement.parentElement.scrollTop = 1e9;
  }

  let outputsShown = false;
  async function showOutputs() {
    if (outputsShown) return;
    outputsShown = true;
    showFinalMetrics();
    const rows = await apiAll(`/v1/jobs/${job.id}/checkpoints?limit=100`).catch(() => []);
    checkpoints.replaceChildren(rows.length ? h("table", {}, h("tr", {}, ["step", "epoch", "size", ""].map((c) => h("th", {}, c))),
      rows.map((c) => h("tr", {}, h("td", {}, c.step), h("td", {}, c.epoch), h("td", {}, `${(c.bytes / 1024).toFixed(0)} KiB`),
        h("td", {}, h("button", { onclick: () => download(`/v1/jobs/${job.id}/checkpoints/${c.id}/content`, `${c.id}.ckpt`) }, "download")))))
      : h("p", { class: "muted" }, "No checkpoints."));
    if (job.status !== "succeeded") {
      downloads.replaceChildren(h("p", { class: "muted" }, `The model exists once a job has succeeded; this one ${job.status}.`));
      card.replaceChildren(h("p", { class: "muted" }, "–"));
      mapBox.replaceChildren(h("p", { class: "muted" }, "–"));
      return;
    }
    downloads.replaceChildren(...(job.spec.export.formats || []).map((f) => h("button", {
      "data-format": f, onclick: () => download(`/v1/jobs/${job.id}/model?format=${f}`, `${job.name}-${f}`).catch((e) => downloads.append(errorBox(e))),
    }, `Download ${f}`)));
    showCard();
    showMap();
  }

  function showFinalMetrics() {
    const names = Object.keys(job.metrics || {}).sort();
    finalMetrics.replaceChildren(names.length ? h("table", {}, names.map((n) => h("tr", {}, h("td", {}, n), h("td", { class: "num" }, formatNumber(job.metrics[n])))))
      : h("p", { class: "muted" }, "No evaluation values."));
  }

  async function showCard() {
    try {
      const body = await api(`/v1/jobs/${job.id}/model/card`);
      const input = body.input || {};
      card.replaceChildren(
        h("dl", { class: "kv" }, [
          ["embedding size", body.embedding_dim], ["input shape", JSON.stringify(input.shape)], ["input dtype", input.dtype],
        ].filter(([, v]) => v !== undefined).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])),
        h("details", {}, h("summary", {}, "The whole card (JSON)"), h("pre", { "data-testid": "model-card" }, JSON.stringify(body, null, 2))));
    } catch (error) {
      card.replaceChildren(errorBox(error));
    }
  }

  async function showMap() {
    let data;
    try {
      data = await api(`/v1/jobs/${job.id}/projection`);
    } catch (error) {
      mapBox.replaceChildren(h("p", { class: "muted" }, error instanceof ApiError && error.status === 404 ? "No map for this job." : error.message));
      return;
    }
    const plot = h("div");
    const note = h("p", { class: "muted" });
    const tabs = h("div", { class: "tabs" });
    function pick(m) {
      for (const b of tabs.children) b.classList.toggle("active", b.dataset.method === m.method);
      plot.replaceChildren();
      scatter(plot, { coords: m.coords, labels: data.labels, labelKind: data.label_kind, classNames: data.class_names });
      const variance = m.explained_variance ? `; the two axes explain ${m.explained_variance.map((v) => `${(v * 100).toFixed(0)} %`).join(" and ")} of the variance` : "";
      note.textContent = `${data.points} of ${data.total_points} test points, ${m.method.toUpperCase()}${variance}.`;
    }
    tabs.append(...data.maps.map((m) => h("button", { "data-method": m.method, onclick: () => pick(m) }, m.method.toUpperCase())));
    mapBox.replaceChildren(tabs, plot, note);
    pick(data.maps[data.maps.length - 1]);
  }

  showJob(job);
  // The stream replays the whole history first (metrics, events), then follows; it ends after the final status.
  followStream(`/v1/jobs/${job.id}/stream`, (m) => {
    if (m.event === "progress") showProgress(m.data);
    else if (m.event === "metrics") addPoints(m.data.points);
    else if (m.event === "event") addEvent(m.data);
    else if (m.event === "status") showJob(m.data);
  }, controller.signal).catch((error) => errorSlot.replaceChildren(errorBox(error)));
  return () => controller.abort();
}
