// A rubric question: flags the rater may raise, some of which ask what they refer to.

import { el } from "../dom.js";
import { questionBox } from "./box.js";

export function build(question) {
  const flags = question.flags.map((flag) => {
    const check = el("input", { type: "checkbox", name: `${question.name}.${flag.name}`, value: flag.name });
    const note = flag.needs_text
      ? el("input", { type: "text", class: "note", name: `${question.name}.${flag.name}.note`, placeholder: "Which, and why?", hidden: true })
      : null;
    check.addEventListener("change", () => {
      if (note) {
        note.hidden = !check.checked;
        if (check.checked) note.focus();
      }
    });
    return { flag, check, note, node: el("div", { class: "flag" }, el("label", {}, check, el("span", { text: flag.label })), note) };
  });
  return {
    question,
    box: questionBox(question, ...flags.map((f) => f.node)),
    get: () => {
      const raised = flags.filter((f) => f.check.checked);
      if (!raised.length) return null;
      const notes = {};
      for (const f of raised) if (f.note && f.note.value.trim()) notes[f.flag.name] = f.note.value;
      return { flags: raised.map((f) => f.flag.name), notes };
    },
    set: (value) => {
      for (const f of flags) {
        f.check.checked = value.flags.includes(f.flag.name);
        if (f.note) {
          f.note.hidden = !f.check.checked;
          f.note.value = (value.notes || {})[f.flag.name] || "";
        }
      }
    },
  };
}

// A raised flag that needs a note and has none; where several do, the last is named.
export function problem(question, value) {
  if (!value) return null;
  let message = null;
  for (const flag of question.flags)
    if (flag.needs_text && value.flags.includes(flag.name) && !(value.notes || {})[flag.name])
      message = `Say what “${flag.label}” refers to.`;
  return message;
}
