// Builds DOM nodes. Text is only ever set as text (textContent, attributes): no markup from
// data reaches the page.

const SVG_NS = "http://www.w3.org/2000/svg";

function apply(element, attributes) {
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      element.setAttribute("class", value);
    } else if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else if (value === true) {
      element.setAttribute(name, "");
    } else {
      element.setAttribute(name, String(value));
    }
  }
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** An HTML element: h("button", {class: "primary", onclick}, "Cancel"). */
export function h(tag, attributes, ...children) {
  const element = document.createElement(tag);
  apply(element, attributes);
  append(element, children);
  return element;
}

/** An SVG element. */
export function s(tag, attributes, ...children) {
  const element = document.createElementNS(SVG_NS, tag);
  apply(element, attributes);
  append(element, children);
  return element;
}

/** Replaces an element's children. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** A time as the reader's local date and time ("" when absent); `short` leaves out the seconds. */
export function when(text, short = false) {
  if (!text) return "";
  const moment = new Date(text);
  if (Number.isNaN(moment.getTime())) return String(text);
  const thisYear = moment.getFullYear() === new Date().getFullYear();
  return moment.toLocaleString(undefined, {
    year: thisYear ? undefined : "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: short ? undefined : "2-digit",
  });
}

/** How long ago, in the largest whole unit. */
export function age(text, now = Date.now()) {
  if (!text) return "";
  const seconds = Math.max(0, Math.round((now - new Date(text).getTime()) / 1000));
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h`;
  return `${Math.floor(seconds / 86400)} d`;
}

/** A JSON value as compact text. */
export function json(value) {
  return JSON.stringify(value);
}

/**
 * Keeps a table body's rows in step with `items`, keyed by id: an existing row is updated in
 * place (its controls, focus and selection survive), new ones are built, gone ones removed.
 */
export function syncRows(tbody, items, key, build, update) {
  const existing = new Map();
  for (const row of tbody.children) existing.set(row.dataset.key, row);
  let previous = null;
  for (const item of items) {
    const id = key(item);
    let row = existing.get(id);
    if (row) {
      existing.delete(id);
    } else {
      row = build(item);
      row.dataset.key = id;
    }
    update(row, item);
    const next = previous ? previous.nextSibling : tbody.firstChild;
    if (next !== row) tbody.insertBefore(row, next);
    previous = row;
  }
  for (const row of existing.values()) row.remove();
}

let dialogCount = 0;

/**
 * A modal question with the page's own dialog (never window.confirm): resolves to the value of
 * the button pressed, or null when dismissed.
 */
export function ask(title, message, buttons) {
  return new Promise((resolve) => {
    const id = `dialog-${++dialogCount}`;
    const dialog = h("dialog", { class: "ask", "aria-labelledby": `${id}-title` },
      h("h2", { id: `${id}-title` }, title),
      h("p", {}, message),
      h("div", { class: "actions" }, buttons.map(([label, value, kind]) =>
        h("button", {
          type: "button",
          class: kind || "",
          onclick: () => { dialog.close(); resolve(value); },
        }, label))));
    dialog.addEventListener("cancel", () => resolve(null));
    dialog.addEventListener("close", () => { dialog.remove(); resolve(null); });
    document.body.append(dialog);
    dialog.showModal();
  });
}
