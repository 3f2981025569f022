// A likert question: one row of radio scores per criterion. Keys score the highlighted criterion
// (the form keeps which one is highlighted, across all likert questions).

import { el } from "../dom.js";
import { questionBox } from "./box.js";

const given = (value, criterion) => value && value[criterion] !== undefined && value[criterion] !== null;

// ctx.onCriterionClick(entry) is told when a row is clicked.
export function build(question, ctx) {
  const [low, high] = question.scale;
  const entries = question.criteria.map((criterion) => {
    const name = `${question.name}.${criterion}`;
    const radios = [];
    for (let value = low; value <= high; value++) {
      const input = el("input", { type: "radio", name, value: String(value), "aria-label": `${criterion} ${value}` });
      radios.push(el("label", { class: "score" }, input, el("span", { text: String(value) })));
    }
    const row = el(
      "div",
      { class: "likert-row", "data-criterion": criterion },
      el("span", { class: "criterion", text: criterion.replace(/_/g, " ") }),
      el("span", { class: "scores" }, ...radios),
    );
    const entry = {
      question,
      criterion,
      row,
      get: () => {
        const checked = row.querySelector("input:checked");
        return checked ? Number(checked.value) : null;
      },
      set: (value) => {
        const input = row.querySelector(`input[value="${value}"]`);
        if (input) input.checked = true;
      },
    };
    row.addEventListener("click", () => ctx.onCriterionClick(entry));
    return entry;
  });
  const box = questionBox(
    question,
    el("p", { class: "hint", text: question.hint || `${low} = poor … ${high} = excellent` }),
    ...entries.map((entry) => entry.row),
  );
  return {
    question,
    box,
    entries,
    // The scores given so far, by criterion; null when none is.
    get: () => {
      const scores = {};
      for (const entry of entries) {
        const value = entry.get();
        if (value !== null) scores[entry.criterion] = value;
      }
      return Object.keys(scores).length ? scores : null;
    },
    set: (value) => {
      for (const entry of entries) if (given(value, entry.criterion)) entry.set(value[entry.criterion]);
    },
  };
}

// An optional question may be left blank, but not half-scored.
export function problem(question, value) {
  const missing = question.criteria.filter((c) => !given(value, c));
  const started = question.criteria.some((c) => given(value, c));
  if (missing.length && (question.required || started)) return `Score ${missing.map((c) => c.replace(/_/g, " ")).join(", ")}.`;
  return null;
}
