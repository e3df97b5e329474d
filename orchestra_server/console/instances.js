// The instances page: the SearchInstances filters, paged results, and batch actions on the
// selected instances or on everything the filter matches.

import { ops } from "./api.js";
import { ask, fill, h, syncRows, when } from "./dom.js";

const PAGE_SIZE = 25;
const FILTERS = ["definition_id", "version", "status", "has_incident", "node_id", "started_after", "started_before", "variable"];

function parseQuery(text) {
  const params = new URLSearchParams(text || "");
  const filters = {};
  for (const name of FILTERS) {
    const values = params.getAll(name).filter((v) => v !== "");
    if (values.length) filters[name] = name === "variable" ? values : values[0];
  }
  return filters;
}

function toQuery(filters) {
  const params = new URLSearchParams();
  for (const name of FILTERS) {
    const value = filters[name];
    if (value === undefined || value === "") continue;
    for (const item of Array.isArray(value) ? value : [value]) params.append(name, item);
  }
  return params.toString();
}

/** `<input type=datetime-local>` value to RFC 3339 UTC, and back. */
function toInstant(local) {
  return local ? new Date(local).toISOString() : "";
}

function toLocal(instant) {
  if (!instant) return "";
  const moment = new Date(instant);
  if (Number.isNaN(moment.getTime())) return "";
  const shifted = new Date(moment.getTime() - moment.getTimezoneOffset() * 60000);
  return shifted.toISOString().slice(0, 19);
}

function field(id, label, control, hint) {
  return h("div", { class: hint ? "field wide" : "field" }, h("label", { for: id }, label), control, hint ? h("small", { id: `${id}-hint` }, hint) : null);
}

export function mount(main, ctx, queryText) {
  let filters = parseQuery(queryText);
  let pages = [""]; // page tokens of the pages seen so far; the last is the current one
  let nextToken = "";
  let asked = 0; // bumped by every change of filters or page: an older answer is dropped
  const selected = new Set();
  let shown = [];

  const definitionSelect = h("select", { id: "f-definition", name: "definition_id" }, h("option", { value: "" }, "any"));
  const versionInput = h("input", { id: "f-version", name: "version", type: "number", min: "1", inputmode: "numeric" });
  const statusSelect = h("select", { id: "f-status", name: "status" },
    ["", "running", "completed", "cancelled", "failed"].map((v) => h("option", { value: v }, v || "any")));
  const incidentSelect = h("select", { id: "f-incident", name: "has_incident" },
    h("option", { value: "" }, "either"), h("option", { value: "true" }, "with incidents"), h("option", { value: "false" }, "without"));
  const nodeInput = h("input", { id: "f-node", name: "node_id", spellcheck: "false" });
  const afterInput = h("input", { id: "f-after", name: "started_after", type: "datetime-local", step: "1" });
  const beforeInput = h("input", { id: "f-before", name: "started_before", type: "datetime-local", step: "1" });
  const variableInput = h("textarea", { id: "f-variable", name: "variable", rows: "2", spellcheck: "false", "aria-describedby": "f-variable-hint" });
  const filterProblem = h("p", { class: "message error", role: "alert", hidden: true });

  const form = h("form", { class: "filters grid", "aria-label": "Filters" },
    field("f-definition", "Definition", definitionSelect),
    field("f-version", "Version", versionInput),
    field("f-status", "Status", statusSelect),
    field("f-incident", "Incidents", incidentSelect),
    field("f-node", "Live token on node", nodeInput),
    field("f-after", "Started after", afterInput),
    field("f-before", "Started before", beforeInput),
    field("f-variable", "Variables equal", variableInput, 'One per line: name=JSON value, e.g. amount=1500 or owner="ann"'),
    h("div", { class: "field buttons" },
      h("button", { type: "submit", class: "primary" }, "Apply filters"),
      h("button", { type: "button", onclick: () => { location.hash = "#/instances"; } }, "Clear")),
    filterProblem);

  function readForm() {
    const variables = variableInput.value.split("\n").map((line) => line.trim()).filter(Boolean);
    for (const line of variables) {
      const at = line.indexOf("=");
      let ok = at > 0;
      if (ok) {
        try { JSON.parse(line.slice(at + 1)); } catch { ok = false; }
      }
      if (!ok) throw new Error(`"${line}" is not name=<JSON value> (text needs quotes: owner="ann").`);
    }
    return {
      definition_id: definitionSelect.value,
      version: versionInput.value,
      status: statusSelect.value,
      has_incident: incidentSelect.value,
      node_id: nodeInput.value.trim(),
      started_after: toInstant(afterInput.value),
      started_before: toInstant(beforeInput.value),
      variable: variables,
    };
  }

  function writeForm() {
    definitionSelect.value = filters.definition_id || "";
    if (filters.definition_id && definitionSelect.value !== filters.definition_id) {
      definitionSelect.append(h("option", { value: filters.definition_id }, filters.definition_id));
      definitionSelect.value = filters.definition_id;
    }
    versionInput.value = filters.version || "";
    statusSelect.value = filters.status || "";
    incidentSelect.value = filters.has_incident || "";
    nodeInput.value = filters.node_id || "";
    afterInput.value = toLocal(filters.started_after);
    beforeInput.value = toLocal(filters.started_before);
    variableInput.value = (filters.variable || []).join("\n");
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    try {
      const wanted = readForm();
      filterProblem.hidden = true;
      variableInput.removeAttribute("aria-invalid");
      location.hash = `#/instances${toQuery(wanted) ? `?${toQuery(wanted)}` : ""}`;
    } catch (error) {
      fill(filterProblem, error.message);
      filterProblem.hidden = false;
      variableInput.setAttribute("aria-invalid", "true");
      variableInput.focus();
    }
  });

  const selectAll = h("input", { type: "checkbox", id: "select-page", "aria-label": "Select every instance on this page" });
  selectAll.addEventListener("change", () => {
    for (const item of shown) {
      if (selectAll.checked) selected.add(item.id);
      else selected.delete(item.id);
    }
    renderRows();
  });
  const tbody = h("tbody");
  const table = h("table", { class: "list" },
    h("caption", { class: "sr-only" }, "Instances"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col", class: "check" }, selectAll),
      h("th", { scope: "col" }, "Instance"),
      h("th", { scope: "col" }, "Definition"),
      h("th", { scope: "col" }, "Status"),
      h("th", { scope: "col" }, "Started"),
      h("th", { scope: "col" }, "Updated"),
      h("th", { scope: "col", class: "num" }, "Incidents"))),
    tbody);
  const empty = h("p", { class: "hint", hidden: true }, "No instance matches these filters.");
  const selectionNote = h("span", { class: "selection", "aria-live": "polite" });
  const cancelSelected = h("button", { type: "button", class: "danger" }, "Cancel selected");
  const retrySelected = h("button", { type: "button" }, "Retry incidents of selected");
  const clearSelection = h("button", { type: "button", class: "link" }, "Clear selection");
  const cancelMatching = h("button", { type: "button", class: "danger" }, "Cancel all matching…");
  const previous = h("button", { type: "button" }, "Previous page");
  const next = h("button", { type: "button" }, "Next page");
  const pageNote = h("span", { class: "page-note" });

  fill(main,
    h("h1", {}, "Instances"),
    form,
    h("div", { class: "toolbar", role: "toolbar", "aria-label": "Batch actions" },
      selectionNote, cancelSelected, retrySelected, clearSelection, h("span", { class: "spacer" }), cancelMatching),
    h("div", { class: "table-wrap" }, table),
    empty,
    h("div", { class: "pager" }, previous, pageNote, next));

  function renderRows() {
    syncRows(tbody, shown, (i) => i.id, (item) => {
      const box = h("input", { type: "checkbox", "aria-label": `Select instance ${item.id}` });
      box.addEventListener("change", () => {
        if (box.checked) selected.add(item.id);
        else selected.delete(item.id);
        renderSelection();
      });
      return h("tr", {},
        h("td", { class: "check" }, box),
        h("td", { class: "mono" }, h("a", { href: `#/instances/${encodeURIComponent(item.id)}` }, item.id)),
        h("td", { class: "nowrap" }), h("td", {}), h("td", { class: "nowrap" }), h("td", { class: "nowrap" }), h("td", { class: "num" }));
    }, (row, item) => {
      const cells = row.children;
      cells[0].firstChild.checked = selected.has(item.id);
      row.classList.toggle("selected", selected.has(item.id));
      cells[2].textContent = `${item.definition_id} v${item.definition_version}`;
      fill(cells[3], h("span", { class: `status ${item.status}` }, item.status));
      cells[4].textContent = when(item.started_at, true);
      cells[4].title = when(item.started_at);
      cells[5].textContent = when(item.updated_at, true);
      cells[5].title = when(item.updated_at);
      cells[6].textContent = item.open_incidents;
      cells[6].classList.toggle("alert", Number(item.open_incidents) > 0);
    });
    empty.hidden = shown.length > 0;
    renderSelection();
  }

  function renderSelection() {
    const count = selected.size;
    selectionNote.textContent = count ? `${count} selected` : "None selected";
    cancelSelected.disabled = count === 0;
    retrySelected.disabled = count === 0;
    clearSelection.disabled = count === 0;
    selectAll.checked = shown.length > 0 && shown.every((i) => selected.has(i.id));
    for (const row of tbody.children) {
      const isSelected = selected.has(row.dataset.key);
      row.classList.toggle("selected", isSelected);
      row.firstChild.firstChild.checked = isSelected;
    }
  }

  clearSelection.addEventListener("click", () => { selected.clear(); renderRows(); });

  cancelSelected.addEventListener("click", async () => {
    const ids = [...selected];
    const answer = await ask("Cancel instances", `Cancel ${ids.length} selected instance${ids.length === 1 ? "" : "s"}? Their tokens are removed and their timers never fire.`,
      [["Keep them", null], [`Cancel ${ids.length}`, "yes", "danger"]]);
    if (answer !== "yes") return;
    await ctx.act(async () => {
      let done = 0; let skipped = 0; const failed = [];
      for (const id of ids) {
        try {
          await ops.cancel(id, "cancelled from the console");
          done += 1;
          selected.delete(id);
        } catch (error) {
          if (error.kind === "conflict") { skipped += 1; selected.delete(id); } else if (error.kind === "unauthorized") throw error;
          else failed.push(`${id}: ${error.message}`);
        }
      }
      ctx.showResult(`Cancelled ${done} of ${ids.length}; ${skipped} not running (skipped); ${failed.length} failed.${failed.length ? ` ${failed.join("; ")}` : ""}`);
    });
  });

  retrySelected.addEventListener("click", async () => {
    const ids = [...selected];
    const answer = await ask("Retry incidents", `Retry every incident of ${ids.length} selected instance${ids.length === 1 ? "" : "s"}?`,
      [["Not now", null], [`Retry ${ids.length}`, "yes", "primary"]]);
    if (answer !== "yes") return;
    await ctx.act(async () => {
      let retried = 0; let stillFailing = 0; const failed = [];
      for (const id of ids) {
        try {
          const { instance } = await ops.instance(id);
          for (const token of instance.tokens.filter((t) => t.status === "incident")) {
            await ops.resolve(token.id, "retry");
            retried += 1;
          }
          const after = await ops.instance(id);
          stillFailing += after.instance.tokens.filter((t) => t.status === "incident").length;
        } catch (error) {
          if (error.kind === "unauthorized") throw error;
          failed.push(`${id}: ${error.message}`);
        }
      }
      ctx.showResult(`Retried ${retried} incident${retried === 1 ? "" : "s"}; ${stillFailing} still in incident; ${failed.length} failed.${failed.length ? ` ${failed.join("; ")}` : ""}`);
    });
  });

  function batchFilters() {
    const body = { ...filters };
    if (body.version) body.version = Number(body.version);
    if (body.has_incident) body.has_incident = body.has_incident === "true";
    return body;
  }

  cancelMatching.addEventListener("click", async () => {
    await ctx.act(async () => {
      const dry = await ops.cancelMatching({ ...batchFilters(), dry_run: true });
      const answer = await ask("Cancel all matching",
        `${dry.matched} instance${dry.matched === "1" ? "" : "s"} match the filter${toQuery(filters) ? "" : " (no filter: every instance)"}. Cancel the running ones?`,
        [["Keep them", null], [`Cancel ${dry.matched}`, "yes", "danger"]]);
      if (answer !== "yes") return;
      const outcome = await ops.cancelMatching({ ...batchFilters(), reason: "cancelled from the console" });
      ctx.showResult(`Matched ${outcome.matched}: cancelled ${outcome.done}, skipped ${outcome.skipped}, failed ${outcome.failed}.` +
        (outcome.errors.length ? ` ${outcome.errors.join("; ")}` : ""));
    });
  });

  previous.addEventListener("click", () => { if (pages.length > 1) { pages.pop(); asked += 1; ctx.refreshNow(); } });
  next.addEventListener("click", () => { if (nextToken) { pages.push(nextToken); asked += 1; ctx.refreshNow(); } });

  let definitionsLoaded = false;
  async function loadDefinitions() {
    const { definitions } = await ops.definitions();
    // Only the menu's choices are added: whatever the reader typed or chose in the form while
    // they loaded stays as it is.
    const chosen = definitionSelect.value;
    for (const d of definitions) {
      if (![...definitionSelect.options].some((o) => o.value === d.definition_id)) {
        definitionSelect.append(h("option", { value: d.definition_id }, d.definition_id));
      }
    }
    definitionSelect.value = chosen;
    definitionsLoaded = true;
  }

  async function refresh() {
    if (!definitionsLoaded) await loadDefinitions();
    const question = asked;
    const answer = await ops.instances({ ...filters, page_size: PAGE_SIZE, page_token: pages[pages.length - 1] });
    if (question !== asked) return;
    shown = answer.instances;
    nextToken = answer.next_page_token;
    renderRows();
    previous.disabled = pages.length <= 1;
    next.disabled = !nextToken;
    pageNote.textContent = `Page ${pages.length}`;
  }

  function navigate(_id, query) {
    asked += 1;
    filters = parseQuery(query);
    pages = [""];
    selected.clear();
    writeForm();
    return true;
  }

  // The route passes the query as the only capture.
  writeForm();
  return { refresh, navigate: (query) => navigate(undefined, query) };
}
