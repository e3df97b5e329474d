// The console in Firefox ESR, driven over WebDriver BiDi by puppeteer-core (no browser download:
// Debian's firefox-esr). tests/console/test_console_firefox.py writes the plan on stdin (where the
// console is, who signs in, which instances to open) and reads back, on stdout, one JSON report of
// what the pages showed; the test holds the expectations. A wait that runs out ends the run and
// names what was awaited in `failure`.

import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import puppeteer from "puppeteer-core";

const plan = JSON.parse(readFileSync(0, "utf8"));
const TIMEOUT_MS = plan.timeout_ms;
const report = { browser: "", steps: [], problems: [], dialogs: [], failure: null };
const started = Date.now();

function log(text) {
  process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${text}\n`);
}

/** Records every console error or warning, uncaught error, dialog and failed request of a page. */
function watch(page, name) {
  page.on("console", (message) => {
    if (["error", "warn", "assert"].includes(message.type())) {
      report.problems.push(`${name}: console ${message.type()}: ${message.text()}`);
    }
  });
  page.on("pageerror", (error) => report.problems.push(`${name}: page error: ${error.message || error}`));
  page.on("dialog", async (dialog) => {
    report.dialogs.push(`${name}: ${dialog.type()}: ${dialog.message()}`);
    await dialog.dismiss();
  });
  page.on("requestfailed", (request) => {
    const why = request.failure() ? request.failure().errorText : "failed";
    report.problems.push(`${name}: ${request.method()} ${request.url()}: ${why}`);
  });
  page.on("response", (response) => {
    if (response.status() >= 400) {
      report.problems.push(`${name}: ${response.status()} from ${response.request().method()} ${response.url()}`);
    }
  });
}

/** Waits until `predicate` (run in the page) returns a truthy value, and returns that value. */
async function until(page, what, predicate, ...args) {
  try {
    const handle = await page.waitForFunction(predicate, { timeout: TIMEOUT_MS, polling: 100 }, ...args);
    const value = await handle.jsonValue();
    await handle.dispose();
    return value;
  } catch (error) {
    throw new Error(`${what}: not seen within ${TIMEOUT_MS} ms (${error.message.split("\n")[0]})`);
  }
}

function byRole(role, name) {
  return `::-p-aria([name=${JSON.stringify(name)}][role="${role}"])`;
}

/** The form control a <label> with this text names. (Firefox's accessibility tree names the label
 * itself too, and a password field has no textbox role there.) */
async function byLabel(page, text) {
  const control = await page.waitForFunction((wanted) =>
    [...document.querySelectorAll("label")].find((label) => label.textContent.trim() === wanted)?.control,
  { timeout: TIMEOUT_MS, polling: 100 }, text);
  return control.asElement().asLocator();
}

async function step(name, action) {
  const begun = Date.now();
  log(`${name}…`);
  const observed = await action();
  report.steps.push({ name, ms: Date.now() - begun, ...observed });
}

async function screenshot(page, name) {
  if (!plan.screenshots) return;
  mkdirSync(plan.screenshots, { recursive: true });
  await page.screenshot({ path: join(plan.screenshots, `${name}.png`), fullPage: true });
}

async function signIn(page, route) {
  await page.goto(plan.url + route);
  await (await byLabel(page, "Client id")).fill(plan.client_id);
  await (await byLabel(page, "Client secret")).fill(plan.client_secret);
  await page.locator(byRole("button", "Sign in")).click();
  await page.locator(byRole("button", "Sign out")).setTimeout(TIMEOUT_MS).wait();
  return page.$eval("header.top", (header) => header.textContent);
}

/** The page's widths: what the viewport shows and what its content would need. */
function widths(page) {
  return page.evaluate(() => ({
    viewport: document.documentElement.clientWidth,
    scroll: document.documentElement.scrollWidth,
    body: document.body.scrollWidth,
  }));
}

/** The diagram as drawn: each node's shape, box and badges. */
function diagramOf(page) {
  return page.$eval("svg.diagram", (svg) => {
    const box = svg.getBoundingClientRect();
    const nodes = {};
    for (const node of svg.querySelectorAll("g.node")) {
      const shape = node.querySelector(".shape");
      const rect = shape.getBoundingClientRect();
      const badges = {};
      for (const badge of node.querySelectorAll("g.badge")) badges[badge.dataset.status] = Number(badge.dataset.count);
      nodes[node.dataset.node] = {
        shape: shape.tagName,
        label: node.querySelector("text.label")?.textContent ?? "",
        width: rect.width,
        height: rect.height,
        badges,
        classes: node.getAttribute("class"),
      };
    }
    return {
      width: box.width,
      height: box.height,
      nodes,
      flows: svg.querySelectorAll("g.flow path.line").length,
      takenFlows: [...svg.querySelectorAll("g.flow.taken")].map((g) => `${g.dataset.from}>${g.dataset.to}`),
    };
  });
}

function rowsOf(page, selector) {
  return page.$$eval(selector, (rows) => rows.map((row) => [...row.children].map((cell) => cell.textContent.trim())));
}

/** Whether each element matched is wholly inside the viewport. */
function inViewport(page, selector) {
  return page.$$eval(selector, (elements) => elements.map((element) => {
    const r = element.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && r.left >= 0 && r.top >= 0 && r.right <= window.innerWidth && r.bottom <= window.innerHeight;
  }));
}

/** Closes a page's context, no longer listening: a refresh cut short by the closing is no fault. */
async function leave(page, context) {
  page.removeAllListeners();
  await context.close();
}

let current = null; // the open page, for a screenshot when a wait runs out

async function wide(browser) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  current = page;
  watch(page, "1280 px");
  await page.setViewport({ width: 1280, height: 900 });

  await step("sign in", async () => {
    const header = await signIn(page, "");
    await page.locator(byRole("heading", "Definitions")).setTimeout(TIMEOUT_MS).wait();
    const stored = await page.evaluate(() => [localStorage.length, sessionStorage.length, document.cookie]);
    return { header, stored };
  });

  await step("definitions", async () => {
    const definition = plan.definition;
    await until(page, `the row of ${definition}`, (id) =>
      [...document.querySelectorAll("tbody tr")].some((row) => row.cells[0].textContent === id), definition);
    await page.locator(`tbody tr a[href="#/definitions/${definition}"]`).click();
    await until(page, `the diagram of ${definition}`, () => document.querySelectorAll("svg.diagram g.node").length > 0);
    // The badges follow the first refresh after the diagram is drawn.
    await until(page, "a badge", () => document.querySelector("svg.diagram g.badge") !== null);
    const rows = await rowsOf(page, "table.list tbody tr");
    const diagram = await diagramOf(page);
    await screenshot(page, "definitions");
    return { rows, diagram, title: await page.$eval("#definition-title", (e) => e.textContent), widths: await widths(page) };
  });

  await step("instances", async () => {
    await page.locator(byRole("link", "Instances")).click();
    await until(page, "the instances list", (ids) => {
      const shown = new Set([...document.querySelectorAll("table.list tbody tr")].map((row) => row.dataset.key));
      return ids.every((id) => shown.has(id));
    }, plan.listed);
    const all = await page.$$eval("table.list tbody tr", (rows) => rows.map((row) => row.dataset.key));
    await until(page, `${plan.definition} among the definitions to filter by`, (definition) =>
      [...document.querySelectorAll("#f-definition option")].some((option) => option.value === definition), plan.definition);
    await (await byLabel(page, "Definition")).fill(plan.definition);
    await page.locator(byRole("button", "Apply filters")).click();
    await until(page, `only ${plan.definition} instances`, (definition) => {
      const rows = [...document.querySelectorAll("table.list tbody tr")];
      return location.hash.includes(`definition_id=${definition}`) && rows.length > 0 &&
        rows.every((row) => row.textContent.includes(definition));
    }, plan.definition);
    const filtered = await page.$$eval("table.list tbody tr", (rows) => rows.map((row) => row.dataset.key));
    return { all, filtered, hash: await page.evaluate(() => location.hash), widths: await widths(page) };
  });

  await step("instance", async () => {
    const id = plan.incident;
    await page.evaluate((target) => { location.hash = `#/instances/${target}`; }, id);
    await until(page, "the instance's tokens and variables", () =>
      document.querySelector("table.tokens tbody tr") && document.querySelector("table.variables tbody tr") &&
      document.querySelector("svg.diagram g.badge"));
    const tokens = await rowsOf(page, "table.tokens tbody tr");
    const variables = await rowsOf(page, "table.variables tbody tr");
    const diagram = await diagramOf(page);
    const made = await page.evaluate(() => ({
      images: document.querySelectorAll("img").length,
      markup: document.querySelectorAll("main b, main i").length,
    }));
    await screenshot(page, "instance");
    // The incident's reason, one key away on the diagram: Tab to the node, then Enter.
    const tabbed = [];
    for (let presses = 0; presses < 12 && !tabbed.includes("task"); presses += 1) {
      await page.keyboard.press("Tab");
      tabbed.push(await page.evaluate(() => document.activeElement.dataset.node ||
        (document.activeElement.getAttribute("aria-label") || document.activeElement.textContent).trim()));
    }
    const focusStroke = await page.$eval('svg.diagram g.node[data-node="task"] .shape', (shape) => getComputedStyle(shape).stroke);
    await page.keyboard.press("Enter");
    const note = await until(page, "the node's note", () => document.querySelector(".node-note")?.textContent.trim());
    return { tokens, variables, diagram, made, tabbed, focusStroke, note, widths: await widths(page) };
  });

  await step("retry", async () => {
    await page.locator(byRole("textbox", "Variables to set first, as a JSON object (optional), for the token on task"))
      .fill('{"approved": true}');
    await page.locator(byRole("button", "Retry the incident on task")).click();
    const status = await until(page, "the retry's result", () => document.querySelector("[role=status]")?.textContent);
    await until(page, "the instance shown completed", () =>
      document.querySelector("dl.facts-grid")?.textContent.includes("completed"));
    return { status, facts: await page.$eval("dl.facts-grid", (e) => e.textContent) };
  });
  await leave(page, context);
}

async function narrow(browser) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  current = page;
  watch(page, "390 px");
  await page.setViewport({ width: 390, height: 844 });

  await step("instance at 390 px", async () => {
    await signIn(page, `#/instances/${plan.narrow}`);
    await until(page, "the instance's diagram", () => {
      const svg = document.querySelector("svg.diagram");
      return svg && svg.getBoundingClientRect().width > 0 && document.querySelector("table.tokens tbody tr");
    });
    const measured = await widths(page);
    const nav = await inViewport(page, "nav a");
    const navNames = await page.$$eval("nav a", (links) => links.map((link) => link.textContent));
    // What is wider than the page: only the containers that scroll by design may be.
    const overflowing = await page.evaluate(() => {
      const limit = document.documentElement.clientWidth;
      return [...document.querySelectorAll("body *")]
        .filter((element) => element.getBoundingClientRect().right > limit + 0.5)
        .filter((element) => !element.closest(".table-wrap, .diagram-box, nav ul"))
        .map((element) => `${element.tagName.toLowerCase()}.${element.getAttribute("class") || ""}`);
    });
    await screenshot(page, "instance-390");
    const retry = byRole("button", "Retry the incident on task");
    await page.$eval(retry, (button) => button.scrollIntoView({ block: "center" }));
    const retryInView = (await inViewport(page, retry))[0];
    await page.locator(retry).click();
    const status = await until(page, "the retry's result", () => document.querySelector("[role=status]")?.textContent);
    return { widths: measured, nav, navNames, overflowing, retryInView, status };
  });

  await step("definition at 390 px", async () => {
    await page.locator(byRole("link", "Definitions")).click();
    await page.locator(`tbody tr a[href="#/definitions/${plan.narrow_definition}"]`).click();
    await until(page, "the definition's diagram", () => document.querySelector("svg.diagram g.node"));
    // The version's label stays beside its menu when the heading's row wraps.
    const version = await page.evaluate(() => {
      const middle = (element) => { const r = element.getBoundingClientRect(); return (r.top + r.bottom) / 2; };
      const select = document.getElementById("definition-version");
      return Math.abs(middle(select.labels[0]) - middle(select));
    });
    await screenshot(page, "definition-390");
    return { widths: await widths(page), versionLabelOffset: version };
  });
  await leave(page, context);
}

let browser = null;
try {
  browser = await puppeteer.launch({
    browser: "firefox",
    executablePath: plan.firefox,
    headless: true,
    timeout: 60_000,
  });
  report.browser = await browser.version();
  log(`launched ${report.browser}`);
  await wide(browser);
  await narrow(browser);
} catch (error) {
  report.failure = error.stack || String(error);
  if (current && !current.isClosed()) {
    await screenshot(current, "failure").catch(() => {});
    report.failure += `\nThe page showed: ${await current.evaluate(() => document.body.innerText).catch(() => "?")}`;
  }
} finally {
  if (browser) await browser.close();
}
log("done");
process.stdout.write(`${JSON.stringify(report)}\n`);
