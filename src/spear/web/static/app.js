// spear's dashboard: plain DOM, no build step. Pages by path: /, /tasks/ID, /objects.
"use strict";

const main = document.getElementById("main");
let info = { role: "", features: [] };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}

async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

async function postJSON(url, body) {
  const r = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", "x-spear-csrf": info.caller?.csrf || "" },
    body: JSON.stringify(body),
  });
  const answer = await r.json();
  if (!r.ok) throw new Error(answer.error || r.statusText);
  return answer;
}
const mayRun = () => info.caller?.may_run || [];
const terminal = (s) => ["COMPLETED", "FAILED", "CANCELLED"].includes(s);

const time = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "");
const stamp = (t) => (t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 23) : "");
function duration(a, b) {
  if (!a || !b) return "";
  const s = b - a;
  return s < 1 ? `${(s * 1000).toFixed(1)} ms` : `${s.toFixed(2)} s`;
}
function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}
function bar(used, total) {
  const pct = total ? Math.round((100 * used) / total) : 0;
  return el("span", {}, el("span", { class: "bar", title: `${pct}% used` },
    el("span", { style: `width:${pct}%` })), `${pct}%`);
}
const base = (p) => p.split("/").pop();

// -- overview: nodes and live tasks ----------------------------------------------------

async function overview() {
  const nodesBody = el("tbody");
  const tasksBody = el("tbody");
  const filter = el("select", {},
    ...["", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"].map(
      (s) => el("option", { value: s }, s || "all states")));
  const live = el("span", { class: "live", hidden: true }, "live");
  const known = el("datalist", { id: "known-artifacts" });
  const modelsBody = el("tbody");
  main.replaceChildren(
    ...(mayRun().length ? [submitForm(known)] : []),
    el("h2", {}, "Nodes"),
    el("table", { id: "nodes" }, el("thead", {}, el("tr", {},
      ...["Node", "Health", "Address", "Running", "Queued", "CPU used", "Memory used", "Runtimes"]
        .map((h) => el("th", {}, h)))), nodesBody),
    ...(info.features.includes("models") ? [el("h2", {}, "Models"),
      el("table", { id: "models" }, el("thead", {}, el("tr", {},
        ...["Model", "Backend", "Serves", "Calls", "Failed", "Tokens", "Tokens/s", "Running", "Backend slots"]
          .map((h) => el("th", {}, h)))), modelsBody)] : []),
    el("h2", {}, "Tasks", live, filter),
    el("table", { id: "tasks" }, el("thead", {}, el("tr", {},
      ...["Task", "State", "Agent", "Node", "Created", "Took", "Exit", "Reason"]
        .map((h) => el("th", {}, h)))), tasksBody),
  );

  async function refreshNodes() {
    try {
      const nodes = await getJSON("/api/nodes");
      nodesBody.replaceChildren(...nodes.map((n) => el("tr", { "data-node": n.name },
        el("td", {}, n.name), el("td", { class: `state ${n.health}` }, n.health),
        el("td", { class: "mono" }, n.address),
        el("td", { class: "running" }, n.running_tasks), el("td", {}, n.queued_tasks),
        el("td", {}, bar(n.cpu_millis - n.cpu_free_millis, n.cpu_millis)),
        el("td", {}, bar(n.memory_bytes - n.memory_free_bytes, n.memory_bytes)),
        el("td", {}, n.runtimes.join(", ")))));
      if (!nodes.length) nodesBody.replaceChildren(el("tr", {}, el("td", { class: "empty", colSpan: 8 }, "no nodes")));
    } catch (e) { /* the next refresh tries again */ }
  }
  async function refreshModels() {
    if (!info.features.includes("models")) return;
    try {
      const models = await getJSON("/api/models");
      modelsBody.replaceChildren(...models.map((m) => el("tr", { "data-model": m.name },
        el("td", {}, m.name, m.default ? el("span", { class: "muted" }, " (default)") : ""),
        el("td", {}, `${m.backend} (${m.kind})`), el("td", { class: "mono" }, m.target),
        el("td", { class: "calls" }, m.requests), el("td", {}, m.failed || ""),
        el("td", { class: "tokens" }, m.tokens), el("td", {}, m.tokens_per_second || ""),
        el("td", {}, m.in_flight),
        el("td", { class: "slots" }, `${m.slots_in_use} of ${m.slots} in use`,
          m.waiting ? ` · ${m.waiting} waiting` : ""))));
    } catch (e) { /* the next refresh tries again */ }
  }
  const refreshLoad = () => { refreshNodes(); refreshModels(); };
  refreshLoad();
  setInterval(refreshLoad, 2000);
  let nodesSoon = null; // a task started or ended: the load changed, show it now
  const refreshNodesSoon = () => {
    if (!nodesSoon) nodesSoon = setTimeout(() => { nodesSoon = null; refreshNodes(); }, 150);
  };

  function row(t) {
    return el("tr", { "data-task-id": t.id, "data-state": t.state },
      el("td", { class: "mono" }, el("a", { href: `/tasks/${t.id}` }, t.id)),
      el("td", { class: `state ${t.state}` }, t.state),
      el("td", { class: "mono", title: t.artifact }, [base(t.artifact), ...t.args].join(" ")),
      el("td", {}, t.node || ""), el("td", {}, time(t.created_at)),
      el("td", {}, duration(t.created_at, t.finished_at)),
      el("td", {}, t.exit_code ?? ""), el("td", {}, t.reason || ""));
  }

  let source = null;
  function connect() {
    if (source) source.close();
    const state = filter.value ? `&state=${filter.value}` : "";
    source = new EventSource(`/api/events/tasks?limit=100${state}`);
    source.addEventListener("snapshot", (e) => {
      const tasks = JSON.parse(e.data);
      const seen = [...new Set(tasks.map((t) => t.artifact))].slice(0, 20);
      known.replaceChildren(...seen.map((a) => el("option", { value: a })));
      tasksBody.replaceChildren(...tasks.map(row));
      if (!tasks.length) tasksBody.append(el("tr", { class: "none" }, el("td", { class: "empty", colSpan: 8 }, "no tasks yet")));
      live.hidden = false;
    });
    source.addEventListener("task", (e) => {
      const t = JSON.parse(e.data);
      const fresh = row(t);
      fresh.classList.add("fresh");
      const old = tasksBody.querySelector(`tr[data-task-id="${t.id}"]`);
      tasksBody.querySelector("tr.none")?.remove();
      if (old) old.replaceWith(fresh); else tasksBody.prepend(fresh);
      refreshNodesSoon();
    });
    source.onerror = () => { live.hidden = true; };
    source.onopen = () => { live.hidden = false; };
  }
  filter.onchange = connect;
  connect();
}

// -- submitting: the caller's runtimes, an artifact on the node, args ---------------------

function submitForm(known) {
  const runtime = el("select", { name: "runtime" },
    ...mayRun().map((r) => el("option", { value: r }, r)));
  const artifact = el("input", { name: "artifact", required: true, size: 40,
    placeholder: "/path/on/the/node/agent.wasm, or a command" });
  artifact.setAttribute("list", "known-artifacts");
  const args = el("input", { name: "args", size: 30, placeholder: "args, as a shell splits them" });
  const stdin = el("input", { name: "stdin", size: 16, placeholder: "stdin (optional)" });
  const timeout = el("input", { name: "timeout_s", type: "number", min: "0", step: "any",
    placeholder: "timeout s", style: "width:7em" });
  const button = el("button", { type: "submit", id: "submit-task" }, "Run");
  const said = el("span", { id: "submit-result", class: "muted" });
  const form = el("form", { id: "submit" }, runtime, artifact, known, args, stdin, timeout, button, said);
  form.onsubmit = async (e) => {
    e.preventDefault();
    button.disabled = true;
    said.className = "muted";
    said.textContent = "submitting…";
    try {
      const t = await postJSON("/api/tasks", {
        runtime: runtime.value, artifact: artifact.value, args: args.value, stdin: stdin.value,
        timeout_s: timeout.value ? Number(timeout.value) : null });
      said.replaceChildren("submitted ", el("a", { href: `/tasks/${t.id}`, class: "mono" }, t.id));
    } catch (err) {
      said.className = "error";
      said.textContent = err.message;
    } finally { button.disabled = false; }
  };
  return el("section", {}, el("h2", {}, "Run a task"), form);
}

// -- one task: record, history, result, logs as written ---------------------------------

async function taskPage(id) {
  const fields = el("dl", { id: "fields" });
  const history = el("tbody");
  const spec = el("pre", { class: "mono", id: "spec" });
  const result = el("pre", { class: "mono", id: "result" }, "(when the task has finished)");
  const logs = el("pre", { class: "mono logs", id: "logs" });
  const live = el("span", { class: "live" }, "following");
  const hasLogs = info.features.includes("logs");
  const cancel = el("button", { id: "cancel-task", hidden: true }, "Cancel");
  const said = el("span", { id: "cancel-result", class: "error" });
  cancel.onclick = async () => {
    cancel.disabled = true;
    try { await postJSON(`/api/tasks/${encodeURIComponent(id)}/cancel`, {}); said.textContent = ""; }
    catch (err) { said.textContent = err.message; cancel.disabled = false; }
  };
  main.replaceChildren(
    el("h2", {}, "Task ", el("span", { class: "mono" }, id), cancel, said),
    el("div", { class: "grid" },
      el("div", {}, fields, el("h2", {}, "State history"),
        el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "State"), el("th", {}, "At"))), history)),
      el("div", {}, el("h2", {}, "Spec"), spec)),
    ...(hasLogs ? [el("h2", {}, "Logs", live), logs, el("h2", {}, "Result"), result] : []),
  );

  let shownResult = false;
  function show(t) {
    const put = (k, v, cls = "") => [el("dt", {}, k), el("dd", { class: cls }, v ?? "")];
    fields.replaceChildren(
      ...put("State", t.state, `state ${t.state}`),
      ...put("Agent", t.spec.artifact, "mono"),
      ...put("Runtime", t.spec.runtime),
      ...put("Namespace", t.spec.namespace),
      ...put("Args", t.spec.args.join(" "), "mono"),
      ...put("Node", t.node),
      ...put("Created", stamp(t.created_at)),
      ...put("Started", stamp(t.started_at)),
      ...put("Finished", stamp(t.finished_at)),
      ...put("Ran", duration(t.started_at, t.finished_at)),
      ...put("Exit code", t.exit_code),
      ...put("Reason", t.reason));
    fields.firstElementChild.nextElementSibling.id = "task-state";
    history.replaceChildren(...t.history.map(([s, at]) =>
      el("tr", {}, el("td", { class: `state ${s}` }, s), el("td", {}, stamp(at)))));
    spec.textContent = JSON.stringify(t.spec, null, 2);
    cancel.hidden = !info.caller?.may_cancel || terminal(t.state);
    if (hasLogs && !shownResult && terminal(t.state)) {
      shownResult = true;
      getJSON(`/api/tasks/${id}/result`).then((r) => {
        result.textContent = r.text + (r.truncated ? `\n… (${bytes(r.size)} in all)` : "");
        if (!r.size) result.textContent = "(empty)";
      }).catch((e) => { result.textContent = e.message; });
    }
  }

  const source = new EventSource(`/api/events/tasks/${id}`);
  source.addEventListener("task", (e) => show(JSON.parse(e.data)));
  source.addEventListener("log", (e) => {
    const chunk = JSON.parse(e.data);
    logs.append(el("span", { class: chunk.stream }, chunk.text));
    logs.scrollTop = logs.scrollHeight;
  });
  source.addEventListener("error", (e) => {
    if (e.data) { main.replaceChildren(el("p", { class: "empty" }, JSON.parse(e.data).error)); source.close(); }
  });
  source.addEventListener("end", () => { source.close(); live.textContent = "ended"; live.className = "muted"; });
}

// -- objects by prefix --------------------------------------------------------------------

async function objectsPage() {
  const params = new URLSearchParams(location.search);
  const prefix = el("input", { name: "prefix", placeholder: "prefix, e.g. results/", value: params.get("prefix") || "" });
  const body = el("tbody");
  main.replaceChildren(
    el("h2", {}, "Objects", el("form", {}, prefix)),
    el("table", { id: "objects" }, el("thead", {}, el("tr", {},
      ...["Key", "Version", "Size", "Refs", "Pinned", "Locations"].map((h) => el("th", {}, h)))), body));
  const objects = await getJSON(`/api/objects?prefix=${encodeURIComponent(prefix.value)}`);
  const where = (o) => (o.locations?.length
    ? o.locations.map((n) => (n === info.name && info.role !== "sms" ? `${n} (here)` : n)).join(", ")
    : (info.role === "sms" ? "" : `${info.name} (here)`));
  body.replaceChildren(...objects.map((o) => el("tr", { "data-key": o.key },
    el("td", { class: "mono" }, o.key), el("td", {}, o.version), el("td", {}, bytes(o.size)),
    el("td", {}, o.refs), el("td", {}, o.pinned ? "yes" : ""),
    el("td", { class: "locations" }, where(o)))));
  if (!objects.length) body.append(el("tr", {}, el("td", { class: "empty", colSpan: 6 }, "no objects")));
}

async function start() {
  info = await getJSON("/api/info");
  document.getElementById("who").textContent =
    info.role === "sms" ? `metadata server ${info.address}` : `node ${info.name} · ${info.address || info.data_dir}`;
  document.getElementById("nav-objects").hidden = !info.features.includes("objects");
  const path = location.pathname;
  if (path.startsWith("/tasks/")) return taskPage(decodeURIComponent(path.slice(7)));
  if (path === "/objects") return objectsPage();
  return overview();
}

start().catch((e) => main.replaceChildren(el("p", { class: "empty" }, e.message)));
