// The frame every question is drawn in: a fieldset with the label as its legend and a slot for
// the question's error message.

import { el } from "../dom.js";

// The legend: the label, with " (optional)" added to an optional question unless the label
// already says so ("Your improved summary (optional)").
export function legendText(question) {
  const saysOptional = /\(optional\)/i.test(question.label);
  return question.label + (question.required || saysOptional ? "" : " (optional)");
}

export function questionBox(question, ...content) {
  return el(
    "fieldset",
    { class: "question", "data-question": question.name, "data-kind": question.kind },
    el("legend", { text: legendText(question) }),
    ...content,
    el("p", { class: "field-error", "data-error-for": question.name, hidden: true }),
  );
}
