// Real-browser tests of the keyward dashboard: headless Chromium driven by playwright-core.
//
//   node tests/browser/run.mjs --url http://127.0.0.1:PORT --setup-link LINK \
//        --keyward PATH/TO/keyward --database-url sqlite://... [--screenshots DIR]
//
// Started by crates/keyward/tests/browser.rs against a fresh `keyward serve` (SQLite) whose
// database has no users yet: the admin is created through the one-time setup link, then a
// viewer with `keyward user create`. Besides keys it checks route rules (the keyspace page's
// editor, then forward-auth), the key page's usage chart, the
// webhooks page (with a local receiver), the inventory CSV download, and that a viewer has no
// webhooks page. Exits non-zero when a check fails.
import { chromium } from "playwright-core";
import http from "node:http";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1]]);
    return acc;
  }, []),
);
const BASE = args.url;
const SHOTS = args.screenshots || null;
const CHROMIUM = process.env.KEYWARD_CHROMIUM || "/usr/bin/chromium";
const ADMIN = { email: "admin@example.com", password: "correct horse battery staple" };
const VIEWER = { email: "viewer@example.com", password: "viewer passphrase 42" };

let passed = 0;
let failed = 0;
async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok - ${name}`);
  } catch (e) {
    failed++;
    console.log(`not ok - ${name}\n  ${String(e && e.stack || e).split("\n").join("\n  ")}`);
  }
}
function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function browserContext() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "keyward-chromium-"));
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    viewport: { width: 1280, height: 800 },
  });
  ctx.setDefaultTimeout(15000);
  const cleanup = async () => {
    await ctx.close();
    fs.rmSync(dir, { recursive: true, force: true });
  };
  return { ctx, cleanup };
}

async function verify(key, extra = {}) {
  const r = await fetch(`${BASE}/v1/verify`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ key, ...extra }),
  });
  assert(r.status === 200, `verify answered ${r.status}`);
  return (await r.json()).code;
}

async function until(what, fn, ms = 10000) {
  const end = Date.now() + ms;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((ok) => setTimeout(ok, 150));
  }
}

/// A local webhook receiver that answers 200 to every delivery.
async function startReceiver() {
  const received = [];
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      received.push({ signature: req.headers["keyward-signature"], body });
      res.end("ok");
    });
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  return { url: `http://127.0.0.1:${server.address().port}/hook`, received, close: () => server.close() };
}

async function signIn(page, who) {
  await page.goto(`${BASE}/login`);
  await page.fill("#email", who.email);
  await page.fill("#password", who.password);
  await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
}

async function createKey(page, keyspaceName, name, owner, extra = {}) {
  await page.goto(`${BASE}/keys/new`);
  const ks = await page.$eval("#keyspace_id", (sel, n) =>
    [...sel.options].find((o) => o.textContent.startsWith(n + " (")).value, keyspaceName);
  await page.selectOption("#keyspace_id", ks);
  await page.fill("#name", name);
  await page.fill("#owner", owner);
  if (extra.scopes) await page.fill("#scopes", extra.scopes);
  if (extra.labels) await page.fill("#labels", extra.labels);
  if (extra.expiry) await page.selectOption("#expiry", extra.expiry);
  await Promise.all([page.waitForNavigation(), page.click("[data-action=create-key]")]);
  const plaintext = (await page.textContent("#plaintext")).trim();
  const id = (await page.getAttribute("[data-action=done]", "href")).split("/").pop();
  return { plaintext, id };
}

async function createKeyspace(page, name, prefix, preset = "standard") {
  await page.goto(`${BASE}/keyspaces/new`);
  await page.fill("#name", name);
  await page.fill("#prefix", prefix);
  await page.check(`input[name=preset][value=${preset}]`);
  await Promise.all([page.waitForNavigation(), page.click("[data-action=create-keyspace]")]);
}

async function shot(page, name, fullPage = true) {
  if (!SHOTS) return;
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage });
}

const admin = await browserContext();
const page = await admin.ctx.newPage();
let first; // the key revoked through the UI
let second; // a key that must stay valid

await check("the one-time setup link creates the first admin and signs them in", async () => {
  await page.goto(args["setup-link"]);
  await page.fill("#email", ADMIN.email);
  await page.fill("#password", ADMIN.password);
  await page.fill("#confirm", ADMIN.password);
  await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
  assert(new URL(page.url()).pathname === "/", `landed on ${page.url()}`);
  assert((await page.textContent(".account")).includes(ADMIN.email), "the header names the admin");
});

await check("the setup link does not work a second time", async () => {
  const other = await admin.ctx.newPage();
  const r = await other.goto(args["setup-link"]);
  assert(r.status() === 403, `second use answered ${r.status()}`);
  await other.close();
});

await check("keyward user create adds a viewer (after the setup link is used)", async () => {
  const out = execFileSync(args.keyward, [
    "user", "create", "--email", VIEWER.email, "--role", "viewer", "--password-stdin",
    "--database-url", args["database-url"],
  ], { input: VIEWER.password + "\n" }).toString();
  assert(out.includes("usr_"), `unexpected output: ${out}`);
});

await check("an admin creates a keyspace with a preset", async () => {
  await createKeyspace(page, "Orders API", "acme", "standard");
  assert(page.url().includes("/keyspaces/ks_"), `landed on ${page.url()}`);
  assert((await page.inputValue("#max_lifetime_secs")) === "180d", "standard preset lifetime");
});

await check("an admin sets route rules on the keyspace page; a bad line is named", async () => {
  await page.fill("#routes-text", "GET /orders/** orders:read\n# public\n/health");
  await page.selectOption("#unmatched", "deny");
  await Promise.all([page.waitForNavigation(), page.click("[data-action=save-routes]")]);
  assert((await page.textContent(".flash-ok")).includes("route rules were saved"), "confirmation shown");
  const shown = await page.inputValue("#routes-text");
  assert(shown.includes("GET /orders/** orders:read") && shown.includes("/health"), `rules shown back: ${shown}`);
  await page.fill("#routes-text", "GET /orders/** orders:read\nPOST /orders/**/x orders:write");
  await Promise.all([page.waitForNavigation(), page.click("[data-action=save-routes]")]);
  const err = await page.textContent(".flash-error");
  assert(err.includes("Line 2") && err.includes("last segment"), `the bad line is named: ${err}`);
});

await check("creating a key shows its plaintext once, and the API says VALID", async () => {
  first = await createKey(page, "Orders API", "billing prod", "team-billing", {
    scopes: "orders:read orders:write", labels: "env=prod",
  });
  assert(/^acme_[0-9A-Za-z]{38}$/.test(first.plaintext), `plaintext looks like a key: ${first.plaintext.length} chars`);
  assert((await page.textContent(".warning")).includes("shown only once"), "warning shown");
  assert(await page.isVisible("[data-copy=plaintext]"), "copy button shown");
  assert((await verify(first.plaintext)) === "VALID", "the new key verifies");
});

await check("forward-auth applies the keyspace's route rules to the new key", async () => {
  const fa = async (method, path) => {
    const r = await fetch(`${BASE}/v1/forward-auth${path}`, {
      method, headers: { Authorization: `Bearer ${first.plaintext}` },
    });
    return [r.status, r.headers.get("x-keyward-code")];
  };
  let [status] = await fa("GET", "/orders/7");
  assert(status === 200, `GET /orders/7: ${status}`);
  [status] = await fa("GET", "/health");
  assert(status === 200, `GET /health: ${status}`);
  const [denied, code] = await fa("DELETE", "/orders/7");
  assert(denied === 403 && code === "ROUTE_NOT_ALLOWED", `DELETE /orders/7: ${denied} ${code}`);
});

await check("the key page never shows the plaintext again", async () => {
  await Promise.all([page.waitForNavigation(), page.click("[data-action=done]")]);
  const html = await page.content();
  assert(!html.includes(first.plaintext), "plaintext absent from the key page");
  assert(html.includes("billing prod"), "key name shown");
});

await check("revoking in the UI makes the API say REVOKED", async () => {
  await page.goto(`${BASE}/keys/${first.id}`);
  await page.click("details.danger summary");
  await page.fill("#reason", "leaked in a CI log");
  await page.check("input[name=confirm]");
  await Promise.all([page.waitForNavigation(), page.click("[data-action=revoke]")]);
  assert((await page.textContent(".flash")).includes("revoked"), "confirmation shown");
  assert((await verify(first.plaintext)) === "REVOKED", "the key is revoked");
});

await check("a form posted without the CSRF token is refused", async () => {
  second = await createKey(page, "Orders API", "search staging", "team-search");
  await page.goto(`${BASE}/keys/${second.id}`);
  const status = await page.evaluate(async (id) => {
    const body = new URLSearchParams({ reason: "no token", confirm: "yes" });
    const r = await fetch(`/keys/${id}/revoke`, { method: "POST", body, credentials: "same-origin" });
    return r.status;
  }, second.id);
  assert(status === 403, `answered ${status}`);
  assert((await verify(second.plaintext)) === "VALID", "the key is untouched");
});

await check("a cross-site form post is rejected", async () => {
  assert(second, "needs the key of the previous check");
  const server = http.createServer((req, res) => {
    res.setHeader("content-type", "text/html");
    res.end(`<!doctype html><form id=f method=post action="${BASE}/keys/${second.id}/revoke">
      <input name=reason value=attack><input name=confirm value=yes></form>
      <script>document.getElementById('f').submit()</script>`);
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  // "localhost" and "127.0.0.1" are different sites for the browser.
  const evil = `http://localhost:${server.address().port}/`;
  const p = await admin.ctx.newPage();
  const landed = p.waitForURL((u) => u.toString().startsWith(BASE));
  await p.goto(evil);
  await landed;
  await p.waitForLoadState();
  const text = await p.textContent("body");
  assert(/Request refused|Sign in/.test(text), `cross-site post was not refused: ${text.slice(0, 200)}`);
  await p.close();
  server.close();
  assert((await verify(second.plaintext)) === "VALID", "the key is untouched");
});

await check("the key page charts its verifications by outcome, with source addresses", async () => {
  for (let i = 0; i < 4; i++) assert((await verify(second.plaintext, { ip: "203.0.113.10" })) === "VALID", "valid");
  for (let i = 0; i < 2; i++) {
    const code = await verify(second.plaintext, { scopes: ["orders:write"] });
    assert(code === "INSUFFICIENT_SCOPE", `denied with ${code}`);
  }
  const chart = "#usage svg[role=img]";
  await until("the usage flush", async () => {
    await page.goto(`${BASE}/keys/${second.id}`);
    return Number(await page.getAttribute(chart, "data-denied")) >= 2;
  });
  assert(Number(await page.getAttribute(chart, "data-valid")) >= 4, "valid verifications charted");
  assert(await page.isVisible(chart), "the chart is visible");
  assert((await page.textContent(`${chart} title`)).includes("per hour"), "the chart has a title");
  assert((await page.locator(`${chart} rect[data-code=INSUFFICIENT_SCOPE]`).count()) === 1, "a denial segment");
  assert((await page.textContent("#usage .legend")).includes("Insufficient scope"), "the legend names the denial");
  assert((await page.textContent("#sources")).includes("203.0.113.10"), "the source address is listed");
  const box = await page.locator(chart).boundingBox();
  assert(box.width > 600 && box.height > 200, `the chart is drawn at ${box.width}x${box.height}`);
  await Promise.all([page.waitForNavigation(), page.click("#usage [data-view='30d']")]);
  assert(page.url().includes("usage=30d"), `went to ${page.url()}`);
  assert((await page.getAttribute(chart, "data-view")) === "30d", "the 30-day view");
  assert(Number(await page.getAttribute(chart, "data-valid")) >= 4, "the 30-day view counts them too");
});

const receiver = await startReceiver();
let webhookSecret;

await check("an admin creates a webhook, its secret is shown once, and deliveries are listed", async () => {
  await page.goto(`${BASE}/webhooks`);
  await page.fill("#wurl", receiver.url);
  await page.check("input[name=events][value='key.created']");
  await page.check("input[name=events][value='key.revoked']");
  const [res] = await Promise.all([page.waitForNavigation(), page.click("[data-action=create-webhook]")]);
  assert(res.headers()["cache-control"].includes("no-store"), "the secret page is not stored");
  webhookSecret = (await page.textContent("#plaintext")).trim();
  assert(/^whsec_[0-9A-Za-z]+$/.test(webhookSecret), "a signing secret is shown");
  assert(await page.isVisible("[data-copy=plaintext]"), "copy button shown");
  assert((await page.textContent(".warning")).includes("shown only once"), "warning shown");
  await Promise.all([page.waitForNavigation(), page.click("[data-action=done]")]);
  assert(!(await page.content()).includes(webhookSecret), "the webhooks page does not show the secret");
  assert((await page.locator("[data-webhook]").count()) === 1, "the webhook is listed");
  await createKey(page, "Orders API", "webhook probe", "team-search");
  await until("a delivery", async () => {
    await page.goto(`${BASE}/webhooks`);
    return (await page.locator("table.deliveries td .badge").count()) > 0;
  });
  assert((await page.textContent("table.deliveries")).includes("key.created"), "the event is listed");
  assert((await page.textContent("table.deliveries .badge")).trim() === "200", "delivered");
  assert(receiver.received[0].signature.startsWith("t="), "signed");
});

await check("an admin or auditor downloads the inventory CSV", async () => {
  await page.goto(`${BASE}/reports`);
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("[data-action=download-inventory]")]);
  const file = await download.path();
  const csv = fs.readFileSync(file, "utf8");
  assert(csv.startsWith("id,name,owner,"), "a CSV with its header");
  assert(csv.includes(second.id), "the key is in the inventory");
});

const viewer = await browserContext();
const vpage = await viewer.ctx.newPage();

await check("a viewer signs in and sees no revoke or rotate button", async () => {
  await signIn(vpage, VIEWER);
  assert(new URL(vpage.url()).pathname === "/", `landed on ${vpage.url()}`);
  await vpage.goto(`${BASE}/keys/${second.id}`);
  assert((await vpage.textContent("h1")).includes("search staging"), "the viewer can read the key");
  assert((await vpage.locator("[data-action=revoke]").count()) === 0, "no revoke button");
  assert((await vpage.locator("[data-action=rotate]").count()) === 0, "no rotate button");
  assert((await vpage.locator("text=Revoke key").count()) === 0, "no revoke panel");
  assert((await vpage.locator("[data-action=new-key]").count()) === 0, "no create button");
});

await check("a viewer posting the revoke form directly is refused (403)", async () => {
  const res = await vpage.evaluate(async (id) => {
    const csrf = document.querySelector("input[name=csrf]").value;
    const body = new URLSearchParams({ csrf, reason: "viewer tries", confirm: "yes" });
    const r = await fetch(`/keys/${id}/revoke`, { method: "POST", body, credentials: "same-origin" });
    return { status: r.status, text: await r.text() };
  }, second.id);
  assert(res.status === 403, `answered ${res.status}`);
  assert(res.text.includes("does not allow"), "the page says why");
  assert((await verify(second.plaintext)) === "VALID", "the key is untouched");
});

await check("a viewer finds no webhooks page and is refused when posting its form", async () => {
  await vpage.goto(`${BASE}/`);
  assert((await vpage.locator("a[href='/webhooks']").count()) === 0, "no Webhooks link");
  const r = await vpage.goto(`${BASE}/webhooks`);
  assert(r.status() === 403, `the page answered ${r.status()}`);
  await vpage.goto(`${BASE}/keys`);
  const status = await vpage.evaluate(async (url) => {
    const csrf = document.querySelector("input[name=csrf]").value;
    const body = new URLSearchParams({ csrf, url, events: "key.created" });
    const r = await fetch("/webhooks", { method: "POST", body, credentials: "same-origin" });
    return r.status;
  }, receiver.url + "?viewer");
  assert(status === 403, `creating answered ${status}`);
});

await check("signing out ends the session", async () => {
  await Promise.all([vpage.waitForNavigation(), vpage.click("[data-action=logout]")]);
  await vpage.goto(`${BASE}/keys`);
  assert(new URL(vpage.url()).pathname === "/login", `went to ${vpage.url()}`);
});
await viewer.cleanup();

if (SHOTS) {
  await check("screenshots of the main pages", async () => {
    // A little more data so the pages look like an installation in use.
    await createKeyspace(page, "Payments API", "pay_live", "strict");
    await createKeyspace(page, "Internal tools", "tools", "relaxed");
    const made = [];
    for (const [ks, name, owner, labels] of [
      ["Payments API", "checkout service", "team-payments", "env=prod"],
      ["Payments API", "refunds worker", "team-payments", "env=prod"],
      ["Orders API", "partner: Globex", "partner-globex", "tier=gold"],
      ["Orders API", "mobile app", "team-mobile", "env=prod"],
      ["Internal tools", "grafana scraper", "sre", "env=ops"],
    ]) {
      made.push(await createKey(page, ks, name, owner, { scopes: "orders:read", labels }));
    }
    for (let i = 0; i < 25; i++) await verify(made[i % made.length].plaintext);
    await verify("acme_" + "0".repeat(38));
    // The mobile app is used from a few addresses, sometimes with a scope it does not have.
    const addrs = ["203.0.113.24", "203.0.113.25", "198.51.100.7", "192.0.2.140"];
    for (let i = 0; i < 18; i++) await verify(made[3].plaintext, { ip: addrs[i % addrs.length] });
    for (let i = 0; i < 3; i++) await verify(made[3].plaintext, { ip: addrs[0], scopes: ["orders:write"] });
    // A rotation, so the detail page shows a lineage.
    await page.goto(`${BASE}/keys/${made[3].id}`);
    await page.click("details.action-card:not(.danger) summary");
    await page.fill("#rotate-reason", "scheduled rotation");
    await Promise.all([page.waitForNavigation(), page.click("[data-action=rotate]")]);
    await new Promise((ok) => setTimeout(ok, 1500)); // let usage counts flush

    await page.goto(`${BASE}/`);
    await shot(page, "overview");
    await page.goto(`${BASE}/keys`);
    await shot(page, "keys");
    await createKey(page, "Orders API", "reporting export", "team-data", { scopes: "orders:read reports:*" });
    await shot(page, "create-result", false);
    await page.goto(`${BASE}/keys/${made[3].id}`);
    await shot(page, "key-detail");
    await page.goto(`${BASE}/webhooks`);
    await shot(page, "webhooks");
    await page.goto(`${BASE}/reports`);
    await shot(page, "reports");
    await page.goto(`${BASE}/audit`);
    await shot(page, "audit");
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(`${BASE}/`);
    await shot(page, "overview-phone");
    await page.goto(`${BASE}/keys/${made[3].id}`);
    await shot(page, "key-detail-phone");
    await page.setViewportSize({ width: 1280, height: 800 });
  });
}

receiver.close();
await admin.cleanup();
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
