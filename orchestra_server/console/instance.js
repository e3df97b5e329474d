// One instance: its diagram with its tokens and the path taken, its tokens with their actions
// (signal, retry, skip, cancel branch), its variables with JSON editing, its history, and
// cancelling it.

import { consumer, ops } from "./api.js";
import { legend } from "./definitions.js";
import { createDiagram } from "./diagram.js";
import { ask, fill, h, json, syncRows, when } from "./dom.js";

const RESOLVE_LABELS = { retry: "Retry", skip: "Skip", cancel_branch: "Cancel branch" };

/** Parses a JSON object of variables typed by the reader; "" is none. Throws with a message. */
function parseVariables(text) {
  if (!text.trim()) return undefined;
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new Error(`The variables are not valid JSON: ${error.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new Error('The variables must be a JSON object, e.g. {"approved": true}.');
  }
  return value;
}

export function mount(main, ctx, instanceId) {
  let graphKey = "";
  let diagram = null;
  let instance = null;
  let historyCount = -1;
  let historySeen = null; // the instance's updated_at when the history was last read
  let refreshes = 0;
  let visited = [];
  const editing = new Set(); // variable names whose editor is open
  // Bumped by every change made from this page: a refresh that began before it would show the
  // instance as it was, so it is dropped (the refresh queued after the change shows it).
  let changes = 0;
  let gone = false;

  const title = h("h1", {}, "Instance ", h("span", { class: "mono" }, instanceId));
  const facts = h("dl", { class: "facts-grid" });
  const cancelButton = h("button", { type: "button", class: "danger" }, "Cancel instance");
  const diagramBox = h("div", { class: "diagram-box" });
  const nodeNote = h("div", { class: "node-note", "aria-live": "polite" });
  const tokenBody = h("tbody");
  const tokenTable = h("table", { class: "list tokens" },
    h("caption", { class: "sr-only" }, "Live tokens"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Node"), h("th", { scope: "col" }, "Status"), h("th", { scope: "col" }, "Since"),
      h("th", { scope: "col" }, "Details"), h("th", { scope: "col" }, "Actions"))),
    tokenBody);
  const noTokens = h("p", { class: "hint", hidden: true }, "No live tokens.");
  const variableBody = h("tbody");
  const variableTable = h("table", { class: "list variables" },
    h("caption", { class: "sr-only" }, "Variables"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Name"), h("th", { scope: "col" }, "Value (JSON)"), h("th", { scope: "col" }, "Actions"))),
    variableBody);
  const newName = h("input", { id: "new-variable-name", spellcheck: "false" });
  const newValue = h("textarea", { id: "new-variable-value", rows: "1", spellcheck: "false" });
  const newProblem = h("p", { class: "message error", role: "alert", hidden: true });
  const addForm = h("form", { class: "add-variable", "aria-label": "Set a variable" },
    h("div", { class: "field" }, h("label", { for: "new-variable-name" }, "Variable name"), newName),
    h("div", { class: "field grow" }, h("label", { for: "new-variable-value" }, "Value (JSON)"), newValue),
    h("div", { class: "field buttons" }, h("button", { type: "submit" }, "Set variable")),
    newProblem);
  const historyList = h("ol", { class: "timeline" });

  fill(main,
    h("p", { class: "crumbs" }, h("a", { href: "#/instances" }, "← Instances")),
    h("div", { class: "detail-head" }, title, cancelButton),
    facts,
    h("section", { "aria-labelledby": "diagram-title" },
      h("h2", { id: "diagram-title" }, "Diagram"), legend(), diagramBox, nodeNote),
    h("section", { "aria-labelledby": "tokens-title" },
      h("h2", { id: "tokens-title" }, "Tokens"), h("div", { class: "table-wrap" }, tokenTable), noTokens),
    h("section", { "aria-labelledby": "variables-title" },
      h("h2", { id: "variables-title" }, "Variables"), h("div", { class: "table-wrap" }, variableTable), addForm),
    h("section", { "aria-labelledby": "history-title" },
      h("h2", { id: "history-title" }, "History"), historyList));

  cancelButton.addEventListener("click", async () => {
    const answer = await ask("Cancel instance", "Cancel this instance? Every live token is removed and its timers never fire.",
      [["Keep it", null], ["Cancel instance", "yes", "danger"]]);
    if (answer !== "yes") return;
    await ctx.act(async () => {
      changes += 1;
      const outcome = await ops.cancel(instanceId, "cancelled from the console");
      ctx.showResult(`The instance is ${outcome.status}.`);
    });
  });

  function focusToken(nodeId) {
    const tokens = instance ? instance.tokens.filter((t) => t.node_id === nodeId) : [];
    if (!tokens.length) {
      fill(nodeNote, h("p", { class: "hint" }, `No live token on ${nodeId}.`));
      return;
    }
    fill(nodeNote, tokens.map((t) => h("p", { class: `token-note ${t.status}` },
      h("strong", {}, `${nodeId}: ${t.status}`),
      t.incident_reason ? [" — ", h("span", { class: "reason" }, `${t.incident_kind}: ${t.incident_reason}`)] : null)));
    const row = [...tokenBody.children].find((r) => tokens.some((t) => t.id === r.dataset.key));
    if (row) {
      row.classList.add("flash");
      setTimeout(() => row.classList.remove("flash"), 1500);
      const action = row.querySelector("button");
      if (action) action.focus({ preventScroll: true });
      row.scrollIntoView({ block: "nearest" });
    }
  }

  function tokenActions(token) {
    const box = h("div", { class: "token-actions" });
    const variables = h("textarea", {
      rows: "1", spellcheck: "false", class: "vars",
      "aria-label": `Variables to set first, as a JSON object (optional), for the token on ${token.node_id}`,
      placeholder: '{"name": value} (optional)',
    });
    const problem = h("p", { class: "message error", role: "alert", hidden: true });
    const run = async (label, action) => {
      let values;
      try {
        values = parseVariables(variables.value);
        problem.hidden = true;
      } catch (error) {
        fill(problem, error.message);
        problem.hidden = false;
        variables.focus();
        return;
      }
      await ctx.act(async () => {
        changes += 1;
        const outcome = await action(values);
        variables.value = "";
        ctx.showResult(outcome);
      });
    };
    if (token.status === "incident") {
      for (const name of Object.keys(RESOLVE_LABELS)) {
        box.append(h("button", {
          type: "button",
          class: name === "retry" ? "primary" : name === "cancel_branch" ? "danger" : "",
          "aria-label": `${RESOLVE_LABELS[name]} the incident on ${token.node_id}`,
          onclick: () => run(name, async (values) => {
            const outcome = await ops.resolve(token.id, name, values);
            return `${RESOLVE_LABELS[name]} done on ${token.node_id}; the instance is ${outcome.instance_status}.`;
          }),
        }, RESOLVE_LABELS[name]));
      }
    } else if (token.status === "parked") {
      box.append(h("button", {
        type: "button",
        class: "primary",
        "aria-label": `Signal the token on ${token.node_id}`,
        onclick: () => run("signal", async (values) => {
          await consumer.signal(token.id, values);
          return `Signalled the token on ${token.node_id}.`;
        }),
      }, "Signal"));
    } else {
      return h("span", { class: "hint" }, token.due_at ? `due ${when(token.due_at)}` : "—");
    }
    return h("div", {}, variables, box, problem);
  }

  function renderTokens() {
    syncRows(tokenBody, instance.tokens, (t) => t.id, (token) => h("tr", {},
      h("td", {}, token.node_id), h("td", {}), h("td", {}), h("td", {}), h("td", { class: "actions" })),
    (row, token) => {
      const cells = row.children;
      fill(cells[1], h("span", { class: `status ${token.status}` }, token.status));
      cells[2].textContent = when(token.since);
      const details = token.status === "incident"
        ? [h("strong", {}, token.incident_kind), ": ", h("span", { class: "reason" }, token.incident_reason)]
        : token.due_at ? `due ${when(token.due_at)}` : "";
      fill(cells[3], details);
      // Rebuild the actions only when the status changes, so typed variables survive a refresh.
      if (row.dataset.status !== token.status) {
        fill(cells[4], instance.status === "running" ? tokenActions(token) : "");
        row.dataset.status = token.status;
      }
      row.classList.toggle("incident", token.status === "incident");
    });
    noTokens.hidden = instance.tokens.length > 0;
  }

  function variableEditor(name, row) {
    const editor = h("textarea", { rows: "2", spellcheck: "false", "aria-label": `New value of ${name} (JSON)` });
    editor.value = JSON.stringify(instance.variables[name], null, 2);
    const problem = h("p", { class: "message error", role: "alert", hidden: true });
    const save = h("button", { type: "button", class: "primary" }, "Save");
    const cancel = h("button", { type: "button" }, "Cancel");
    const close = () => {
      editing.delete(name);
      row.dataset.editing = "";
      updateVariableRow(row, name, true);
      row.querySelector("button").focus();
    };
    cancel.addEventListener("click", close);
    save.addEventListener("click", async () => {
      let value;
      try {
        value = JSON.parse(editor.value);
      } catch (error) {
        fill(problem, `Not valid JSON: ${error.message}`);
        problem.hidden = false;
        editor.setAttribute("aria-invalid", "true");
        editor.focus();
        return;
      }
      try {
        await consumer.setVariable(instanceId, name, value);
        changes += 1;
        instance.variables[name] = value;
        ctx.showResult(`Set ${name}.`);
        close();
        ctx.refreshNow();
      } catch (error) {
        if (error.kind === "unauthorized") return;
        fill(problem, error.message);
        problem.hidden = false;
        editor.setAttribute("aria-invalid", "true");
      }
    });
    editor.addEventListener("keydown", (event) => { if (event.key === "Escape") close(); });
    return h("div", { class: "editor" }, editor, h("div", { class: "buttons" }, save, cancel), problem);
  }

  function updateVariableRow(row, name, force = false) {
    if (editing.has(name) && !force) return;
    const [, valueCell, actionCell] = row.children;
    const text = json(instance.variables[name]);
    if (force || valueCell.dataset.text !== text || row.dataset.editing) {
      valueCell.dataset.text = text;
      fill(valueCell, h("code", { class: "value" }, text));
      const edit = h("button", { type: "button", "aria-label": `Edit ${name}` }, "Edit");
      edit.disabled = instance.status !== "running";
      edit.addEventListener("click", () => {
        editing.add(name);
        row.dataset.editing = "yes";
        const editor = variableEditor(name, row);
        fill(valueCell, editor);
        fill(actionCell);
        editor.querySelector("textarea").focus();
      });
      fill(actionCell, edit);
    }
  }

  function renderVariables() {
    const names = Object.keys(instance.variables).sort();
    syncRows(variableBody, names, (n) => n, (name) => h("tr", {},
      h("th", { scope: "row", class: "mono" }, name), h("td", {}), h("td", { class: "actions" })),
    (row, name) => updateVariableRow(row, name));
    addForm.hidden = instance.status !== "running";
  }

  addForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = newName.value.trim();
    let value;
    try {
      if (!name) throw new Error("Give the variable a name.");
      try { value = JSON.parse(newValue.value); } catch (error) { throw new Error(`Not valid JSON: ${error.message}`); }
    } catch (error) {
      fill(newProblem, error.message);
      newProblem.hidden = false;
      return;
    }
    try {
      await consumer.setVariable(instanceId, name, value);
      changes += 1;
      newProblem.hidden = true;
      newName.value = "";
      newValue.value = "";
      ctx.showResult(`Set ${name}.`);
      ctx.refreshNow();
    } catch (error) {
      if (error.kind === "unauthorized") return;
      fill(newProblem, error.message);
      newProblem.hidden = false;
    }
  });

  function renderFacts() {
    const rows = [
      ["Definition", h("a", { href: `#/definitions/${encodeURIComponent(instance.definition_id)}` }, `${instance.definition_id} v${instance.definition_version}`)],
      ["Status", h("span", { class: `status ${instance.status}` }, instance.status)],
      ["Started", when(instance.started_at)],
      ["Updated", when(instance.updated_at)],
    ];
    if (instance.ended_at) rows.push(["Ended", when(instance.ended_at)]);
    fill(facts, rows.map(([label, value]) => [h("dt", {}, label), h("dd", {}, value)]));
    cancelButton.disabled = instance.status !== "running";
  }

  async function loadHistory() {
    const entries = [];
    let token = "";
    do {
      const page = await ops.history(instanceId, token || undefined);
      entries.push(...page.entries);
      token = page.next_page_token;
    } while (token);
    return entries;
  }

  function renderHistory(entries) {
    visited = [...new Set(entries.flatMap((e) => e.nodes))];
    fill(historyList, entries.map((entry) => h("li", { class: entry.incidents.length ? "incident" : "" },
      h("time", { datetime: entry.at || "" }, when(entry.at)),
      h("strong", { class: "action" }, entry.action),
      entry.nodes.length ? h("span", {}, ` at ${entry.nodes.join(" → ")}`) : null,
      entry.variables.length ? h("span", {}, `; variables ${entry.variables.join(", ")}`) : null,
      entry.status ? h("span", {}, `; ${entry.status}`) : null,
      entry.reason ? h("span", { class: "reason" }, `; ${entry.reason}`) : null,
      entry.incidents.length ? h("span", { class: "reason" }, `; incident: ${entry.incidents.join("; ")}`) : null,
      h("span", { class: "actor" }, ` by ${entry.actor}`))));
  }

  async function refresh() {
    if (gone) return;
    const asked = changes;
    let answer;
    try {
      answer = await ops.instance(instanceId);
    } catch (error) {
      if (error.kind === "not_found") {
        gone = true; // nothing more to ask about
        fill(main, h("h1", {}, "Instance not found"),
          h("p", { class: "hint" }, `There is no instance ${instanceId} in this tenant.`),
          h("p", {}, h("a", { href: "#/instances" }, "Back to the instances")));
      }
      throw error;
    }
    if (asked !== changes) return;
    instance = answer.instance;
    renderFacts();
    const key = `${instance.definition_id}@${instance.definition_version}`;
    if (key !== graphKey) {
      const graph = await ops.definition(instance.definition_id, instance.definition_version);
      diagram = createDiagram(graph, { onNode: focusToken, title: `Diagram of this instance of ${graph.label || graph.definition_id}` });
      fill(diagramBox, diagram.element);
      graphKey = key;
    }
    // The history only grows when the instance changes (and, against two changes within one
    // tick of the clock, it is read again every few refreshes anyway).
    refreshes += 1;
    if (instance.updated_at !== historySeen || refreshes % 5 === 0) {
      const entries = await loadHistory();
      if (entries.length !== historyCount) {
        renderHistory(entries);
        historyCount = entries.length;
      }
      historySeen = instance.updated_at;
    }
    if (asked !== changes) return;
    const counts = {};
    for (const token of instance.tokens) {
      counts[token.node_id] = counts[token.node_id] || { parked: 0, waiting: 0, incident: 0 };
      counts[token.node_id][token.status] += 1;
    }
    diagram.setCounts(counts);
    diagram.setPath(visited);
    renderTokens();
    renderVariables();
  }

  return { refresh };
}
