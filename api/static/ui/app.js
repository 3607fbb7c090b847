// The dashboard's router: the URL fragment names the page (#/jobs, #/jobs/<id>, #/compare?ids=a,b, #/new, #/sweeps/<id>).
import { api, clearKey, getKey, setKey } from "./api.js";
import { errorBox, h } from "./dom.js";
import { jobsPage } from "./jobs.js";
import { jobPage } from "./job.js";
import { comparePage } from "./compare.js";
import { newJobPage } from "./new.js";
import { sweepPage, sweepsPage } from "./sweep.js";

const root = document.getElementById("app");
let teardown = null; // the current page's cleanup (closes its live stream, stops its timers)

function route() {
  const hash = location.hash.replace(/^#/, "") || "/jobs";
  const [path, query = ""] = hash.split("?");
  const params = new URLSearchParams(query);
  const parts = path.split("/").filter(Boolean);
  return { name: parts[0] || "jobs", arg: parts[1] ? decodeURIComponent(parts[1]) : null, params };
}

async function render() {
  if (teardown) { teardown(); teardown = null; }
  const { name, arg, params } = route();
  document.getElementById("signout").hidden = !getKey();
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === name);
  if (!getKey() && name !== "signin") {
    location.hash = `#/signin?next=${encodeURIComponent(location.hash || "#/jobs")}`;
    return;
  }
  const page = h("div", { "data-page": name });
  root.replaceChildren(page);
  const pages = { signin: signinPage, jobs: jobsPage, new: newJobPage, compare: comparePage, sweeps: sweepsPage };
  try {
    if (name === "jobs" && arg) teardown = await jobPage(page, arg);
    else if (name === "sweeps" && arg) teardown = await sweepPage(page, arg);
    else if (pages[name]) teardown = await pages[name](page, params);
    else page.append(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/jobs" }, "Back to the jobs")));
  } catch (error) {
    page.append(errorBox(error));
  }
}

async function signinPage(page, params) {
  const input = h("input", { type: "password", id: "api-key", name: "api-key", autocomplete: "off", placeholder: "em_...", required: true, size: 40 });
  const remember = h("input", { type: "checkbox", id: "remember" });
  const message = h("div");
  const form = h("form", { class: "card signin", "data-testid": "signin-form" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Paste an API key. `embedmix up` prints one and saves it in its data directory; POST /v1/keys makes more."),
    h("div", { class: "field" }, h("label", { for: "api-key" }, "API key"), input),
    h("div", { class: "field" }, h("label", {}, remember, " Remember on this browser (otherwise this tab only)")),
    message,
    h("button", { class: "primary", type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setKey(input.value.trim(), remember.checked);
    try {
      await api("/v1/jobs?limit=1");
    } catch (error) {
      clearKey();
      message.replaceChildren(errorBox(error.status === 401 ? new Error("That key was not accepted.") : error));
      return;
    }
    location.hash = params.get("next") || "#/jobs";
  });
  page.append(form);
  input.focus();
}

window.addEventListener("hashchange", render);
window.addEventListener("embedmix:unauthorized", () => {
  clearKey();
  if (route().name !== "signin") location.hash = "#/signin";
});
document.getElementById("signout").addEventListener("click", () => {
  clearKey();
  location.hash = "#/signin";
});
render();
