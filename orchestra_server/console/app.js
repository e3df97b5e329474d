// The console's shell: sign-in, the navigation, hash routing, messages and the polling that
// keeps the open page current.

import { currentSession, onSignedOut, signIn, signOut } from "./api.js";
import { fill, h } from "./dom.js";
import * as definitions from "./definitions.js";
import * as incidents from "./incidents.js";
import * as instance from "./instance.js";
import * as instances from "./instances.js";

const REFRESH_MS = 3000;
const ROUTES = [
  { pattern: /^#\/definitions(?:\/([^/?]+))?$/, page: definitions, nav: "definitions" },
  { pattern: /^#\/instances\/([^/?]+)$/, page: instance, nav: "instances" },
  // The query stays encoded: the page parses it as a query (a value may hold & or +).
  { pattern: /^#\/instances(?:\?(.*))?$/, page: instances, nav: "instances", query: true },
  { pattern: /^#\/incidents$/, page: incidents, nav: "incidents" },
];
const NAV = [
  ["definitions", "Definitions", "#/definitions"],
  ["instances", "Instances", "#/instances"],
  ["incidents", "Incidents", "#/incidents"],
];

const root = document.getElementById("app");
let current = null; // { page, view, hash }
let timer = null;
let refreshing = false;
let signInNotice = "";

/** Messages: errors stay until dismissed or replaced; results say what happened. */
const messages = h("div", { class: "messages", "aria-live": "polite" });

export function showError(error) {
  const text = error && error.message ? error.message : String(error);
  fill(messages, h("div", { class: "message error", role: "alert" },
    h("span", {}, text),
    h("button", { type: "button", class: "link", onclick: () => fill(messages), "aria-label": "Dismiss message" }, "Dismiss")));
}

export function showResult(text) {
  fill(messages, h("div", { class: "message result", role: "status" },
    h("span", {}, text),
    h("button", { type: "button", class: "link", onclick: () => fill(messages), "aria-label": "Dismiss message" }, "Dismiss")));
}

export function clearMessages() {
  fill(messages);
}

/** Runs an action, showing its failure; the page refreshes after it either way. */
export async function act(action) {
  try {
    return await action();
  } catch (error) {
    if (error.kind !== "unauthorized") showError(error);
    return undefined;
  } finally {
    refreshNow();
  }
}

const context = { showError, showResult, clearMessages, act, refreshNow: () => refreshNow() };

function renderSignIn() {
  stopPolling();
  current = null;
  const idInput = h("input", { id: "client-id", name: "client_id", autocomplete: "username", required: true, spellcheck: "false" });
  const secretInput = h("input", { id: "client-secret", name: "client_secret", type: "password", autocomplete: "current-password", required: true });
  const problem = h("p", { class: "message error", role: "alert", hidden: !signInNotice }, signInNotice);
  const button = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h("form", { class: "signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Orchestra console"),
    h("p", { class: "hint" }, "Sign in with the client id and secret of a consumer whose role has the 'operate orchestra' permission."),
    problem,
    h("label", { for: "client-id" }, "Client id"), idInput,
    h("label", { for: "client-secret" }, "Client secret"), secretInput,
    button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    try {
      await signIn(idInput.value, secretInput.value);
      signInNotice = "";
      secretInput.value = "";
      if (!location.hash || location.hash === "#/") location.hash = "#/definitions";
      renderShell();
    } catch (error) {
      fill(problem, error.message);
      problem.hidden = false;
      secretInput.focus();
    } finally {
      button.disabled = false;
    }
  });
  fill(root, h("main", { class: "signin-page" }, form));
  idInput.focus();
}

let main = null;
let nav = null;

function renderShell() {
  const who = currentSession();
  nav = h("nav", { "aria-label": "Console" },
    h("ul", {}, NAV.map(([key, label, href]) => h("li", {}, h("a", { href, dataset: { nav: key } }, label)))));
  main = h("main", { id: "main", tabindex: "-1" });
  const header = h("header", { class: "top" },
    h("a", { class: "brand", href: "#/definitions" }, "Orchestra"),
    h("div", { class: "who" },
      h("span", { class: "consumer", title: "Signed-in consumer" }, who.clientId),
      h("span", { class: "tenant", title: "Tenant" }, `tenant ${who.tenant}`),
      h("button", { type: "button", onclick: () => { signOut(); signInNotice = ""; renderSignIn(); } }, "Sign out")));
  fill(root, header, h("div", { class: "frame" }, nav, h("div", { class: "content" }, messages, main)));
  route();
}

function route() {
  if (!currentSession()) {
    renderSignIn();
    return;
  }
  const hash = location.hash || "#/definitions";
  const found = ROUTES.map((r) => ({ r, match: hash.match(r.pattern) })).find((x) => x.match);
  if (!found) {
    location.replace("#/definitions");
    return;
  }
  for (const link of nav.querySelectorAll("a")) {
    if (link.dataset.nav === found.r.nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (current && current.hash === hash) return;
  clearMessages();
  const args = found.match.slice(1).map((part) =>
    (part === undefined || found.r.query ? part : decodeURIComponent(part)));
  // A page that only changes its own query (filters) keeps its view.
  if (current && current.page === found.r.page && current.view.navigate && current.view.navigate(...args)) {
    current.hash = hash;
  } else {
    fill(main);
    const view = found.r.page.mount(main, context, ...args);
    current = { page: found.r.page, view, hash };
    main.focus({ preventScroll: true });
  }
  refreshNow();
  startPolling();
}

let pending = false;

/** Refreshes the open page; asked while a refresh runs, it runs once more right after, so a
 * change made meanwhile (a filter, an action) is never left showing stale data. */
async function refreshNow() {
  if (!current) return;
  if (refreshing) {
    pending = true;
    return;
  }
  refreshing = true;
  const view = current.view;
  try {
    await view.refresh();
  } catch (error) {
    if (error.kind !== "unauthorized" && current && current.view === view) showError(error);
  } finally {
    refreshing = false;
  }
  if (pending) {
    pending = false;
    refreshNow();
  }
}

function startPolling() {
  stopPolling();
  timer = setInterval(() => {
    if (document.hidden || document.querySelector("dialog[open]")) return;
    refreshNow();
  }, REFRESH_MS);
}

function stopPolling() {
  clearInterval(timer);
  timer = null;
}

onSignedOut((reason) => {
  signInNotice = reason;
  renderSignIn();
});
window.addEventListener("hashchange", () => {
  if (currentSession()) route();
});
renderSignIn();
