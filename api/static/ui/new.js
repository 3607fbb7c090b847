// A new job: a form built from GET /v1/catalog, kept in step with an editable JSON view of the spec.
// The API validates; its messages (422 details: [{field, message}]) are shown beside the fields they name.
import { api, apiAll } from "./api.js";
import { errorBox, h } from "./dom.js";

const START = {
  name: "my-job",
  dataset: { name: "mnist1d", split: { kind: "random", test_fraction: 0.2 } },
  model: { encoder: "mlp", embedding_dim: 64 },
  objective: { loss: "supcon" },
  train: { epochs: 10, batch_size: 128, lr: 0.001, seed: 0 },
  eval: { metrics: ["precision_at_1", "map_at_r"] },
  export: { formats: ["safetensors", "onnx"] },
};

function getPath(obj, path) {
  return path.split(".").reduce((o, k) => (o && typeof o === "object" ? o[k] : undefined), obj);
}

function setPath(obj, path, value) {
  const keys = path.split(".");
  let o = obj;
  for (const k of keys.slice(0, -1)) {
    if (!o[k] || typeof o[k] !== "object") o[k] = {};
    o = o[k];
  }
  const last = keys[keys.length - 1];
  if (value === undefined) delete o[last];
  else o[last] = value;
}

export async function newJobPage(page) {
  const [catalog, uploads] = await Promise.all([api("/v1/catalog"), apiAll("/v1/datasets?limit=100", 5).catch(() => [])]);
  const byName = (section, name) => catalog[section].find((e) => e.name === name);
  let spec = structuredClone(START);
  const form = h("form", { "data-testid": "job-form", novalidate: true });
  const json = h("textarea", { rows: 40, spellcheck: "false", "data-testid": "spec-json", "aria-label": "the spec as JSON" });
  const jsonNote = h("div", { class: "field-error" });
  const general = h("div");
  const submit = h("button", { class: "primary", type: "submit", "data-testid": "submit-job" }, "Submit job");

  page.append(h("h1", {}, "New job"),
    h("div", { class: "grid2" },
      h("div", { class: "card" }, form),
      h("div", { class: "card" }, h("h2", {}, "Spec (JSON, editable)"),
        h("p", { class: "muted" }, "The form and this text are the same spec: edit either. Fields the form does not show can be set here."),
        json, jsonNote)));

  function field(path, label, control, help = "") {
    control.dataset.field = path;
    return h("div", { class: "field", "data-field-box": path },
      h("label", {}, label), control, help ? h("div", { class: "help" }, help) : null, h("div", { class: "field-error" }));
  }

  function numberInput(path, { step = "any", placeholder = "" } = {}) {
    const input = h("input", { type: "number", step, placeholder });
    const value = getPath(spec, path);
    if (value !== undefined && value !== null) input.value = value;
    input.addEventListener("input", () => {
      const raw = input.value.trim();
      setPath(spec, path, raw === "" ? undefined : Number(raw));
      changed(false);
    });
    return input;
  }

  function textInput(path) {
    const input = h("input", { type: "text", value: getPath(spec, path) ?? "" });
    input.addEventListener("input", () => { setPath(spec, path, input.value || undefined); changed(false); });
    return input;
  }

  function select(path, options, { onChange = null, rebuild = false } = {}) {
    const control = h("select", {}, options.map(([value, label]) => h("option", { value }, label)));
    control.value = getPath(spec, path) ?? options[0][0];
    control.addEventListener("change", () => {
      setPath(spec, path, control.value === "" ? undefined : control.value);
      if (onChange) onChange(control.value);
      changed(rebuild);
    });
    return control;
  }

  function paramInputs(section, entry, prefix) {
    if (!entry || !entry.params.length) return null;
    return h("div", { class: "params" }, entry.params.map((p) => {
      const path = p.name === "size" && section === "datasets" ? "dataset.size" : `${prefix}.params.${p.name}`;
      const range = [p.min !== null ? `min ${p.min}` : "", p.max !== null ? `max ${p.max}` : ""].filter(Boolean).join(", ");
      const help = [p.help, range, `default ${JSON.stringify(p.default)}`].filter(Boolean).join("; ");
      let control;
      if (p.choices) control = select(path, [["", `default (${p.default})`], ...p.choices.map((c) => [c, c])]);
      else if (p.type === "bool") control = select(path, [["", `default (${p.default})`], ["true", "true"], ["false", "false"]]);
      else if (p.type === "int" || p.type === "float") control = numberInput(path, { step: p.type === "int" ? "1" : "any", placeholder: String(p.default ?? "") });
      else control = textInput(path);
      if (p.type === "bool") control.addEventListener("change", () => { setPath(spec, path, control.value === "" ? undefined : control.value === "true"); changed(false); });
      return field(path, p.name, control, help);
    }));
  }

  function checkboxes(path, names, labelOf = (n) => n) {
    const chosen = new Set(getPath(spec, path) || []);
    const box = h("div", { class: "checks" }, names.map((n) => h("label", {},
      h("input", { type: "checkbox", value: n, checked: chosen.has(n), onchange: (e) => {
        e.target.checked ? chosen.add(n) : chosen.delete(n);
        setPath(spec, path, chosen.size ? names.filter((x) => chosen.has(x)) : undefined);
        changed(false);
      } }), ` ${labelOf(n)}`)));
    box.dataset.field = path;
    return h("div", { class: "field", "data-field-box": path }, box, h("div", { class: "field-error" }));
  }

  function buildForm() {
    const datasetValue = spec.dataset && spec.dataset.id ? spec.dataset.id : (spec.dataset && spec.dataset.name) || "";
    const datasetOptions = [...catalog.datasets.map((d) => [d.name, `${d.name} (built in)`]),
      ...uploads.map((d) => [d.id, `${d.filename} (${d.id})`])];
    const datasetSelect = h("select", {}, datasetOptions.map(([v, l]) => h("option", { value: v }, l)));
    datasetSelect.dataset.field = "dataset.name";
    datasetSelect.value = datasetValue;
    datasetSelect.addEventListener("change", () => {
      const v = datasetSelect.value;
      const split = spec.dataset && spec.dataset.split;
      spec.dataset = v.startsWith("ds_") ? { id: v } : { name: v };
      if (split) spec.dataset.split = split;
      changed(true);
    });
    const dataset = byName("datasets", spec.dataset && spec.dataset.name);
    const task = dataset ? dataset.task : null;
    const loss = byName("losses", spec.objective && spec.objective.loss);
    const mixName = spec.mixup && spec.mixup.method;
    const mix = byName("mixups", mixName);
    const metrics = catalog.metrics.filter((m) => !task || !m.task || m.task === task).map((m) => m.name);
    const encoder = byName("encoders", spec.model && spec.model.encoder);
    const textEncoder = Boolean(encoder && encoder.extra && encoder.extra.input === "text");
    const formats = catalog.exports.filter((f) => textEncoder || !f.text_only).map((f) => f.name);
    const mixOptions = [["", "none"], ...catalog.mixups.map((m) => [m.name, m.name])];
    const encoderSelect = select("model.encoder", catalog.encoders.map((e) => [e.name, e.name]), { rebuild: true });
    encoderSelect.addEventListener("change", () => { if (spec.model) delete spec.model.params; });

    form.replaceChildren(
      field("name", "Name", textInput("name")),
      h("fieldset", {}, h("legend", {}, "Data"),
        h("div", { class: "field", "data-field-box": "dataset" }, h("label", {}, "Dataset"), datasetSelect,
          h("div", { class: "help" }, dataset ? dataset.summary : "an uploaded dataset"), h("div", { class: "field-error" })),
        paramInputs("datasets", dataset, "dataset"),
        h("div", { class: "params" },
          field("dataset.split.kind", "Split", select("dataset.split.kind", [["random", "random"], ["given", "given (the file's own)"], ["classes", "hold out classes"]], { rebuild: false })),
          field("dataset.split.test_fraction", "Test fraction", numberInput("dataset.split.test_fraction")))),
      h("fieldset", {}, h("legend", {}, "Model"),
        h("div", { class: "params" },
          field("model.encoder", "Encoder", encoderSelect),
          field("model.embedding_dim", "Embedding size", numberInput("model.embedding_dim", { step: "1" })),
          field("model.width", "Width", numberInput("model.width", { step: "1", placeholder: "encoder default" }))),
        paramInputs("encoders", byName("encoders", spec.model && spec.model.encoder), "model")),
      h("fieldset", {}, h("legend", {}, "Objective"),
        field("objective.loss", "Loss", select("objective.loss", catalog.losses.map((l) => [l.name, l.name]), {
          rebuild: true, onChange: () => { delete spec.objective.params; } }), loss ? loss.summary : ""),
        paramInputs("losses", loss, "objective")),
      h("fieldset", {}, h("legend", {}, "Mixing"),
        field("mixup.method", "Method", select("mixup.method", mixOptions, {
          rebuild: true, onChange: (v) => { spec.mixup = v ? { method: v } : undefined; if (!v) delete spec.mixup; } }), mix ? mix.summary : "no mixing"),
        mix ? h("div", { class: "params" }, ...commonInputs(mix)) : null,
        paramInputs("mixups", mix, "mixup")),
      h("fieldset", {}, h("legend", {}, "Training"),
        h("div", { class: "params" },
          field("train.epochs", "Epochs", numberInput("train.epochs", { step: "1" })),
          field("train.batch_size", "Batch size", numberInput("train.batch_size", { step: "1" })),
          field("train.lr", "Learning rate", numberInput("train.lr")),
          field("train.seed", "Seed", numberInput("train.seed", { step: "1" })))),
      h("fieldset", {}, h("legend", {}, "Evaluation metrics"), checkboxes("eval.metrics", metrics)),
      h("fieldset", {}, h("legend", {}, "Export formats"), checkboxes("export.formats", formats)),
      general,
      h("div", { class: "row" }, submit));
  }

  // The common mixing fields (alpha, level, weight) a method uses, with its defaults as placeholders:
  // the catalog lists them, and a field the method does not use is refused by the API, so none is shown.
  function commonInputs(mix) {
    return (mix.common || []).map((p) => p.choices
      ? field(`mixup.${p.name}`, p.name, select(`mixup.${p.name}`, [["", `default (${p.default})`], ...p.choices.map((c) => [c, c])]))
      : field(`mixup.${p.name}`, p.name, numberInput(`mixup.${p.name}`, { placeholder: `default ${p.default}` })));
  }

  function changed(rebuild) {
    json.value = JSON.stringify(spec, null, 2);
    jsonNote.textContent = "";
    if (rebuild) buildForm();
  }

  json.addEventListener("input", () => {
    try {
      const parsed = JSON.parse(json.value);
      if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error("a spec is a JSON object");
      spec = parsed;
      jsonNote.textContent = "";
      buildForm();
    } catch (error) {
      jsonNote.textContent = `Not valid JSON yet: ${error.message}`;
    }
  });

  function showErrors(error) {
    for (const box of form.querySelectorAll(".field.invalid")) box.classList.remove("invalid");
    for (const slot of form.querySelectorAll(".field-error")) slot.textContent = "";
    general.replaceChildren();
    const details = error.details && error.details.length ? error.details : [{ field: error.param, message: error.message }];
    const unplaced = [];
    for (const d of details) {
      // The nearest box for the field: "objective.params.margin", else "objective.params", else "objective" ...
      let box = null;
      for (let path = d.field || ""; path && !box; path = path.includes(".") ? path.slice(0, path.lastIndexOf(".")) : "") {
        box = form.querySelector(`[data-field-box="${CSS.escape(path)}"]`);
      }
      if (box) {
        box.classList.add("invalid");
        const slot = box.querySelector(".field-error");
        slot.textContent = [slot.textContent, d.message].filter(Boolean).join("; ");
      } else {
        unplaced.push(d);
      }
    }
    general.append(errorBox(new Error(`The API refused the spec: ${error.message}`)),
      ...unplaced.map((d) => h("div", { class: "field-error" }, `${d.field || "spec"}: ${d.message}`)));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    try {
      const job = await api("/v1/jobs", { method: "POST", body: spec });
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      if (error.status === 422) showErrors(error);
      else general.replaceChildren(errorBox(error));
    } finally {
      submit.disabled = false;
    }
  });

  buildForm();
  changed(false);
}
