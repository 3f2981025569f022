// A ranking question: the outputs in a list, best first, reordered by dragging or by keys
// (J/K select, Shift+J/K move). A task may ask several; the keys move in the active list, and
// selecting past either end of one list goes on into the next (or previous) one.

import { el, markedNodes } from "../dom.js";
import { questionBox } from "./box.js";

// ctx.outputs: the task's outputs; ctx.onChange() after a reorder; ctx.onActivate(handle) when
// the rater clicks an item.
export function build(question, ctx) {
  const list = el("ol", { class: "ranking", "aria-label": "Ranking, best first" });
  const byId = new Map(ctx.outputs.map((o) => [o.id, o]));
  let selected = 0;
  let active = true;
  let dragged = null;
  const mark = () =>
    [...list.children].forEach((li, i) => li.classList.toggle("selected", active && i === selected));
  const item = (output) => {
    const li = el(
      "li",
      { draggable: "true", tabindex: "-1", "data-output": String(output.id) },
      el("span", { class: "handle", text: "⠿" }),
      el("strong", { text: output.label }),
      el("span", { class: "excerpt" }, ...markedNodes(output.text.slice(0, 140))),
    );
    li.addEventListener("dragstart", () => (dragged = li));
    li.addEventListener("dragover", (event) => {
      event.preventDefault();
      if (dragged && dragged !== li) {
        const after = event.offsetY > li.offsetHeight / 2;
        li.parentNode.insertBefore(dragged, after ? li.nextSibling : li);
      }
    });
    li.addEventListener("dragend", () => {
      dragged = null;
      mark();
      ctx.onChange();
    });
    li.addEventListener("click", () => {
      selected = [...list.children].indexOf(li);
      ctx.onActivate(handle);
      mark();
    });
    return li;
  };
  const render = (order) => {
    list.replaceChildren(...order.map((id) => item(byId.get(id))));
    mark();
  };
  render(ctx.outputs.map((o) => o.id));
  const order = () => [...list.children].map((li) => Number(li.dataset.output));
  const handle = {
    question,
    box: questionBox(question, el("p", { class: "hint", text: "Best first. Drag, or J/K to select and Shift+J/K to move." }), list),
    get: order,
    set: (value) => {
      if (Array.isArray(value) && value.length === ctx.outputs.length && value.every((id) => byId.has(id))) render(value);
    },
    setActive: (yes) => {
      active = yes;
      mark();
    },
    // Select the first (0) or the last (-1) output.
    selectEnd: (end) => {
      selected = end === 0 ? 0 : list.children.length - 1;
      mark();
    },
    // Moves the selection; false when that would leave the list (the selection stays).
    select: (delta) => {
      const target = selected + delta;
      if (target < 0 || target >= list.children.length) return false;
      selected = target;
      mark();
      return true;
    },
    move: (delta) => {
      const items = [...list.children];
      const target = selected + delta;
      if (target < 0 || target >= items.length) return;
      const node = items[selected];
      if (delta > 0) list.insertBefore(node, items[target].nextSibling);
      else list.insertBefore(node, items[target]);
      selected = target;
      mark();
      ctx.onChange();
    },
  };
  return handle;
}

// The order is always complete: every output has a place from the start.
export const problem = () => null;
