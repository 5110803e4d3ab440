// Browser test of the API reference at /docs: Swagger UI served by samserve itself, used
// offline with try-it-out against the running server.
//
//   node tests/browser/docs.test.mjs --base http://127.0.0.1:PORT --image-id ID --out target/browser
//
// Run by tests/browser.rs. Every request outside the server is blocked and counted: the page
// must need none. Exits non-zero with a message on the first failed check; writes docs.png.

import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const BASE = args.base || "http://127.0.0.1:8080";
const IMAGE_ID = args["image-id"];
const OUT = path.resolve(args.out || path.join(here, "../../target/browser"));
const CHROMIUM = process.env.SAMSERVE_CHROMIUM || "/usr/bin/chromium";
fs.mkdirSync(OUT, { recursive: true });

function check(cond, msg) {
  if (!cond) throw new Error(`check failed: ${msg}`);
}

// Expands an operation, presses "Try it out", fills path parameters, presses "Execute" and
// returns the live response's status and body text.
async function tryIt(page, opId, params = {}) {
  const op = page.locator(`#${opId}`);
  await op.waitFor({ timeout: 30000 });
  await op.locator(".opblock-summary").first().click();
  await op.locator("button.try-out__btn").click();
  for (const [name, value] of Object.entries(params)) {
    await op.locator(`tr[data-param-name="${name}"] input`).fill(value);
  }
  await op.locator("button.execute").click();
  const status = op.locator(".live-responses-table .response .response-col_status").first();
  await status.waitFor({ timeout: 30000 });
  const body = await op.locator(".live-responses-table .response-col_description pre").first().innerText();
  return { status: (await status.innerText()).trim(), body };
}

async function main() {
  check(IMAGE_ID, "--image-id is required");
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "samserve-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1360, height: 1000 },
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--disable-dev-shm-usage",
    ],
  });
  const page = context.pages()[0] || (await context.newPage());
  const errors = [];
  const foreign = [];
  try {
    // Offline: anything not served by samserve is refused (and fails the test).
    await context.route("**/*", (route) => {
      const u = route.request().url();
      if (u.startsWith(BASE) || u.startsWith("data:") || u.startsWith("blob:")) return route.continue();
      foreign.push(u);
      return route.abort();
    });
    page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
    page.on("pageerror", (e) => errors.push(String(e)));
    const failed = [];
    page.on("response", (r) => { if (r.status() >= 400) failed.push(`${r.status()} ${r.url()}`); });

    await page.goto(`${BASE}/docs`);
    await page.locator(".swagger-ui .info .title").waitFor({ timeout: 30000 });
    const title = await page.locator(".swagger-ui .info .title").innerText();
    check(title.includes("samserve"), `title: ${title}`);
    const ops = await page.locator(".opblock").count();
    check(ops >= 15, `only ${ops} operations rendered`);

    // Try it out: a plain GET, then one with a path parameter.
    const models = await tryIt(page, "operations-system-models");
    check(models.status === "200", `GET /v1/models answered ${models.status}`);
    check(models.body.includes("sam-tiny"), `GET /v1/models body: ${models.body.slice(0, 200)}`);
    const image = await tryIt(page, "operations-images-get_image", { image_id: IMAGE_ID });
    check(image.status === "200", `GET /v1/images/{id} answered ${image.status}: ${image.body.slice(0, 200)}`);
    const health = await tryIt(page, "operations-system-healthz");
    check(health.status === "200", `GET /healthz answered ${health.status}`);

    // Schemas resolve (no "Could not resolve reference" errors in the rendered page).
    const text = await page.locator("#swagger-ui").innerText();
    check(!/could not resolve/i.test(text), "unresolved $ref in the rendered document");

    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: path.join(OUT, "docs.png"), fullPage: false });
    check(foreign.length === 0, `requests outside the server: ${foreign.join(", ")}`);
    check(errors.length === 0, `console errors: ${errors.join(" | ")}`);
    check(failed.length === 0, `failed requests: ${failed.join(", ")}`);
    console.log(`docs: ${ops} operations, try-it-out GET /v1/models ${models.status}, GET /v1/images/{id} ${image.status}; no request left the server`);
  } catch (e) {
    await page.screenshot({ path: path.join(OUT, "docs-failure.png") }).catch(() => {});
    throw e;
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
