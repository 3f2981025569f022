// The banner above the task: one message at a time (error, warn, info, ok), with at most one
// action button ("Try again", "Undo").

import { el } from "./dom.js";

export function createBanner(banner) {
  return {
    show(message, kind = "error", action = null) {
      banner.replaceChildren(el("span", { text: message }));
      if (action) banner.append(" ", el("button", { type: "button", class: "link", text: action.label, onclick: action.run }));
      banner.className = `banner ${kind}`;
      banner.hidden = false;
    },
    hide() {
      banner.hidden = true;
      banner.replaceChildren();
    },
    get hidden() {
      return banner.hidden;
    },
    focusAction() {
      banner.querySelector("button").focus();
    },
  };
}
