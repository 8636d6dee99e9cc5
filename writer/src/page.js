// The audit-log page's script, served at /app.js: the page's Content-Security-Policy allows no
// inline script and no inline event handlers, so every handler is added here.
"use strict";
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("auditgate-token") || "";
let role = "admin";
let cursors = [];      // cursor of each page shown so far (null for the first)
let nextCursor = null;
let mode = { kind: "log" }; // or { kind: "history", resource }

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
  $("signin").showModal();
}

function filters() {
  const data = new FormData($("filters"));
  const params = new URLSearchParams();
  for (const [k, v] of data) {
    if (!v) continue;
    if (k === "since" || k === "until") params.set(k, new Date(v).toISOString());
    else params.set(k, v);
  }
  if (role !== "admin") { for (const k of [...params.keys()]) if (k !== "resource") params.delete(k); }
  return params;
}

// The viewer's local time, unambiguous: 2026-11-23 23:09:55.
function fmtTime(t) {
  const d = new Date(t);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function text(s) { const span = document.createElement("span"); span.textContent = s ?? ""; return span; }

function render(records) {
  const body = $("rows");
  body.replaceChildren();
  for (const r of records) {
    const tr = document.createElement("tr");
    const cells = [fmtTime(r.time), r.actor ? r.actor.id : "–", r.operation];
    for (const c of cells) { const td = document.createElement("td"); td.append(text(c)); tr.append(td); }
    const res = document.createElement("td");
    (r.resources || []).forEach((x, i) => {
      const key = x.path || x.id;
      const a = document.createElement("a");
      a.className = "res"; a.href = "#"; a.textContent = x.type + ":" + key;
      a.addEventListener("click", (ev) => { ev.preventDefault(); ev.stopPropagation(); showHistory(key); });
      if (i) res.append(text(", "));
      res.append(a);
    });
    tr.append(res);
    const out = document.createElement("td"); out.className = "outcome-" + r.outcome; out.append(text(r.outcome)); tr.append(out);
    const st = document.createElement("td"); st.append(text(r.response && r.response.status != null ? r.response.status : "–")); tr.append(st);
    const rid = document.createElement("td"); rid.className = "rid"; rid.append(text(r.request.id)); tr.append(rid);
    tr.addEventListener("click", () => showDetails(r));
    body.append(tr);
  }
  $("count").textContent = records.length ? `page ${cursors.length}, ${records.length} records` : "no records";
  $("next").disabled = !nextCursor;
  $("first").disabled = cursors.length <= 1;
}

function showDetails(r) {
  const p = $("details");
  p.classList.remove("hidden");
  p.replaceChildren();
  const h = document.createElement("h2");
  h.textContent = r.description || r.operation;
  const pre = document.createElement("pre");
  pre.textContent = JSON.stringify(r, null, 2);
  p.append(h, text(`${fmtTime(r.time)} · ${r.request.method} ${r.request.path} → ${r.response.status ?? "no response"} (${r.outcome}) · ${r.duration_ms} ms`), pre);
  p.scrollIntoView({ behavior: "smooth", block: "nearest" });
}

async function load(cursor) {
  $("error").textContent = "";
  const params = mode.kind === "history" ? new URLSearchParams({ resource: mode.resource }) : filters();
  params.set("limit", "50");
  if (cursor) params.set("cursor", cursor);
  const path = (mode.kind === "history" || role !== "admin") ? "/api/v1/history" : "/api/v1/records";
  if (path === "/api/v1/history" && !params.get("resource")) {
    render([]); $("error").textContent = "Enter a resource id or path to see its history."; return;
  }
  try {
    const page = await api(path + "?" + params);
    nextCursor = page.next_cursor;
    render(page.records);
  } catch (e) {
    if (e.status === 403 && role === "admin") { role = "viewer"; applyRole(); return reset(); }
    $("error").textContent = e.message;
  }
}

function reset() { cursors = [null]; nextCursor = null; $("details").classList.add("hidden"); return load(null); }

function showHistory(resource) {
  mode = { kind: "history", resource };
  const t = $("view-title");
  t.classList.remove("hidden");
  t.replaceChildren(text("History of "), Object.assign(document.createElement("strong"), { textContent: resource }), text(" (oldest first) "));
  const back = document.createElement("button"); back.type = "button"; back.textContent = "Back to the log";
  back.addEventListener("click", () => { mode = { kind: "log" }; t.classList.add("hidden"); reset(); });
  t.append(back);
  reset();
}

function applyRole() {
  for (const el of document.querySelectorAll(".admin")) el.classList.toggle("hidden", role !== "admin");
  $("who").textContent = role === "admin" ? "administrator" : "viewer (resource history only)";
}

async function loadOperations() {
  try {
    const { operations } = await api("/api/v1/operations");
    const sel = $("operation");
    const prefixes = [...new Set(operations.map((o) => o.split(".")[0] + ".*"))];
    for (const o of [...prefixes, ...operations]) { const opt = document.createElement("option"); opt.value = o; opt.textContent = o; sel.append(opt); }
  } catch (e) { if (e.status === 403) { role = "viewer"; applyRole(); } }
}

async function exportJson() {
  const params = filters();
  $("error").textContent = "";
  try {
    const r = await fetch("/api/v1/export?" + params, { headers: { Authorization: "Bearer " + token } });
    if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || r.statusText);
    const blob = await r.blob();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = (r.headers.get("content-disposition") || "").match(/filename="([^"]+)"/)?.[1] || "auditgate-export.json";
    document.body.append(a); a.click(); a.remove();
  } catch (e) { $("error").textContent = "Export failed: " + e.message; }
}

$("filters").addEventListener("submit", (e) => { e.preventDefault(); mode = { kind: "log" }; $("view-title").classList.add("hidden"); reset(); });
$("filters").addEventListener("reset", () => setTimeout(reset, 0));
$("next").addEventListener("click", () => { if (nextCursor) { cursors.push(nextCursor); load(nextCursor); } });
$("first").addEventListener("click", reset);
$("export").addEventListener("click", exportJson);
$("signout").addEventListener("click", () => { token = ""; signIn(); });
$("signin-form").addEventListener("submit", (e) => {
  // Closed here rather than by the form's method="dialog", so that no form submission is left
  // for the CSP's form-action 'none' to judge.
  e.preventDefault();
  $("signin").close();
  token = $("token").value.trim();
  sessionStorage.setItem("auditgate-token", token);
  role = "admin"; applyRole(); loadOperations(); reset();
});
if (location.hash.startsWith("#token=")) { token = decodeURIComponent(location.hash.slice(7)); sessionStorage.setItem("auditgate-token", token); history.replaceState(null, "", location.pathname); }
if (!token) signIn(); else { applyRole(); loadOperations(); reset(); }
