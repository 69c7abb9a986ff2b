// Graft dashboard: plain JS over the JSON API. The token lives in localStorage; text goes in via
// textContent only (names and details come from users, so never through innerHTML).
"use strict";

const TOKEN_KEY = "graft.token";
const state = { selectedJob: null, jobStatuses: {}, lastFull: 0, timer: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function setStatus(text) { document.getElementById("status").textContent = text || ""; }

async function api(path) {
  const token = localStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const resp = await fetch(path, { headers });
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    const detail = body && typeof body.detail === "string" ? body.detail : resp.status + " " + resp.statusText;
    const err = new Error(detail);
    err.status = resp.status;
    throw err;
  }
  return body;
}

function refStr(ref) {
  if (!ref) return "—";
  if (typeof ref === "string") return ref;
  return ref.name + "@" + ref.version;
}

function fmt(v) { return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(3)) : (v ?? ""); }

function headlineMetric(m) {
  if (!m) return "";
  for (const k of ["accuracy", "task_metric", "teacher_agreement", "val_loss"]) {
    if (typeof m[k] === "number") return k.replace(/_/g, " ") + " " + fmt(m[k]);
  }
  return "";
}

// -- grid -----------------------------------------------------------------------------------------
async function refreshGrid() {
  const g = await api("/v1/grid");
  const box = document.getElementById("grid");
  const cats = g.categories || [], tasks = g.tasks || [];
  if (!cats.length || !tasks.length) {
    box.replaceChildren(el("p", { class: "empty" }, "no modules yet: push teachers with `graft` or the client"));
    return;
  }
  const cells = new Map((g.cells || []).map((c) => [c.category + "\u0000" + c.task, c]));
  const board = el("div", { class: "board", role: "grid" });
  board.style.gridTemplateColumns = `minmax(7rem, auto) repeat(${tasks.length}, minmax(9rem, 1fr))`;
  board.append(el("div", { class: "head" }, "category \\ task"), ...tasks.map((t) => el("div", { class: "head" }, t)));
  for (const cat of cats) {
    board.append(el("div", { class: "head" }, cat));
    for (const task of tasks) {
      const cell = cells.get(cat + "\u0000" + task) || { category: cat, task, status: "missing" };
      const status = cell.status || "missing";
      board.append(el("div", {
        class: "cell " + status + (cell.composition || cell.category_module ? " has-composition" : ""), role: "gridcell",
        dataset: { category: cat, task, status },
        onclick: () => showCell(cell),
      }, el("div", { class: "status" }, status), el("div", { class: "metric" }, headlineMetric(cell.metrics))));
    }
  }
  box.replaceChildren(board);
}

async function showCell(cell) {
  const box = document.getElementById("cell-detail");
  box.hidden = false;
  const title = el("h3", {}, cell.category + " × " + cell.task + " (" + cell.status + ")");
  let comp = cell.composition;
  if (typeof comp === "string") {
    try { comp = await api("/v1/compositions/" + encodeURIComponent(comp)); } catch (e) { comp = { id: comp }; }
  }
  // A cell names its pieces itself (the ones a composition would pick) even before one is made.
  comp = Object.assign({ category_module: cell.category_module, adapter: cell.adapter, task_module: cell.task_module }, comp || {});
  if (!comp.category_module && !comp.task_module) {
    const running = cell.job_id ? el("a", { href: "#jobs-section", onclick: () => selectJob(cell.job_id) }, "job " + cell.job_id.slice(0, 8)) : null;
    box.replaceChildren(...[title, el("p", { class: "empty" }, "no modules for this cell yet"), running].filter(Boolean));
    return;
  }
  const chain = el("div", { class: "lineage" },
    el("span", { class: "node" }, "f " + refStr(comp.category_module)), "→",
    el("span", { class: "node" }, "h " + (comp.adapter ? refStr(comp.adapter) : "none (native)")), "→",
    el("span", { class: "node" }, "g " + refStr(comp.task_module)));
  const parts = [title, el("p", {}, comp.id ? "composition " + comp.id : "not composed yet: POST /v1/compositions makes it"), chain];
  if (cell.selection) parts.push(el("p", { class: "selection" }, "picked by " + cell.selection.rule + ": " + cell.selection.reason));
  if (comp.adapter) parts.push(await lineageOf(comp.adapter));
  box.replaceChildren(...parts);
}

async function lineageOf(adapterRef) {
  // Where an adapter came from and where it is used: its parents (teacher, category module, student
  // task module), the job that trained it and that job's dataset, its metrics, the compositions using it.
  const ref = typeof adapterRef === "string" ? adapterRef : adapterRef.name + "@" + adapterRef.version;
  const [name, version] = ref.split("@");
  try {
    const v = await api(`/v1/modules/${encodeURIComponent(name)}/versions/${encodeURIComponent(version || "latest")}`);
    const job = v.job_id ? await api("/v1/jobs/" + encodeURIComponent(v.job_id)).catch(() => null) : null;
    const module = await api("/v1/modules/" + encodeURIComponent(v.name));
    const query = new URLSearchParams({ limit: "100" });
    if (module.category) query.set("category", module.category);
    if (module.task) query.set("task", module.task);
    const comps = ((await api("/v1/compositions?" + query)).items || [])
      .filter((c) => c.adapter && c.adapter.name === v.name && c.adapter.version === v.version);
    const byRole = (role) => (v.parents || []).filter((p) => String(p.role || "").includes(role)).map(refStr).join(", ") || "—";
    const m = v.metrics || {};
    const where = m.metrics_on === "val" ? "held-out inputs" : m.metrics_on === "train" ? "training inputs (no held-out split)" : "";
    const metrics = ["teacher_agreement", "task_metric", "val_loss", "steps"]
      .filter((k) => typeof m[k] === "number").map((k) => k.replace(/_/g, " ") + " " + fmt(m[k])).join(", ");
    const req = (job && job.request) || {};
    const rows = [
      ["adapter", v.name + "@" + v.version],
      ["teacher", byRole("teacher")],
      ["category module", byRole("category")],
      ["student task module", byRole("student")],
      ["dataset", req.dataset || "—"],
      ["job", v.job_id ? el("a", { href: "#jobs-section", onclick: () => selectJob(v.job_id) },
        v.job_id.slice(0, 8) + (req.method ? " (" + req.method + ", " + (job.status || "") + ")" : "")) : "uploaded, no job"],
      ["metrics", (metrics || "none recorded") + (where ? " on " + where : "")],
      ["compositions", comps.length ? comps.map((c) => c.id.slice(0, 8)).join(", ") : "none yet"],
    ];
    return el("div", { class: "lineage-view", dataset: { adapter: v.name + "@" + v.version } }, el("h4", {}, "lineage"),
      el("dl", {}, ...rows.flatMap(([k, val]) => [el("dt", {}, k), el("dd", { dataset: { field: k } }, val)])));
  } catch (e) {
    return el("p", { class: "empty" }, "lineage unavailable: " + e.message);
  }
}

// -- jobs -----------------------------------------------------------------------------------------
function progressOf(j) {
  const p = j.progress || {};
  const epochs = p.epochs || 0;
  const epoch = j.status === "succeeded" && epochs ? epochs : p.epoch || 0;
  return { epoch, epochs, loss: p.loss };
}

async function refreshJobs() {
  const page = await api("/v1/jobs?limit=25");
  const rows = (page.items || []).map((j) => {
    const { epoch, epochs, loss } = progressOf(j);
    const bar = el("progress", epochs ? { max: epochs, value: epoch } : {});
    const result = j.result && j.result.adapter ? refStr(j.result.adapter) + " " + headlineMetric(j.result.metrics) : (j.error || "");
    return el("tr", {
      class: "job clickable" + (state.selectedJob === j.id ? " selected" : ""), dataset: { jobId: j.id, status: j.status },
      onclick: () => selectJob(j.id),
    }, el("td", {}, el("code", {}, j.id.slice(0, 8))), el("td", {}, j.kind || ""),
    el("td", { class: j.status }, j.status), el("td", {}, bar, " ", el("span", { class: "progress-text" }, epochs ? `${epoch}/${epochs}` : "")),
    el("td", { class: "loss" }, fmt(loss)), el("td", {}, result));
  });
  const tbody = document.querySelector("#jobs tbody");
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 6, class: "empty" }, "no jobs yet"))]));
  let changed = false;
  for (const j of page.items || []) {
    if (state.jobStatuses[j.id] !== j.status) changed = true;
    state.jobStatuses[j.id] = j.status;
  }
  return { changed, running: (page.items || []).some((j) => j.status === "running" || j.status === "queued") };
}

async function selectJob(id) {
  state.selectedJob = id;
  const j = await api("/v1/jobs/" + encodeURIComponent(id));
  const box = document.getElementById("job-detail");
  box.hidden = false;
  const req = j.request || {};
  box.replaceChildren(
    el("h3", {}, "job " + j.id + " — " + j.status),
    el("p", {}, (req.method || j.kind || "") + ": " + refStr(req.category_module) + " → " + refStr(req.student_task_module)
      + (req.teacher_task_module ? " (teacher " + refStr(req.teacher_task_module) + ")" : "")),
    lossCurve(j.history || []),
    j.error ? el("pre", { class: "failed" }, j.error) : el("pre", {}, JSON.stringify(j.result || j.progress || {}, null, 2)));
}

function lossCurve(history) {
  const ns = "http://www.w3.org/2000/svg";
  const W = 420, H = 150, P = 30;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "curve");
  svg.setAttribute("width", W); svg.setAttribute("height", H);
  const series = [["loss", "#2563eb"], ["val_loss", "#dc2626"]]
    .map(([key, color]) => [key, color, history.map((h, i) => [h.epoch ?? i + 1, h[key]]).filter(([, v]) => typeof v === "number" && isFinite(v))])
    .filter(([, , pts]) => pts.length);
  const all = series.flatMap(([, , pts]) => pts);
  const text = (x, y, s) => { const t = document.createElementNS(ns, "text"); t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("font-size", "10"); t.textContent = s; svg.append(t); };
  if (!all.length) { text(P, H / 2, "no loss history yet"); return svg; }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-9);
  const sx = (x) => P + ((x - x0) / (x1 - x0)) * (W - 2 * P), sy = (y) => H - P + ((y0 - y) / (y1 - y0)) * (H - 2 * P);
  for (const [key, color, pts] of series) {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", pts.map(([x, y]) => sx(x) + "," + sy(y)).join(" "));
    line.setAttribute("fill", "none"); line.setAttribute("stroke", color); line.setAttribute("stroke-width", "2");
    line.setAttribute("data-series", key);
    svg.append(line);
  }
  text(2, P - 4, fmt(y1)); text(2, H - P + 4, fmt(y0)); text(W - P, H - 8, "epoch " + x1);
  text(P + 4, 12, series.map(([k]) => k).join(" / "));
  return svg;
}

// -- modules --------------------------------------------------------------------------------------
async function refreshModules() {
  const page = await api("/v1/modules?limit=100");
  const rows = (page.items || []).map((m) => el("tr", {
    class: "module clickable", dataset: { name: m.name }, onclick: () => showModule(m.name),
  }, el("td", {}, m.name), el("td", {}, m.kind), el("td", {}, m.category || ""), el("td", {}, m.task || ""),
  el("td", {}, m.latest_version ?? (m.versions ? m.versions.length : ""))));
  document.querySelector("#modules tbody").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 5, class: "empty" }, "no modules yet"))]));
}

async function showModule(name) {
  const m = await api("/v1/modules/" + encodeURIComponent(name));
  const box = document.getElementById("module-detail");
  box.hidden = false;
  const rows = (m.versions || []).map((v) => el("tr", {}, el("td", {}, v.version), el("td", {}, v.format),
    el("td", {}, JSON.stringify(v.input_shape)), el("td", {}, JSON.stringify(v.output_shape)),
    el("td", {}, (v.parents || []).map(refStr).join(", ")), el("td", {}, headlineMetric(v.metrics))));
  box.replaceChildren(el("h3", {}, m.name + " (" + m.kind + ")"),
    el("table", {}, el("thead", {}, el("tr", {}, ...["version", "format", "input", "output", "parents", "metric"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows)));
}

// -- loop -----------------------------------------------------------------------------------------
function schedule(ms) {
  clearTimeout(state.timer);  // one refresh loop, even when the token is changed mid-wait
  state.timer = setTimeout(tick, ms);
}

async function tick() {
  try {
    const { changed, running } = await refreshJobs();
    const now = Date.now();
    if (changed || now - state.lastFull > 10000) {
      await Promise.all([refreshGrid(), refreshModules()]);
      state.lastFull = now;
    }
    if (state.selectedJob && (running || changed)) await selectJob(state.selectedJob);
    setStatus("");
    schedule(running ? 1000 : 4000);
  } catch (e) {
    setStatus(e.status === 401 || e.status === 403 ? "paste a token with the read scope: " + e.message : e.message);
    schedule(5000);
  }
}

document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const value = document.getElementById("token").value.trim();
  if (value) localStorage.setItem(TOKEN_KEY, value); else localStorage.removeItem(TOKEN_KEY);
  state.lastFull = 0;
  schedule(0);
});
document.getElementById("token").value = localStorage.getItem(TOKEN_KEY) || "";
tick();
