// Drives the gateway's dashboard (/ui) in headless Chromium and checks each page shows what the
// running system holds; a screenshot of each page goes to OUT_DIR. Started by tests/tests/dashboard.rs,
// which sets the system up and passes what to look for:
//   GATEWAY_URL, OUT_DIR, SERVICES (comma-separated), EDGE (from->to), BREAKER (an OPEN breaker),
//   RUN (a compensated run's id), WORKFLOW (its workflow id).
// Exits non-zero, naming the failed check, when a page does not show it.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const base = env("GATEWAY_URL");
const out = env("OUT_DIR");
mkdirSync(out, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const checks = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  const check = async (what, fn) => {
    try {
      await fn();
      checks.push(what);
    } catch (e) {
      throw new Error(`${what}: ${e.message.split("\n")[0]}`);
    }
  };
  const shot = (name) => page.screenshot({ path: `${out}/${name}.png`, fullPage: true });
  const wait = { timeout: 15000 };

  // Services and instances, with live health.
  await page.goto(`${base}/ui#/services`);
  for (const service of env("SERVICES").split(",")) {
    await check(`the services page lists ${service}`, () =>
      page.locator(`tr.service[data-service="${service}"]`).waitFor(wait));
  }
  await check("instances show their health", () =>
    page.locator("tr.instance .badge[data-status=passing]").first().waitFor(wait));
  await shot("services");

  // The dependency graph as a picture.
  const [from, to] = env("EDGE").split("->");
  await page.goto(`${base}/ui#/graph`);
  await check(`the graph draws ${from}`, () => page.locator(`svg rect.node[data-node="${from}"]`).waitFor(wait));
  await check(`the graph draws ${from} -> ${to}`, () =>
    page.locator(`svg line.edge[data-edge="${from}->${to}"]`).waitFor({ ...wait, state: "attached" }));
  await shot("graph");

  // Circuit breakers update live: the open one closes after a reset, without reloading.
  const breaker = env("BREAKER");
  await page.goto(`${base}/ui#/breakers`);
  const row = page.locator(`tr.breaker[data-breaker="${breaker}"]`);
  await check(`breaker ${breaker} shows OPEN`, () => row.locator(".badge[data-status=OPEN]").waitFor(wait));
  await check(`breaker ${breaker} shows its failure rate as the API reports it`, async () => {
    const api = await (await fetch(`${base}/api/circuit-breakers/${breaker}`)).json();
    const expected = `${api.maxFailureRate.toFixed(1)}%`;
    const text = (await row.locator("td").nth(2).innerText()).trim();
    if (api.maxFailureRate <= 0 || text !== expected) throw new Error(`failure rate cell says ${text}, the API ${expected}`);
  });
  await shot("breakers-open");
  await row.getByRole("button", { name: "Reset" }).click();
  await check(`breaker ${breaker} turns CLOSED live after the reset`, () =>
    row.locator(".badge[data-status=CLOSED]").waitFor(wait));
  await shot("breakers-reset");

  // Workflow runs, filtered, and one run's step timeline.
  const run = env("RUN");
  await page.goto(`${base}/ui#/workflows?workflowId=${env("WORKFLOW")}&status=COMPENSATED`);
  await check("the filtered list shows the compensated run", () =>
    page.locator(`tr.run[data-run="${run}"] .badge[data-status=COMPENSATED]`).waitFor(wait));
  await check("the filter leaves out completed runs", async () => {
    const completed = await page.locator("tr.run .badge[data-status=COMPLETED]").count();
    if (completed !== 0) throw new Error(`${completed} completed runs listed`);
  });
  await shot("workflows");
  await page.locator(`tr.run[data-run="${run}"]`).click();
  await check("the run page draws a timeline of its steps", () =>
    page.locator("svg rect.step").first().waitFor(wait));
  await check("the timeline marks each attempt, retries included", async () => {
    const attempts = await page.locator("svg circle.attempt").count();
    if (attempts < 3) throw new Error(`${attempts} attempt marks`);
  });
  await check("the timeline marks the compensation", () =>
    page.locator("svg rect.compensation").first().waitFor({ ...wait, state: "attached" }));
  await check("the step table shows the retried and compensated steps", async () => {
    await page.locator("tr.step-row .badge[data-status=compensated]").first().waitFor(wait);
    await page.locator("tr.step-row .badge[data-status=failed]").first().waitFor(wait);
  });
  await shot("run");
  if (errors.length) throw new Error(`script errors on the pages: ${errors.join("; ")}`);
  console.log(JSON.stringify({ ok: true, checks }));
} catch (e) {
  console.error(`dashboard check failed: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
