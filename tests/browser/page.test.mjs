// The audit-log page in headless Chromium over the demo's records (the burst of
// scripts/lib/burst.py through the proxy, on the ImageKit and Hugging Face rule sets).
// Usage: node page.test.mjs BASE_URL ADMIN_TOKEN VIEWER_TOKEN TENANT_TOKEN TENANT [SCREENSHOT]
// Every check compares what the page shows with what the API answers for the same question.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { chromium } from "playwright-core";

const [base, admin, viewer, tenantToken, tenant, screenshot] = process.argv.slice(2);
const api = async (path, token = admin) => {
  const r = await fetch(base + path, { headers: { Authorization: `Bearer ${token}` } });
  assert.equal(r.status, 200, `${path} answered ${r.status}`);
  return r.json();
};
const ids = (records) => records.map((r) => r.request.id);
const shownIds = (page) => page.$$eval("#rows tr td.rid", (tds) => tds.map((td) => td.textContent));
// Every record a query selects, following the cursors.
const everything = async (query, path = "/api/v1/records") => {
  const all = [];
  for (let cursor = ""; ;) {
    const p = await api(`${path}?limit=1000&${query}${cursor}`);
    all.push(...p.records);
    if (!p.next_cursor) return all;
    cursor = `&cursor=${encodeURIComponent(p.next_cursor)}`;
  }
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const context = await browser.newContext({ acceptDownloads: true, timezoneId: "Europe/Paris", viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("response", (r) => { if (r.status() >= 400) errors.push(`${r.status()} ${r.url()}`); });

  // Sign in.
  await page.goto(base + "/");
  await page.waitForSelector("#signin[open]");
  await page.fill("#token", admin);
  await page.click("#signin-form button");
  await page.waitForFunction(() => document.querySelectorAll("#rows tr").length > 0);
  assert.deepEqual(await shownIds(page), ids((await api("/api/v1/records?limit=50")).records), "first page");

  // The columns the products' pages show.
  const heads = await page.$$eval("#log thead th", (ths) => ths.map((th) => th.textContent));
  assert.deepEqual(heads, ["Time", "User", "Action", "Description", "Resource", "Location · IP", "Outcome", "Request ID"]);
  const firstRecord = (await api("/api/v1/records?limit=1")).records[0];
  const firstRow = await page.$eval("#rows tr", (tr) => [...tr.cells].map((td) => td.textContent));
  assert.ok(firstRow[2].includes(firstRecord.operation), "action");
  assert.ok(firstRow[2].includes(`${firstRecord.request.method} ${firstRecord.request.path}`), "method and endpoint in the row");
  assert.ok(firstRow[3] === (firstRecord.description || ""), "description");
  assert.ok(firstRow[6].includes(firstRecord.outcome), "outcome");
  // Times are shown in the viewer's time zone (Paris is UTC+1 in winter).
  const hour = new Date(firstRecord.time).toLocaleString("en-US", { timeZone: "Europe/Paris", hour: "2-digit", hourCycle: "h23" });
  assert.ok(firstRow[0].includes(hour.padStart(2, "0") + ":"), `time ${firstRow[0]} in Paris time (${hour})`);

  // The operation list arrives by a request of its own after sign-in.
  await page.waitForSelector('#operation-list input[value="asset.rename"]', { state: "attached" });
  const apply = async (fill) => {
    await page.click("#filters button[type=reset]");
    await fill();
    await page.click("#filters button[type=submit]");
  };
  // The table shows `expected` once the page's request has come back: wait for that (up to
  // 10 s, on a busy machine), then compare, so a slow answer is not a wrong one.
  const shows = async (p, expected, label) => {
    for (let i = 0; i < 100; i++) {
      if (JSON.stringify(await shownIds(p)) === JSON.stringify(expected)) break;
      await p.waitForTimeout(100);
    }
    assert.deepEqual(await shownIds(p), expected, label);
  };
  const chooseOps = async (...ops) => {
    await page.click("#operation-summary");
    for (const o of ops) await page.check(`#operation-list input[value="${o}"]`);
    await page.keyboard.press("Escape");
  };
  const all = await everything("");
  const someActor = all.find((r) => r.actor && r.actor.id).actor.id;
  const someRequest = all[Math.floor(all.length / 2)].request.id;
  const cases = [
    // Several operations at once, and a prefix among them.
    ["operation=asset.rename,tag.add,spaces.*", () => chooseOps("asset.rename", "tag.add", "spaces.*")],
    ["operation=org.*", () => chooseOps("org.*")],
    [`actor=${someActor}`, () => page.fill("input[name=actor]", someActor)],
    [`request_id=${someRequest}`, () => page.fill("input[name=request_id]", someRequest)],
    ["outcome=failure", () => page.selectOption("select[name=outcome]", "failure")],
  ];
  for (const [query, fill] of cases) {
    await apply(fill);
    const expected = ids((await api(`/api/v1/records?limit=50&${query}`)).records);
    assert.ok(expected.length > 0, `${query} selects something`);
    await shows(page, expected, query);
  }
  await apply(async () => {});
  assert.equal(await page.textContent("#operation-summary"), "any", "Clear empties the operation filter");

  // Details: the request and the response as labelled fields, the changes as old → new.
  const changed = all.find((r) => r.changes && Object.keys(r.changes).length && r.request.location);
  assert.ok(changed, "the demo has a record with changes and a location");
  await apply(() => page.fill("input[name=request_id]", changed.request.id));
  await shows(page, [changed.request.id], "the changed record");
  // By keyboard: the row takes the focus, Enter opens it.
  await page.focus("#rows tr");
  await page.keyboard.press("Enter");
  await page.waitForSelector("#details:not(.hidden)");
  const field = (name) => page.$$eval("#details dt", (dts, name) => {
    const dt = dts.find((d) => d.textContent === name);
    return dt ? dt.nextElementSibling.textContent : null;
  }, name);
  assert.equal(await field("Method"), changed.request.method);
  assert.equal(await field("Path"), changed.request.path);
  assert.equal(await field("Route"), changed.request.route);
  assert.equal(await field("Request ID"), changed.request.id);
  assert.equal(await field("User agent"), changed.request.user_agent);
  assert.equal(await field("Client IP"), changed.request.client_ip);
  assert.ok((await field("Location")).includes(changed.request.location.country), "location");
  assert.equal(await field("Status"), String(changed.response.status));
  assert.equal(await field("Duration"), `${changed.duration_ms} ms`);
  const changeLines = await page.$$eval("#details ul.changes li", (lis) => lis.map((li) => li.textContent));
  for (const [name, c] of Object.entries(changed.changes)) {
    const line = `${name}: ${c.from ?? "(unknown)"} → ${c.to ?? "(unknown)"}`;
    assert.ok(changeLines.includes(line), `changes show "${line}" in ${JSON.stringify(changeLines)}`);
  }
  // The row shows where the call came from: the location and the anonymised address.
  const whereCell = await page.$eval("#rows tr td.where", (td) => td.textContent);
  assert.ok(whereCell.includes(changed.request.location.country) && whereCell.includes(changed.request.client_ip), whereCell);

  // The history of a folder, from the resource filter.
  const folder = all.flatMap((r) => r.resources || []).find((x) => x.type === "folder" && x.path);
  assert.ok(folder, "the demo touches a folder");
  await apply(() => page.fill("#resource", folder.path));
  await page.click("#history");
  const folderHistory = ids((await api(`/api/v1/history?limit=50&resource=${encodeURIComponent(folder.path)}`)).records);
  assert.ok(folderHistory.length > 0);
  await shows(page, folderHistory, "folder history");
  assert.ok((await page.textContent("#view-title")).includes(folder.path));

  // The history of a collection, from its link in a row.
  const inCollection = all.find((r) => (r.resources || []).some((x) => x.type === "collection"));
  assert.ok(inCollection, "the demo touches a collection");
  const collection = inCollection.resources.find((x) => x.type === "collection");
  const collectionKey = collection.path || `collection:${collection.id}`;
  await apply(() => page.fill("input[name=request_id]", inCollection.request.id));
  await shows(page, [inCollection.request.id], "the collection's record");
  await page.click(`#rows tr a.res[data-resource="${collectionKey}"]`);
  const collectionHistory = ids((await api(`/api/v1/history?limit=50&resource=${encodeURIComponent(collectionKey)}`)).records);
  assert.ok(collectionHistory.length > 1, "a collection with more than one event");
  await shows(page, collectionHistory, "collection history");

  // The deletion history of a path: a file the demo uploaded, then deleted by its id alone.
  const deletions = (await api("/api/v1/operations")).operations.filter((o) => /delete/.test(o));
  let deletedPath = null, deleteRecord = null;
  for (const r of all.filter((r) => /delete/.test(r.operation))) {
    for (const x of r.resources || []) {
      const named = all.flatMap((o) => o.resources || []).find((o) => o.type === x.type && o.id === x.id && o.path);
      if (x.id && named && !x.path) { deletedPath = named.path; deleteRecord = r; break; }
    }
    if (deletedPath) break;
  }
  assert.ok(deletedPath, "the demo deletes by id a file it uploaded by path");
  await apply(() => page.fill("#resource", deletedPath));
  await page.click("#deletions");
  const deletionHistory = ids((await api(`/api/v1/history?limit=50&resource=${encodeURIComponent(deletedPath)}&operation=${deletions.join(",")}`)).records);
  assert.ok(deletionHistory.includes(deleteRecord.request.id), "the deletion is in the path's deletion history");
  await shows(page, deletionHistory, "deletion history");
  assert.ok((await page.textContent("#view-title")).startsWith("Deletion history of " + deletedPath));

  // Export, as JSON and as CSV: exactly the filtered records.
  // In a history, the export waits for the log (a history follows names /export does not).
  assert.equal(await page.isDisabled("#export"), true, "no export from a history");
  await apply(() => chooseOps("tag.*", "asset.delete"));
  const filtered = await everything("operation=tag.*,asset.delete");
  assert.ok(filtered.length > 1);
  await shows(page, ids(filtered.slice(0, 50)), "the filtered log");
  // An edit not applied yet does not change what is exported.
  await page.fill("input[name=actor]", "nobody-applied-this");
  const download = async (button) => {
    const [d] = await Promise.all([page.waitForEvent("download"), page.click(button)]);
    return { name: d.suggestedFilename(), text: await readFile(await d.path(), "utf8") };
  };
  const json = await download("#export");
  assert.ok(json.name.startsWith("auditgate-export-") && json.name.endsWith(".json"), json.name);
  assert.deepEqual(JSON.parse(json.text).map((r) => r.id), filtered.map((r) => r.id), "JSON export");
  const csv = await download("#export-csv");
  assert.ok(csv.name.endsWith(".csv"), csv.name);
  const rows = parseCsv(csv.text);
  assert.equal(rows[0][1], "id");
  assert.deepEqual(rows.slice(1).map((row) => row[1]), filtered.map((r) => r.id), "CSV export");
  assert.ok(rows.slice(1).every((row) => row.length === rows[0].length), "every CSV row has every column");

  // Verify shows what /api/v1/verify reports: the demo's chain intact.
  const report = await api("/api/v1/verify");
  assert.equal(report.intact, true, JSON.stringify(report.problems));
  await page.click("#verify");
  await page.waitForFunction(() => document.querySelector("#verified.good, #verified.bad"));
  const verified = await page.$eval("#verified", (e) => e.textContent);
  assert.ok(verified.startsWith(`Intact: ${report.records} records`), verified);
  assert.ok(verified.includes(`chain ${report.chains[0].uid}: links 1–${report.chains[0].last}`), verified);

  // Readable at 1 280 px: nothing wider than the window, the table included.
  await apply(async () => {});
  await shows(page, ids((await api("/api/v1/records?limit=50")).records), "the log again");
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), "no horizontal scroll at 1280 px");
  const table = await page.$eval(".table-wrap", (w) => [w.scrollWidth, w.clientWidth]);
  assert.ok(table[0] <= table[1], `the table fits at 1280 px (${table[0]} > ${table[1]})`);
  if (screenshot) {
    // The media library's morning, as ImageKit's page would show it; then one record's details.
    await apply(() => chooseOps("asset.*", "folder.*", "tag.*", "collection.*", "link.*"));
    await page.waitForFunction(() => document.querySelectorAll("#rows tr").length > 0);
    await page.waitForTimeout(300);
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: screenshot });
    await apply(() => page.fill("input[name=request_id]", changed.request.id));
    await shows(page, [changed.request.id], "the changed record again");
    await page.click("#rows tr");
    await page.waitForTimeout(300);
    await (await page.$("#details")).screenshot({ path: screenshot.replace(/\.png$/, "-details.png") });
  }

  // An organisation's token: its name in the header, its records only.
  const tpage = await (await browser.newContext()).newPage();
  await tpage.goto(base + "/#token=" + encodeURIComponent(tenantToken));
  await tpage.waitForFunction(() => document.getElementById("org").textContent !== "");
  assert.equal(await tpage.textContent("#org"), tenant);
  await shows(tpage, ids((await api("/api/v1/records?limit=50", tenantToken)).records), "a tenant's log");
  assert.ok((await api("/api/v1/records?limit=50", tenantToken)).records.every((r) => r.tenant === tenant));
  assert.ok(await tpage.$eval("#verify", (b) => b.classList.contains("hidden")), "a tenant's token cannot verify every tenant's chain");

  // A phone: the table becomes cards, nothing wider than the screen.
  const phone = await (await browser.newContext({ viewport: { width: 390, height: 844 } })).newPage();
  await phone.goto(base + "/#token=" + encodeURIComponent(admin));
  await phone.waitForFunction(() => document.querySelectorAll("#rows tr").length > 0);
  assert.ok(await phone.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), "no horizontal scroll on a phone");
  const label = await phone.$eval("#rows tr td.user", (td) => getComputedStyle(td, "::before").content);
  assert.equal(label, '"User"', "each cell is labelled on a phone");

  // A viewer sees resource history only.
  const vpage = await (await browser.newContext()).newPage();
  await vpage.goto(base + "/#token=" + encodeURIComponent(viewer));
  await vpage.waitForFunction(() => document.getElementById("who").textContent.startsWith("viewer"));
  assert.equal(await vpage.isVisible("#operation"), false, "no operation filter for a viewer");
  assert.equal(await vpage.isVisible("#export"), false, "no export for a viewer");
  assert.equal(await vpage.$$eval("#rows tr", (r) => r.length), 0, "no log for a viewer");
  await vpage.fill("#resource", folder.path);
  await vpage.click("#filters button[type=submit]");
  const vexpected = ids((await api(`/api/v1/history?limit=50&resource=${encodeURIComponent(folder.path)}`, viewer)).records);
  assert.ok(vexpected.length > 0);
  await shows(vpage, vexpected, "viewer history");

  assert.deepEqual(errors, [], "no script errors");
  console.log("page: all checks passed");
} finally {
  await browser.close();
}

// RFC 4180: quoted cells may hold commas, quotes (doubled) and line breaks.
function parseCsv(text) {
  const rows = [];
  let row = [], cell = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { cell += '"'; i++; }
      else if (c === '"') quoted = false;
      else cell += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { row.push(cell); cell = ""; }
    else if (c === "\r" && text[i + 1] === "\n") { row.push(cell); rows.push(row); row = []; cell = ""; i++; }
    else cell += c;
  }
  if (cell || row.length) { row.push(cell); rows.push(row); }
  return rows;
}
