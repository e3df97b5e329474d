// The incidents page: the tenant's open incidents, oldest first, with their reason and age,
// the actions on each, and retrying every incident a filter matches.

import { ops } from "./api.js";
import { age, ask, fill, h, syncRows, when } from "./dom.js";

const PAGE_SIZE = 50;
const ACTIONS = [["retry", "Retry", "primary"], ["skip", "Skip", ""], ["cancel_branch", "Cancel branch", "danger"]];

export function mount(main, ctx) {
  let filters = {};
  let pages = [""];
  let nextToken = "";
  let asked = 0; // bumped by every change of filters or page: an older answer is dropped

  const definitionInput = h("input", { id: "i-definition", spellcheck: "false" });
  const nodeInput = h("input", { id: "i-node", spellcheck: "false" });
  const form = h("form", { class: "filters", "aria-label": "Filters" },
    h("div", { class: "field" }, h("label", { for: "i-definition" }, "Definition"), definitionInput),
    h("div", { class: "field" }, h("label", { for: "i-node" }, "Node"), nodeInput),
    h("div", { class: "field buttons" },
      h("button", { type: "submit", class: "primary" }, "Apply filters"),
      h("button", { type: "button", onclick: () => { definitionInput.value = ""; nodeInput.value = ""; apply(); } }, "Clear")));
  const retryMatching = h("button", { type: "button" }, "Retry all matching…");
  const tbody = h("tbody");
  const table = h("table", { class: "list" },
    h("caption", { class: "sr-only" }, "Open incidents"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Instance"),
      h("th", { scope: "col" }, "Definition"),
      h("th", { scope: "col" }, "Node"),
      h("th", { scope: "col" }, "Reason"),
      h("th", { scope: "col" }, "Age"),
      h("th", { scope: "col" }, "Actions"))),
    tbody);
  const empty = h("p", { class: "hint", hidden: true }, "No open incidents.");
  const previous = h("button", { type: "button" }, "Previous page");
  const next = h("button", { type: "button" }, "Next page");
  const pageNote = h("span", { class: "page-note" });

  fill(main,
    h("h1", {}, "Incidents"),
    form,
    h("div", { class: "toolbar", role: "toolbar", "aria-label": "Batch actions" }, h("span", { class: "spacer" }), retryMatching),
    h("div", { class: "table-wrap" }, table),
    empty,
    h("div", { class: "pager" }, previous, pageNote, next));

  function apply() {
    filters = { definition_id: definitionInput.value.trim(), node_id: nodeInput.value.trim() };
    pages = [""];
    asked += 1;
    ctx.refreshNow();
  }
  form.addEventListener("submit", (event) => { event.preventDefault(); apply(); });

  retryMatching.addEventListener("click", async () => {
    await ctx.act(async () => {
      const body = Object.fromEntries(Object.entries(filters).filter(([, v]) => v));
      const dry = await ops.retryMatching({ ...body, dry_run: true });
      const answer = await ask("Retry all matching", `${dry.matched} incident${dry.matched === "1" ? "" : "s"} match. Retry them?`,
        [["Not now", null], [`Retry ${dry.matched}`, "yes", "primary"]]);
      if (answer !== "yes") return;
      const outcome = await ops.retryMatching(body);
      ctx.showResult(`Matched ${outcome.matched}: retried ${outcome.done}, skipped ${outcome.skipped}, failed ${outcome.failed}.` +
        (outcome.errors.length ? ` ${outcome.errors.join("; ")}` : ""));
    });
  });

  function renderRows(list) {
    syncRows(tbody, list, (i) => i.token_id, (incident) => h("tr", { class: "incident" },
      h("td", { class: "mono" }, h("a", { href: `#/instances/${encodeURIComponent(incident.instance_id)}` }, incident.instance_id)),
      h("td", { class: "nowrap" }, `${incident.definition_id} v${incident.definition_version}`),
      h("td", {}, incident.node_id),
      h("td", {}, h("strong", {}, incident.kind), ": ", h("span", { class: "reason" }, incident.reason)),
      h("td", {}),
      h("td", { class: "actions" }, ACTIONS.map(([action, label, kind]) => h("button", {
        type: "button",
        class: kind,
        "aria-label": `${label} the incident of instance ${incident.instance_id} on ${incident.node_id}`,
        onclick: () => ctx.act(async () => {
          const outcome = await ops.resolve(incident.token_id, action);
          ctx.showResult(`${label} done on ${incident.node_id}; the instance is ${outcome.instance_status}.`);
        }),
      }, label)))),
    (row, incident) => {
      const cell = row.children[4];
      cell.textContent = age(incident.since);
      cell.title = when(incident.since);
    });
    empty.hidden = list.length > 0;
  }

  previous.addEventListener("click", () => { if (pages.length > 1) { pages.pop(); asked += 1; ctx.refreshNow(); } });
  next.addEventListener("click", () => { if (nextToken) { pages.push(nextToken); asked += 1; ctx.refreshNow(); } });

  async function refresh() {
    const question = asked;
    const answer = await ops.incidents({ ...filters, page_size: PAGE_SIZE, page_token: pages[pages.length - 1] });
    if (question !== asked) return;
    nextToken = answer.next_page_token;
    renderRows(answer.incidents);
    previous.disabled = pages.length <= 1;
    next.disabled = !nextToken;
    pageNote.textContent = `Page ${pages.length}`;
  }

  return { refresh };
}
