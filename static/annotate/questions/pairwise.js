// A pairwise question: which output is better (or a tie, where allowed), and by how much.
// A task may ask several; the keys (A, B, T, 1–4) answer the one the form calls active.

import { el } from "../dom.js";
import { questionBox } from "./box.js";

export const STRENGTHS = [
  ["much_better", "much better"],
  ["better", "better"],
  ["slightly_better", "slightly better"],
  ["about_the_same", "about the same"],
];

// ctx.outputs: the task's outputs; ctx.onActivate(handle) is told when the rater clicks into it.
export function build(question, ctx) {
  const preferredName = `${question.name}.preferred`;
  const strengthName = `${question.name}.strength`;
  const choices = ctx.outputs.map((output) =>
    el(
      "label",
      { class: "choice" },
      el("input", { type: "radio", name: preferredName, value: String(output.id) }),
      el("span", { text: `${output.label} is better` }),
    ),
  );
  if (question.allow_ties)
    choices.push(
      el(
        "label",
        { class: "choice" },
        el("input", { type: "radio", name: preferredName, value: "tie" }),
        el("span", { text: "About the same (T)" }),
      ),
    );
  const strengths = STRENGTHS.map(([value, label], index) =>
    el(
      "label",
      { class: "choice" },
      el("input", { type: "radio", name: strengthName, value }),
      el("span", { text: `${index + 1} · ${label}` }),
    ),
  );
  const box = questionBox(
    question,
    el("div", { class: "choices" }, ...choices),
    el("div", { class: "choices strengths" }, el("span", { class: "hint", text: "How much better?" }), ...strengths),
  );
  const checked = (name) => box.querySelector(`input[name="${name}"]:checked`);
  const setStrength = (value) => {
    const input = box.querySelector(`input[name="${strengthName}"][value="${value}"]`);
    if (input) input.checked = true;
    if (value === "about_the_same" && question.allow_ties) {
      box.querySelector(`input[name="${preferredName}"][value="tie"]`).checked = true;
    }
  };
  const clearStrength = () => box.querySelectorAll(`input[name="${strengthName}"]`).forEach((i) => (i.checked = false));
  const pick = (value) => {
    const input = box.querySelector(`input[name="${preferredName}"][value="${value}"]`);
    if (input) input.checked = true;
    if (value === "tie") setStrength("about_the_same");
    else if (box.querySelector(`input[value="about_the_same"]:checked`)) clearStrength();
  };
  const get = () => {
    const preferred = checked(preferredName);
    const strength = checked(strengthName);
    if (!preferred && !strength) return null;
    const answer = {
      strength: strength ? strength.value : preferred && preferred.value === "tie" ? "about_the_same" : null,
    };
    // No side chosen yet: leave `preferred` out (null would mean a tie).
    if (preferred) answer.preferred = preferred.value === "tie" ? null : Number(preferred.value);
    return answer;
  };
  const handle = {
    question,
    box,
    pick,
    setStrength,
    get,
    set: (value) => {
      if (value.preferred !== undefined) pick(value.preferred === null ? "tie" : String(value.preferred));
      if (value.strength) setStrength(value.strength);
    },
    complete: () => problem(question, get()) === null && get() !== null,
  };
  box.addEventListener("click", () => ctx.onActivate(handle));
  return handle;
}

export function problem(question, value) {
  if (!value) return question.required ? "Choose the better output (A or B)." : null;
  if (value.preferred === undefined && value.strength !== "about_the_same") return "Choose the better output (A or B).";
  if (!value.strength) return "Say how much better (1–4).";
  return null;
}
