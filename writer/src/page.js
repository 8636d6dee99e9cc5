// The audit-log page's script, served at /app.js: the page's Content-Security-Policy allows no
// inline script and no inline event handlers, so every handler is added here.
//
// What it shows follows the two audit-log pages auditgate is modelled on: a table of who did
// what, when, to which resource, from where, with which outcome and request ID; a record's
// request and response as labelled fields and its changes as "field: old → new"; the history
// of a file, folder or collection; the deletion history of a path; the export as JSON or CSV.
"use strict";
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("auditgate-token") || "";
let role = "admin";
let operations = [];   // the operations stored, for the filter and the deletion history
let cursors = [];      // cursor of each page shown so far (null for the first)
let nextCursor = null;
let mode = { kind: "log" }; // or { kind: "history" | "deletions", resource }
let shown = new URLSearchParams(); // the filters of the log on screen: what an export takes

function api(path) {
  return fetch(path, { headers: { Authorization: "Bearer " + token } }).then(async (r) => {
    if (r.status === 401) { signIn(); throw new Error("sign in with a valid token"); }
    const body = await r.json().catch(() => ({}));
    if (!r.ok) { const e = new Error(body.error || r.statusText); e.status = r.status; throw e; }
    return body;
  });
}

function signIn() {
  sessionStorage.removeItem("auditgate-token");
  if (!$("signin").open) $("signin").showModal();
}

function chosenOperations() {
  return [...document.querySelectorAll("#operation-list input:checked")].map((c) => c.value);
}

function filters() {
  const data = new FormData($("filters"));
  const params = new URLSearchParams();
  for (const [k, v] of data) {
    if (!v || k === "op") continue;
    if (k === "since" || k === "until") params.set(k, new Date(v).toISOString());
    else params.set(k, v.trim());
  }
  const ops = chosenOperations();
  if (ops.length) params.set("operation", ops.join(","));
  if (role !== "admin") { for (const k of [...params.keys()]) if (k !== "resource") params.delete(k); }
  return params;
}

// The viewer's local time, unambiguous: 2026-11-23 23:09:55.
function fmtTime(t) {
  const d = new Date(t);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function el(tag, props = {}, ...children) {
  const e = Object.assign(document.createElement(tag), props);
  for (const c of children) if (c != null) e.append(c);
  return e;
}
function text(s) { return el("span", { textContent: s ?? "" }); }
const show = (v) => (v == null ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));

// What a resource is looked up by: its path, else TYPE:ID (an id alone may name a file and a
// collection alike).
const resourceKey = (x) => x.path || `${x.type}:${x.id}`;
const resourceLabel = (x) => (x.path ? `${x.type} ${x.path}` : `${x.type}:${x.id}`);

function locationText(loc) {
  if (!loc) return "";
  return [loc.city, loc.region, loc.country].filter(Boolean).join(", ");
}

function resourceLinks(resources) {
  const out = [];
  (resources || []).forEach((x, i) => {
    const a = el("a", { className: "res", href: "#", textContent: resourceLabel(x) });
    a.dataset.resource = resourceKey(x);
    a.addEventListener("click", (ev) => { ev.preventDefault(); ev.stopPropagation(); showHistory(resourceKey(x)); });
    a.addEventListener("keydown", (ev) => ev.stopPropagation());
    if (i) out.push(text(", "));
    out.push(a);
  });
  return out;
}

function cell(label, className, ...children) {
  const td = el("td", { className }, ...children);
  td.dataset.label = label;
  return td;
}

function render(records) {
  const body = $("rows");
  body.replaceChildren();
  for (const r of records) {
    const req = r.request || {}, res = r.response || {};
    const tr = el("tr", { tabIndex: 0 });
    tr.dataset.id = r.id;
    tr.append(
      cell("Time", "time", text(fmtTime(r.time))),
      cell("User", "user", text(r.actor && r.actor.id ? r.actor.id : "–")),
      cell("Action", "action", text(r.operation),
        req.method ? el("span", { className: "endpoint", textContent: `${req.method} ${req.path}` }) : null),
      cell("Description", "desc", text(r.description || "")),
      cell("Resource", "resource", ...resourceLinks(r.resources)),
      cell("Location · IP", "where", text(locationText(req.location) || "–"),
        req.client_ip ? el("span", { className: "sub mono", textContent: req.client_ip }) : null),
      cell("Outcome", "outcome outcome-" + r.outcome, text(r.outcome),
        el("span", { className: "sub", textContent: res.status != null ? `HTTP ${res.status}` : "no response" })),
      Object.assign(cell("Request ID", "rid", text(req.id)), { title: req.id || "" }),
    );
    tr.addEventListener("click", () => showDetails(r, tr));
    tr.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); showDetails(r, tr); }
      else if (ev.key === "ArrowDown" && tr.nextElementSibling) { ev.preventDefault(); tr.nextElementSibling.focus(); }
      else if (ev.key === "ArrowUp" && tr.previousElementSibling) { ev.preventDefault(); tr.previousElementSibling.focus(); }
    });
    body.append(tr);
  }
  $("count").textContent = records.length ? `page ${cursors.length}, ${records.length} records` : "no records";
  $("next").disabled = !nextCursor;
  $("first").disabled = cursors.length <= 1;
}

function fields(pairs) {
  const dl = el("dl", { className: "fields" });
  for (const [name, value, cls] of pairs) {
    if (value == null || value === "") continue;
    dl.append(el("dt", { textContent: name }), el("dd", { className: cls || "" }, value instanceof Node ? value : text(show(value))));
  }
  return dl;
}

function showDetails(r, row) {
  for (const tr of document.querySelectorAll("#rows tr.selected")) tr.classList.remove("selected");
  if (row) row.classList.add("selected");
  const req = r.request || {}, res = r.response || {};
  const p = $("details");
  p.classList.remove("hidden");
  p.replaceChildren(el("h2", { textContent: r.description || r.operation }));
  p.append(fields([
    ["Time", fmtTime(r.time) + " (" + r.time + ")"],
    ["User", r.actor ? `${r.actor.id ?? "unknown"}${r.actor.source ? " (from " + r.actor.source + ")" : ""}` : "unknown"],
    ["Operation", r.operation],
    ["Organisation", r.tenant],
    ["Service", r.service],
    ["Outcome", r.outcome, "outcome-" + r.outcome],
    ["Stage", r.stage],
  ]));
  p.append(el("h3", { textContent: "Request" }), fields([
    ["Method", req.method + (req.method_override ? ` (sent as ${show(req.method_override)})` : "")],
    ["Path", req.path, "mono"],
    ["Route", req.route, "mono"],
    ["Request ID", req.id, "mono"],
    ["User agent", req.user_agent],
    ["Client IP", req.client_ip, "mono"],
    ["Location", locationText(req.location)],
  ]));
  p.append(el("h3", { textContent: "Response" }), fields([
    ["Status", res.status != null ? res.status : "no response"],
    ["Duration", r.duration_ms != null ? `${r.duration_ms} ms` : null],
  ]));
  const changes = Object.entries(r.changes || {});
  if (changes.length) {
    const ul = el("ul", { className: "changes" });
    for (const [name, c] of changes) {
      ul.append(el("li", {}, el("strong", { textContent: name + ": " }),
        el("span", { className: "old", textContent: c.from != null ? show(c.from) : "(unknown)" }),
        text(" → "),
        el("span", { className: "new", textContent: c.to != null ? show(c.to) : "(unknown)" })));
    }
    p.append(el("h3", { textContent: "Changes" }), ul);
  }
  if ((r.resources || []).length) {
    const ul = el("ul", { className: "changes" });
    for (const x of r.resources) {
      const li = el("li", {}, ...resourceLinks([x]));
      if (x.path && x.id) li.append(text(` (id ${x.id})`));
      if (x.previous_path) li.append(text(`, was ${x.previous_path}`));
      ul.append(li);
    }
    p.append(el("h3", { textContent: "Resources" }), ul);
  }
  const details = Object.entries(r.details || {});
  if (details.length) p.append(el("h3", { textContent: "Details" }), fields(details));
  if (r.capture) p.append(el("h3", { textContent: "Capture" }), fields(Object.entries(r.capture)));
  p.append(el("details", {}, el("summary", { textContent: "The whole record (JSON)" }),
    el("pre", { textContent: JSON.stringify(r, null, 2) })));
  p.focus({ preventScroll: true });
  p.scrollIntoView({ behavior: "smooth", block: "nearest" });
}

// The operations a deletion history selects: those that delete, by their name.
const deletionOps = () => operations.filter((o) => /delete/.test(o));

async function load(cursor) {
  $("error").textContent = "";
  const inHistory = mode.kind !== "log";
  const params = inHistory ? new URLSearchParams({ resource: mode.resource }) : filters();
  params.set("limit", "50");
  if (cursor) params.set("cursor", cursor);
  if (mode.kind === "deletions" && deletionOps().length) params.set("operation", deletionOps().join(","));
  const path = (inHistory || role !== "admin") ? "/api/v1/history" : "/api/v1/records";
  if (!inHistory) { shown = new URLSearchParams(params); shown.delete("limit"); shown.delete("cursor"); }
  // An export is of the log's filters; a history follows an asset's every name, which
  // /export does not: its export waits for the log.
  for (const id of ["export", "export-csv"]) {
    $(id).disabled = inHistory;
    $(id).title = inHistory ? "Back to the log to export its filtered records" : "";
  }
  if (path === "/api/v1/history" && !params.get("resource")) {
    render([]); $("error").textContent = "Enter a resource id or path to see its history."; return;
  }
  try {
    const page = await api(path + "?" + params);
    nextCursor = page.next_cursor;
    let records = page.records;
    // A viewer cannot list operations: its deletion history is the history's deletions.
    if (mode.kind === "deletions" && !deletionOps().length) records = records.filter((r) => /delete/.test(r.operation));
    render(records);
  } catch (e) {
    if (e.status === 403 && role === "admin") { role = "viewer"; applyRole(); return reset(); }
    $("error").textContent = e.message;
  }
}

function reset() { cursors = [null]; nextCursor = null; $("details").classList.add("hidden"); return load(null); }

function backToLog() { mode = { kind: "log" }; $("view-title").classList.add("hidden"); }

function showHistory(resource, kind = "history") {
  if (!resource) { $("error").textContent = "Enter a resource id or path first."; return; }
  mode = { kind, resource };
  const t = $("view-title");
  t.classList.remove("hidden");
  const title = kind === "deletions" ? "Deletion history of " : "History of ";
  t.replaceChildren(text(title), el("strong", { textContent: resource }),
    text(kind === "deletions" ? " (when it was deleted, oldest first) " : " (oldest first) "));
  const other = el("button", { type: "button", textContent: kind === "deletions" ? "Whole history" : "Deletions only" });
  other.addEventListener("click", () => showHistory(resource, kind === "deletions" ? "history" : "deletions"));
  const back = el("button", { type: "button", textContent: "Back to the log" });
  back.addEventListener("click", () => { backToLog(); reset(); });
  t.append(other, text(" "), back);
  reset();
}

function applyRole() {
  for (const e of document.querySelectorAll(".admin")) e.classList.toggle("hidden", role !== "admin");
  // The chain covers every tenant's records: only an unscoped token may verify it.
  for (const e of document.querySelectorAll(".unscoped")) if ($("org").textContent) e.classList.add("hidden");
  $("who").textContent = role === "admin" ? "administrator" : "viewer (resource history only)";
}

function summarise() {
  const ops = chosenOperations();
  $("operation-summary").textContent = ops.length ? ops.join(", ") : "any";
}

async function loadOperations() {
  try {
    ({ operations } = await api("/api/v1/operations"));
    const list = $("operation-list");
    list.replaceChildren();
    const prefixes = [...new Set(operations.map((o) => o.split(".")[0] + ".*"))];
    const box = (value, cls) => {
      const input = el("input", { type: "checkbox", name: "op", value });
      input.addEventListener("change", summarise);
      return el("label", { className: cls }, input, text(value));
    };
    for (const o of prefixes) list.append(box(o, "prefix"));
    list.append(el("hr"));
    for (const o of operations) list.append(box(o, ""));
  } catch (e) { if (e.status === 403) { role = "viewer"; applyRole(); } }
}

async function whoami() {
  try {
    const me = await api("/api/v1/whoami");
    role = me.role;
    $("org").textContent = me.tenant || "";
    document.title = (me.tenant ? me.tenant + " · " : "") + "Audit log · auditgate";
  } catch (e) { /* an older writer: the role is learnt from the first 403 */ }
  applyRole();
}

async function exportAs(format) {
  // Exactly the records on screen: the filters last applied, not edits not yet applied.
  const params = new URLSearchParams(shown);
  if (format !== "json") params.set("format", format);
  $("error").textContent = "";
  try {
    const r = await fetch("/api/v1/export?" + params, { headers: { Authorization: "Bearer " + token } });
    if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || r.statusText);
    const blob = await r.blob();
    const a = el("a", { href: URL.createObjectURL(blob) });
    a.download = (r.headers.get("content-disposition") || "").match(/filename="([^"]+)"/)?.[1] || `auditgate-export.${format}`;
    document.body.append(a); a.click(); a.remove();
  } catch (e) { $("error").textContent = "Export failed: " + e.message; }
}

// What `auditgate verify` reports, from the writer's own view (`GET /api/v1/verify`): an
// auditor who trusts nothing here runs the command with the public key instead.
async function verifyLog() {
  const out = $("verified");
  out.classList.remove("hidden", "bad", "good");
  out.textContent = "Verifying the chain…";
  try {
    const report = await api("/api/v1/verify");
    const chains = report.chains.map((c) => {
      const signed = c.newest_checkpoint ? `, signed up to link ${c.newest_checkpoint[0]} at ${fmtTime(c.newest_checkpoint[1])}` : ", no signed checkpoint yet";
      return `chain ${c.uid}: links ${c.first ?? 0}–${c.last ?? 0}${signed}`;
    });
    out.replaceChildren();
    out.classList.add(report.intact ? "good" : "bad");
    out.append(el("strong", { textContent: report.intact
      ? `Intact: ${report.records} records, ${report.checkpoints_verified} checkpoints verified.`
      : `Tampered: ${report.problems.length} problem(s) found.` }));
    const list = el("ul");
    for (const line of chains) list.append(el("li", { textContent: line }));
    for (const p of report.problems.slice(0, 20)) {
      list.append(el("li", { className: "problem", textContent: `${p.kind}: ${p.id ? "record " + p.id + ": " : ""}${p.message}` }));
    }
    out.append(list);
  } catch (e) { out.classList.add("bad"); out.textContent = "Verification failed: " + e.message; }
}

async function start() {
  await whoami();
  if (role === "admin") await loadOperations();
  return reset();
}

$("filters").addEventListener("submit", (e) => { e.preventDefault(); $("operation").open = false; backToLog(); reset(); });
$("filters").addEventListener("reset", () => setTimeout(() => { summarise(); backToLog(); reset(); }, 0));
$("operation").addEventListener("keydown", (e) => { if (e.key === "Escape") { $("operation").open = false; $("operation-summary").focus(); } });
$("history").addEventListener("click", () => showHistory($("resource").value.trim()));
$("deletions").addEventListener("click", () => showHistory($("resource").value.trim(), "deletions"));
$("next").addEventListener("click", () => { if (nextCursor) { cursors.push(nextCursor); load(nextCursor); } });
$("first").addEventListener("click", reset);
$("export").addEventListener("click", () => exportAs("json"));
$("export-csv").addEventListener("click", () => exportAs("csv"));
$("verify").addEventListener("click", verifyLog);
$("signout").addEventListener("click", () => { token = ""; signIn(); });
$("signin-form").addEventListener("submit", (e) => {
  // Closed here rather than by the form's method="dialog", so that no form submission is left
  // for the CSP's form-action 'none' to judge.
  e.preventDefault();
  $("signin").close();
  token = $("token").value.trim();
  sessionStorage.setItem("auditgate-token", token);
  role = "admin"; start();
});
if (location.hash.startsWith("#token=")) { token = decodeURIComponent(location.hash.slice(7)); sessionStorage.setItem("auditgate-token", token); history.replaceState(null, "", location.pathname); }
if (!token) signIn(); else start();
