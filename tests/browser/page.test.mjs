// The audit-log page in headless Chromium against a real writer with real records.
// Usage: node page.test.mjs BASE_URL ADMIN_TOKEN VIEWER_TOKEN
// Every check compares what the page shows with what the API answers for the same question.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { chromium } from "playwright-core";

const [base, admin, viewer] = process.argv.slice(2);
const api = async (path, token = admin) => {
  const r = await fetch(base + path, { headers: { Authorization: `Bearer ${token}` } });
  assert.equal(r.status, 200, `${path} answered ${r.status}`);
  return r.json();
};
const ids = (records) => records.map((r) => r.request.id);
const shownIds = (page) => page.$$eval("#rows tr td.rid", (tds) => tds.map((td) => td.textContent));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const context = await browser.newContext({ acceptDownloads: true, timezoneId: "Europe/Paris" });
  const page = await context.newPage();

  // Sign in.
  await page.goto(base + "/");
  await page.waitForSelector("#signin[open]");
  await page.fill("#token", admin);
  await page.click("#signin-form button");
  await page.waitForFunction(() => document.querySelectorAll("#rows tr").length > 0);
  assert.deepEqual(await shownIds(page), ids((await api("/api/v1/records?limit=50")).records), "first page");

  // Times are shown in the viewer's time zone (Paris is UTC+1 in November).
  const first = (await api("/api/v1/records?limit=1")).records[0];
  const shownTime = await page.$eval("#rows tr td", (td) => td.textContent);
  // hourCycle h23: `hour12: false` writes midnight as "24" in en-US.
  const hour = new Date(first.time).toLocaleString("en-US", { timeZone: "Europe/Paris", hour: "2-digit", hourCycle: "h23" });
  assert.ok(shownTime.includes(hour.padStart(2, "0") + ":"), `time ${shownTime} in Paris time (${hour})`);

  // The operation list arrives by a request of its own after sign-in: choose from it once
  // it is there (selecting an option not yet listed leaves the filter empty).
  await page.waitForSelector('#operation option[value="tag.add"]', { state: "attached" });

  // Each filter narrows the table to what the API selects.
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
  const cases = [
    ["operation=tag.add", () => page.selectOption("#operation", "tag.add")],
    ["operation=asset.*", () => page.selectOption("#operation", "asset.*")],
    ["actor=u_3", () => page.fill("input[name=actor]", "u_3")],
    ["resource=f4", () => page.fill("input[name=resource]", "f4")],
    ["request_id=req-42", () => page.fill("input[name=request_id]", "req-42")],
    ["outcome=failure", () => page.selectOption("select[name=outcome]", "failure")],
    ["actor=u_2&outcome=success&operation=asset.*", async () => {
      await page.fill("input[name=actor]", "u_2");
      await page.selectOption("select[name=outcome]", "success");
      await page.selectOption("#operation", "asset.*");
    }],
  ];
  for (const [query, fill] of cases) {
    await apply(fill);
    const expected = ids((await api(`/api/v1/records?limit=50&${query}`)).records);
    assert.ok(expected.length > 0, `${query} selects something`);
    await shows(page, expected, query);
  }
  // A time interval, typed in local time.
  const recs = (await api("/api/v1/records?limit=1000")).records;
  const mid = new Date(recs[Math.floor(recs.length / 2)].time);
  // What a user in Paris types into the browser's date-time fields, in the form the field
  // keeps: HTML normalises a time with zero seconds to "HH:MM", and playwright's fill refuses
  // a value the field rewrites ("Malformed value"), so ":00" is left off as the field would.
  const local = (d) => d.toLocaleString("sv-SE", { timeZone: "Europe/Paris" }).replace(" ", "T").replace(/:00$/, "");
  const since = new Date(mid.getTime() - 10000), until = new Date(mid.getTime() + 10000);
  await apply(async () => {
    await page.fill("input[name=since]", local(since));
    await page.fill("input[name=until]", local(until));
  });
  const within = recs.filter((r) => new Date(r.time) >= new Date(Math.floor(since / 1000) * 1000) && new Date(r.time) <= new Date(Math.floor(until / 1000) * 1000));
  await shows(page, ids(within), "time interval");

  // Paging: the second page is the API's second page.
  await apply(async () => {});
  const p1 = await api("/api/v1/records?limit=50");
  await shows(page, ids(p1.records), "first page again");
  await page.click("#next");
  const p2 = await api(`/api/v1/records?limit=50&cursor=${encodeURIComponent(p1.next_cursor)}`);
  await shows(page, ids(p2.records), "second page");
  await page.click("#first");
  await shows(page, ids(p1.records), "back to the first page");

  // Details of a record.
  await page.click("#rows tr:nth-child(3)");
  const details = await page.textContent("#details");
  assert.ok(details.includes(p1.records[2].request.id), "details show the record");
  assert.ok(details.includes(p1.records[2].request.path), "details show the request");

  // A resource's history from a click.
  const link = await page.$("#rows tr:first-child a.res");
  const resource = (await link.textContent()).split(":").slice(1).join(":");
  await link.click();
  await shows(page, ids((await api(`/api/v1/history?limit=50&resource=${encodeURIComponent(resource)}`)).records), "history");
  assert.ok((await page.textContent("#view-title")).includes(resource));

  // Export downloads exactly the filtered records.
  await apply(() => page.fill("input[name=actor]", "u_1"));
  await shows(page, ids((await api("/api/v1/records?limit=50&actor=u_1")).records), "actor=u_1");
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#export")]);
  const exported = JSON.parse(await readFile(await download.path(), "utf8"));
  const all = [];
  for (let cursor = ""; ;) {
    const pageOf = await api(`/api/v1/records?limit=1000&actor=u_1${cursor}`);
    all.push(...pageOf.records);
    if (!pageOf.next_cursor) break;
    cursor = `&cursor=${encodeURIComponent(pageOf.next_cursor)}`;
  }
  assert.deepEqual(ids(exported), ids(all), "export");
  assert.ok(download.suggestedFilename().startsWith("auditgate-export-"));

  // A viewer sees resource history only.
  const vpage = await (await browser.newContext()).newPage();
  await vpage.goto(base + "/#token=" + encodeURIComponent(viewer));
  // Signed in once the page has learnt its role from the API.
  await vpage.waitForFunction(() => document.getElementById("who").textContent.startsWith("viewer"));
  assert.equal(await vpage.isVisible("#operation"), false, "no operation filter for a viewer");
  assert.equal(await vpage.isVisible("#export"), false, "no export for a viewer");
  assert.equal(await vpage.$$eval("#rows tr", (r) => r.length), 0, "no log for a viewer");
  await vpage.fill("input[name=resource]", "f4");
  await vpage.click("#filters button[type=submit]");
  const vexpected = ids((await api("/api/v1/history?limit=50&resource=f4", viewer)).records);
  assert.ok(vexpected.length > 0);
  await shows(vpage, vexpected, "viewer history");
  console.log("page: all checks passed");
} finally {
  await browser.close();
}
