// End-to-end test of the built-in dashboard in headless Chromium (Debian's
// package, driven by playwright-core): opens /dashboard on a running
// `sluice up`, places orders through the REST API while the page is open,
// and checks that the page shows their event rates, the topology they went
// through, the consumer groups and one order's trace; then lists the dead letters with the
// admin key and purges one from the page. Saves a screenshot.
//
//   node dashboard.mjs <base URL> <admin key> <dead letter subject> <screenshot.png>
//
// Exits 0 when every check passed; otherwise prints what failed and exits 1.
// Run by cli/tests/cli.rs (dashboard_shows_live_traffic_in_a_browser).

import { chromium } from "playwright-core";

const [base, adminKey, poisonSubject, screenshot] = process.argv.slice(2);
if (!screenshot) {
  console.error("usage: node dashboard.mjs <base URL> <admin key> <dead letter subject> <screenshot.png>");
  process.exit(2);
}
const WAIT = 30_000;

async function api(method, path, body, headers = {}) {
  const r = await fetch(base + path, {
    method,
    headers: { "content-type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : {};
}

const browser = await chromium.launch({
  executablePath: process.env.SLUICE_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
let failed = false;
const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
page.on("console", (m) => { if (m.type() === "error") console.error("page console:", m.text()); });
page.on("pageerror", (e) => { failed = true; console.error("page error:", e.message); });
try {
  await page.goto(base + "/dashboard");
  await page.waitForSelector("#status.live", { timeout: WAIT });
  console.log("dashboard is live");

  // A customer orders while the page is open.
  const email = `dash-${Date.now()}@example.com`;
  const password = "correct horse battery";
  await api("POST", "/v1/accounts", { email, password });
  const { access_token } = await api("POST", "/v1/auth/token", { email, password });
  const product = await api("POST", "/v1/products",
    { sku: `dash-${Date.now()}`, name: "Mug", price_cents: 899, currency: "EUR", stock: 100 },
    { "x-api-key": adminKey });
  const orders = [];
  for (let i = 0; i < 8; i++) {
    const o = await api("POST", "/v1/orders",
      { items: [{ product_id: product.id, quantity: 1 }], payment_token: "tok_visa" },
      { authorization: `Bearer ${access_token}`, "idempotency-key": `dash-${Date.now()}-${i}` });
    orders.push(o.id);
    await new Promise((r) => setTimeout(r, 150));
  }
  console.log(`placed ${orders.length} orders`);

  // Rates: the page saw orders being placed, per second.
  await page.waitForFunction(() => [...document.querySelectorAll("[data-testid=rates] tr")].some((tr) =>
    tr.cells[0]?.textContent.endsWith("order.placed") && parseFloat(tr.cells[1].textContent) > 0), null, { timeout: WAIT });
  console.log("rates: order.placed published/s > 0");
  await page.waitForFunction(() => [...document.querySelectorAll("[data-testid=rates] tr")].some((tr) =>
    tr.cells[0]?.textContent.endsWith("order.confirmed") && parseInt(tr.cells[4].textContent.replace(/\D/g, ""), 10) >= 8),
    null, { timeout: WAIT });
  console.log("rates: order.confirmed handled");

  // Topology: edge → orders.cmd.place → orders, orders → order.placed → inventory.
  for (const edge of [
    "service:edge->subject:orders.cmd.place",
    "subject:orders.cmd.place->group:orders",
    "service:orders->subject:orders.order.placed",
    "subject:orders.order.placed->group:inventory",
    "subject:orders.order.confirmed->group:edge-orders",
  ]) {
    await page.waitForSelector(`svg[data-testid=topology] path[data-edge="${edge}"]`, { timeout: WAIT, state: "attached" });
  }
  console.log("topology: the order's path is drawn");

  // Consumer groups with latency percentiles.
  await page.waitForFunction(() => [...document.querySelectorAll("[data-testid=groups] tr")].some((tr) =>
    tr.cells[0]?.textContent === "edge-orders" && tr.cells[6].textContent.endsWith("ms")), null, { timeout: WAIT });
  console.log("groups: edge-orders with handler latency");

  // The trace of one order: the command, its events and their handlers.
  await page.fill("#trace-key", orders[0]);
  await page.click("#trace-form button");
  for (const span of ["POST /v1/orders", "process orders.cmd.place", "create orders.order.placed",
    "process orders.order.placed", "process payments.cmd.charge", "process orders.order.confirmed"]) {
    await page.waitForSelector(`[data-testid=traces] tr[data-span="${span}"]`, { timeout: WAIT });
  }
  console.log(`trace: the order's spans are shown (${await page.locator("[data-testid=traces] tr[data-span]").count()} spans)`);

  // Dead letters: listed with the admin key, purged from the page.
  await page.fill("#dlq-key", adminKey);
  await page.click("#dlq-key-form button");
  const letter = `[data-testid=dead-letters] tr[data-dead-letter]`;
  await page.waitForFunction((subject) => [...document.querySelectorAll("[data-testid=dead-letters] tr[data-dead-letter]")]
    .some((tr) => tr.cells[1].textContent === subject), poisonSubject, { timeout: WAIT });
  const before = await page.locator(letter).count();
  const row = page.locator(letter).filter({ hasText: poisonSubject }).first();
  const id = await row.getAttribute("data-dead-letter");
  console.log(`dead letters: ${before} listed, purging ${id}`);
  await row.locator("button[data-action=purge]").click();
  await page.waitForFunction((id) => !document.querySelector(`[data-testid=dead-letters] tr[data-dead-letter="${id}"]`)
    && document.getElementById("dlq-message").textContent.includes("purged"), id, { timeout: WAIT });
  console.log("dead letters: purged from the page");
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);
} catch (e) {
  failed = true;
  console.error("FAILED:", e.message);
  await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
