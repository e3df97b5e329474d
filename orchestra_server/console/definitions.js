// The definitions page: every definition with its versions, running instances and open
// incidents; the chosen one's diagram with live token counts per node.

import { ops } from "./api.js";
import { createDiagram } from "./diagram.js";
import { fill, h, syncRows, when } from "./dom.js";

export function mount(main, ctx, selectedId) {
  let selected = selectedId;
  let version = null; // null: the newest
  let diagram = null;
  let drawn = ""; // definition@version the diagram shows

  const tbody = h("tbody");
  const table = h("table", { class: "list" },
    h("caption", { class: "sr-only" }, "Definitions"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Definition"),
      h("th", { scope: "col" }, "Label"),
      h("th", { scope: "col" }, "Scope"),
      h("th", { scope: "col" }, "Versions"),
      h("th", { scope: "col", class: "num" }, "Running"),
      h("th", { scope: "col", class: "num" }, "Open incidents"))),
    tbody);
  const detail = h("section", { class: "detail", "aria-labelledby": "definition-title" });
  fill(main,
    h("h1", {}, "Definitions"),
    h("div", { class: "table-wrap" }, table),
    detail);

  function renderRows(list) {
    syncRows(tbody, list, (d) => d.definition_id, (d) => {
      const row = h("tr", {},
        h("td", {}, h("a", { href: `#/definitions/${encodeURIComponent(d.definition_id)}` }, d.definition_id)),
        h("td", {}), h("td", {}), h("td", {}), h("td", { class: "num" }), h("td", { class: "num" }));
      return row;
    }, (row, d) => {
      const cells = row.children;
      cells[1].textContent = d.label;
      cells[2].textContent = d.scope;
      cells[3].textContent = d.versions.map((v) => `v${v.version} (${v.running_instances} running)`).join(", ");
      cells[4].textContent = d.running_instances;
      cells[5].textContent = d.open_incidents;
      cells[5].classList.toggle("alert", Number(d.open_incidents) > 0);
      row.classList.toggle("selected", d.definition_id === selected);
      if (d.definition_id === selected) row.setAttribute("aria-current", "true");
      else row.removeAttribute("aria-current");
    });
  }

  let versionSelect = null;
  let diagramBox = null;
  let facts = null;

  function renderDetailFrame(summary) {
    versionSelect = h("select", { id: "definition-version" },
      summary.versions.map((v) => h("option", { value: String(v.version) }, `version ${v.version}`)));
    versionSelect.value = String(version || summary.latest_version);
    versionSelect.addEventListener("change", () => {
      version = Number(versionSelect.value);
      ctx.refreshNow();
    });
    diagramBox = h("div", { class: "diagram-box" });
    facts = h("p", { class: "facts" });
    fill(detail,
      h("div", { class: "detail-head" },
        h("h2", { id: "definition-title" }, summary.label || summary.definition_id),
        h("span", { class: "pick" }, h("label", { for: "definition-version" }, "Version"), versionSelect),
        h("a", { class: "button", href: `#/instances?definition_id=${encodeURIComponent(summary.definition_id)}` }, "Show its instances")),
      facts,
      legend(),
      diagramBox);
  }

  async function refresh() {
    const { definitions } = await ops.definitions();
    renderRows(definitions);
    if (!selected) {
      fill(detail, h("p", { class: "hint" }, "Choose a definition to see its diagram."));
      drawn = "";
      return;
    }
    const summary = definitions.find((d) => d.definition_id === selected);
    if (!summary) {
      fill(detail, h("p", { class: "message error", role: "alert" }, `No definition "${selected}" in this tenant.`));
      drawn = "";
      return;
    }
    const graph = await ops.definition(selected, version || undefined);
    const key = `${graph.definition_id}@${graph.version}`;
    if (key !== drawn) {
      if (!versionSelect || detail.dataset.definition !== selected) {
        renderDetailFrame(summary);
        detail.dataset.definition = selected;
      }
      diagram = createDiagram(graph);
      fill(diagramBox, diagram.element);
      drawn = key;
    }
    facts.textContent = `${graph.definition_id} version ${graph.version} of ${graph.latest_version}, ${graph.scope}` +
      (graph.deployed_at ? `, deployed ${when(graph.deployed_at)}` : "");
    const counts = {};
    for (const node of graph.nodes) counts[node.id] = node.tokens || {};
    diagram.setCounts(counts);
  }

  function navigate(id) {
    selected = id;
    version = null;
    drawn = "";
    versionSelect = null;
    delete detail.dataset.definition;
    return true;
  }

  return { refresh, navigate };
}

export function legend() {
  return h("ul", { class: "legend", "aria-label": "Legend" },
    h("li", {}, h("span", { class: "swatch parked" }), "parked (until a signal or a timer)"),
    h("li", {}, h("span", { class: "swatch waiting" }), "waiting at a join"),
    h("li", {}, h("span", { class: "swatch incident" }), "incident"),
    h("li", {}, h("span", { class: "swatch default-flow" }), "default flow (slashed)"));
}
