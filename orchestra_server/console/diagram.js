// A process definition drawn as SVG: laid out by dagre, shapes by node type, conditions on the
// flows, default flows marked, and per-node badges of live tokens that can change in place.

import dagre from "./vendor/dagre.js";
import { s } from "./dom.js";

const TASK = { width: 150, height: 54 };
const ROUND = 38;
const DIAMOND = 48;
const LABEL_HEIGHT = 18;
const CHAR_WIDTH = 7;
const STATUSES = ["parked", "waiting", "incident"];
// The gateway kinds of a definition, by (join, split): exclusive, parallel, inclusive.
function gatewayMark(node) {
  if (node.join === "inclusive") return "○";
  if (node.split === "first") return "×";
  if (node.join === "wait_all" || node.split === "all") return "+";
  return "";
}

function shapeOf(node) {
  if (node.type === "start" || node.type === "end") return "round";
  if (node.type === "timer") return "timer";
  if (node.type === "gateway") return "diamond";
  return "task";
}

function labelOf(node) {
  return node.label || node.id;
}

function textWidth(text) {
  return Math.min(220, text.length * CHAR_WIDTH + 8);
}

function truncate(text, width) {
  const fits = Math.floor((width - 12) / CHAR_WIDTH);
  return text.length > fits ? `${text.slice(0, Math.max(1, fits - 1))}…` : text;
}

function size(node) {
  const shape = shapeOf(node);
  if (shape === "task") return { ...TASK };
  // The box is the shape alone, so flows meet its outline; the label hangs below it.
  const side = shape === "diamond" ? DIAMOND : ROUND;
  return { width: side, height: side };
}

// Nodes a token passes through without resting: the history names where tokens came to rest,
// and the path between those runs through these.
const TRANSIENT = new Set(["start", "gateway", "passthrough"]);

function flowLabel(flow) {
  if (flow.timeout) return "timeout";
  return flow.condition || "";
}

function describe(node) {
  const parts = [`${labelOf(node)} (${node.id}), ${node.type}`];
  if (node.split) parts.push(`split ${node.split}`);
  if (node.join) parts.push(`join ${node.join}`);
  if (node.timer_after) parts.push(`after ${node.timer_after}`);
  if (node.timer_until) parts.push(`until ${node.timer_until}`);
  if (node.timeout_after) parts.push(`timeout after ${node.timeout_after} to ${node.timeout_to}`);
  return parts.join("; ");
}

function drawShape(node, box) {
  const shape = shapeOf(node);
  const cx = box.width / 2;
  if (shape === "task") {
    return [
      s("rect", { class: "shape", x: 0, y: 0, width: box.width, height: box.height, rx: 8 }),
      s("text", { class: "label", x: cx, y: box.height / 2 + 4, "text-anchor": "middle" },
        truncate(labelOf(node), box.width)),
    ];
  }
  const side = shape === "diamond" ? DIAMOND : ROUND;
  const cy = side / 2;
  const parts = [];
  if (shape === "diamond") {
    const r = side / 2;
    parts.push(s("polygon", { class: "shape", points: `${cx},0 ${cx + r},${r} ${cx},${side} ${cx - r},${r}` }));
    const mark = gatewayMark(node);
    if (mark) parts.push(s("text", { class: "mark", x: cx, y: cy + 6, "text-anchor": "middle" }, mark));
  } else {
    parts.push(s("circle", { class: `shape ${node.type}`, cx, cy, r: side / 2 - 1 }));
    if (shape === "timer") {
      parts.push(s("circle", { class: "dial", cx, cy, r: side / 2 - 6 }));
      parts.push(s("path", { class: "hands", d: `M${cx},${cy - 9} L${cx},${cy} L${cx + 7},${cy + 4}` }));
    }
  }
  parts.push(s("text", { class: "label", x: cx, y: side + 14, "text-anchor": "middle" },
    truncate(labelOf(node), 130)));
  return parts;
}

function pathOf(points) {
  return points.map((p, i) => `${i ? "L" : "M"}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(" ");
}

/** The slash BPMN puts across a default flow, near its source. */
function defaultMark(points) {
  const [a, b] = points;
  const length = Math.hypot(b.x - a.x, b.y - a.y) || 1;
  const ux = (b.x - a.x) / length;
  const uy = (b.y - a.y) / length;
  const mx = a.x + ux * 14;
  const my = a.y + uy * 14;
  const px = -uy * 6 + ux * 3;
  const py = ux * 6 + uy * 3;
  return s("path", { class: "default-mark", d: `M${mx - px},${my - py} L${mx + px},${my + py}` });
}

/**
 * Lays out and draws `graph` (a GetDefinition answer). Returns the SVG element and setters:
 * setCounts({nodeId: {parked, waiting, incident}}) and setPath(visitedNodeIds).
 * `onNode(nodeId)`, when given, makes each node a button.
 */
export function createDiagram(graph, { onNode, title } = {}) {
  const layout = new dagre.graphlib.Graph({ multigraph: true });
  layout.setGraph({ rankdir: "LR", nodesep: 34, ranksep: 60, edgesep: 14, marginx: 50, marginy: 24 });
  layout.setDefaultEdgeLabel(() => ({}));
  for (const node of graph.nodes) layout.setNode(node.id, size(node));
  graph.flows.forEach((flow, index) => {
    const label = flowLabel(flow);
    layout.setEdge(flow.from_node, flow.to_node, {
      width: label ? textWidth(label) : 0,
      height: label ? 16 : 0,
      labelpos: "c",
    }, String(index));
  });
  dagre.layout(layout);
  const { width, height } = layout.graph();

  const svg = s("svg", {
    class: "diagram",
    viewBox: `0 0 ${Math.ceil(width)} ${Math.ceil(height)}`,
    width: Math.ceil(width),
    height: Math.ceil(height),
    role: "group",
    "aria-label": title || `Diagram of ${graph.label || graph.definition_id}`,
  });
  // Shrinks to fit a narrow page, but not below legibility: past that the box scrolls. (A
  // style property set from script, which the page's CSP allows; a style attribute it would not.)
  svg.style.minWidth = `${Math.ceil(Math.min(width, Math.max(320, width * 0.6)))}px`;
  svg.append(s("defs", {},
    s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 9, markerHeight: 9, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" },
      s("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" }))));

  const flowLayer = s("g", { class: "flows" });
  const nodeLayer = s("g", { class: "nodes" });
  svg.append(flowLayer, nodeLayer);

  const flowElements = [];
  graph.flows.forEach((flow, index) => {
    const edge = layout.edge(flow.from_node, flow.to_node, String(index));
    const classes = ["flow"];
    if (flow.default) classes.push("default");
    if (flow.timeout) classes.push("timeout");
    const group = s("g", { class: classes.join(" "), dataset: { from: flow.from_node, to: flow.to_node } },
      s("title", {}, `${flow.from_node} → ${flow.to_node}${flow.condition ? ` when ${flow.condition}` : ""}${flow.default ? " (default)" : ""}${flow.timeout ? " (timeout)" : ""}`),
      s("path", { class: "line", d: pathOf(edge.points), "marker-end": "url(#arrow)" }));
    if (flow.default && edge.points.length > 1) group.append(defaultMark(edge.points));
    const label = flowLabel(flow);
    if (label) {
      const w = textWidth(label);
      group.append(
        s("rect", { class: "flow-label-bg", x: edge.x - w / 2, y: edge.y - 9, width: w, height: 16, rx: 3 }),
        s("text", { class: "flow-label", x: edge.x, y: edge.y + 3, "text-anchor": "middle" }, truncate(label, w + 12)));
    }
    flowLayer.append(group);
    flowElements.push({ flow, group });
  });

  const nodeElements = new Map();
  for (const node of graph.nodes) {
    const box = layout.node(node.id);
    const group = s("g", {
      class: `node ${shapeOf(node)} type-${node.type}`,
      transform: `translate(${(box.x - box.width / 2).toFixed(1)},${(box.y - box.height / 2).toFixed(1)})`,
      dataset: { node: node.id },
    }, s("title", {}, describe(node)), drawShape(node, box));
    const badges = s("g", { class: "badges" });
    group.append(badges);
    if (onNode) {
      group.setAttribute("tabindex", "0");
      group.setAttribute("role", "button");
      group.addEventListener("click", () => onNode(node.id));
      group.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          onNode(node.id);
        }
      });
    }
    nodeLayer.append(group);
    nodeElements.set(node.id, { node, group, badges, box });
  }

  function setCounts(counts) {
    for (const [id, { node, group, badges, box }] of nodeElements) {
      const own = counts[id] || {};
      badges.replaceChildren();
      let x = box.width - 4;
      const said = [];
      for (const status of [...STATUSES].reverse()) {
        const count = Number(own[status] || 0);
        if (!count) continue;
        const text = String(count);
        const w = Math.max(20, text.length * 8 + 10);
        x -= w;
        badges.append(s("g", { class: `badge ${status}`, dataset: { status, count: text } },
          s("title", {}, `${count} ${status}`),
          s("rect", { x, y: -10, width: w, height: 18, rx: 9 }),
          s("text", { x: x + w / 2, y: 3, "text-anchor": "middle" }, text)));
        x -= 3;
        said.unshift(`${count} ${status}`);
      }
      group.classList.toggle("has-incident", Number(own.incident || 0) > 0);
      group.setAttribute("aria-label", `${labelOf(node)}${said.length ? `: ${said.join(", ")}` : ""}`);
    }
  }

  const incoming = new Map(graph.nodes.map((n) => [n.id, []]));
  for (const item of flowElements) incoming.get(item.flow.to_node)?.push(item);
  const transient = new Set(graph.nodes.filter((n) => TRANSIENT.has(n.type)).map((n) => n.id));

  /** Highlights the nodes tokens reached (from the history) and the flows between them,
   * through the gateways and pass-through nodes on the way. */
  function setPath(visited) {
    const rested = new Set(visited);
    for (const node of graph.nodes) if (node.type === "start") rested.add(node.id);
    const takenNodes = new Set(rested);
    const takenFlows = new Set();
    const back = (id, seen) => {
      let reached = false;
      for (const item of incoming.get(id) || []) {
        const from = item.flow.from_node;
        const ok = rested.has(from) || (transient.has(from) && !seen.has(from) && back(from, new Set([...seen, from])));
        if (ok) {
          takenFlows.add(item);
          takenNodes.add(from);
          reached = true;
        }
      }
      return reached;
    };
    for (const id of rested) back(id, new Set([id]));
    for (const [id, { group }] of nodeElements) group.classList.toggle("taken", takenNodes.has(id));
    for (const item of flowElements) item.group.classList.toggle("taken", takenFlows.has(item));
  }

  setCounts({});
  return { element: svg, setCounts, setPath };
}
