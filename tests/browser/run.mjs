// Real-browser tests of the keyward dashboard: headless Chromium driven by playwright-core.
//
//   node tests/browser/run.mjs --url http://127.0.0.1:PORT --setup-link LINK \
//        --keyward PATH/TO/keyward --database-url sqlite://... [--screenshots DIR]
//
// Started by crates/keyward/tests/browser.rs against a fresh `keyward serve` (SQLite) whose
// database has no users yet: the admin is created through the one-time setup link, then a
// viewer with `keyward user create`. Exits non-zero when a check fails.
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

async function verify(key) {
  const r = await fetch(`${BASE}/v1/verify`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ key }),
  });
  assert(r.status === 200, `verify answered ${r.status}`);
  return (await r.json()).code;
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

await check("creating a key shows its plaintext once, and the API says VALID", async () => {
  first = await createKey(page, "Orders API", "billing prod", "team-billing", {
    scopes: "orders:read orders:write", labels: "env=prod",
  });
  assert(/^acme_[0-9A-Za-z]{38}$/.test(first.plaintext), `plaintext looks like a key: ${first.plaintext.length} chars`);
  assert((await page.textContent(".warning")).includes("shown only once"), "warning shown");
  assert(await page.isVisible("[data-copy=plaintext]"), "copy button shown");
  assert((await verify(first.plaintext)) === "VALID", "the new key verifies");
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
    const fresh = await createKey(page, "Orders API", "reporting export", "team-data", { scopes: "orders:read reports:*" });
    await shot(page, "create-result", false);
    await page.goto(`${BASE}/keys/${made[3].id}`);
    await shot(page, "key-detail");
    await page.goto(`${BASE}/audit`);
    await shot(page, "audit");
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(`${BASE}/`);
    await shot(page, "overview-phone");
    await page.goto(`${BASE}/keys/${fresh.id}`);
    await shot(page, "key-detail-phone");
    await page.setViewportSize({ width: 1280, height: 800 });
  });
}

await admin.cleanup();
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
